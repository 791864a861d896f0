"""Jigsaw puzzles (Noroozi & Favaro, ECCV 2016): what modes 972 (2x2) and 973 (3x3) share.

View: the image after light augmentation (plan D: random resized crop, then
rotation/flip), per-band normalised, is cut into a ``grid x grid`` array of cells of
side ``input_size // grid``. From each cell a square of side ``cell - jitter`` is taken
at a random offset (the gap between tiles keeps the network from matching edges), and
resized to ``--jigsaw-tile`` pixels. A permutation ``p`` is drawn uniformly from the
permutation set; the shuffled sequence holds tile ``p[i]`` (cells numbered row by row)
at position ``i``, and the label is the index of ``p`` in the set.

Model: every tile through the SHARED backbone (pooled features, D), a per-tile linear
layer + ReLU, the features concatenated in the shuffled order, then an MLP (Linear, BN,
ReLU, Linear) classifies which permutation was applied; cross-entropy loss.

Permutation sets: :func:`permutation_set` returns all ``n!`` permutations in
lexicographic order when asked for all of them (972: the 24 of 4 tiles), else a greedy
max-min Hamming selection from all ``n!`` (973: 1000 of 9): start from a random one, then
repeatedly add the permutation farthest (in minimum Hamming distance) from those chosen,
ties broken by a seeded numpy generator. It is deterministic for a seed, takes about a
second for 9 tiles, and is cached in memory and as ``.npy`` under the cache dir.
"""
from __future__ import annotations

import argparse
import functools
import itertools
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from config.dataset_cfg import cache_root
from config.errors import UserError
from datasets.plans import build_plan
from models.pretext.decoder import last_stage_shape
from models.pretext.simclr import embedding_std

log = logging.getLogger(__name__)

LOSSES = ("CrossEntropyLoss", "ce")
NEEDS_CONV_STAGES = True     # engine.guards.check_pretext_backbone refuses ViTs: tile sizes are checked on the conv stages (last_stage_shape)
PLAN = "D"                      # light augmentation: crop, rotation + flip
PERM_SEED = 0                   # tie-breaking seed of the greedy permutation selection
MAX_TILES = 9                   # all n! permutations are enumerated: 9! = 362,880 rows
MIN_TILE = 16                   # default tile side floor, in pixels
TILE_DIM = 512                  # per-tile feature size before concatenation
HIDDEN_DIM = 1024               # hidden layer of the permutation classifier
_SMALL = ("scripts/experiments/eurosat_ms_pretexts.sh, this repository's README runs of the classic pretexts: "
          "--optimizer adam --lr 1e-3 --wd 1e-6 --warmup 2, batch 64, cosine; biases/norms undecayed (engine/optim.py)")
_CAFFE = "MehdiNoroozi/JigsawPuzzleSolver"
_SOLVER = f"{_CAFFE} solver_cfn_jps.prototxt @8041c585"
_NET = f"{_CAFFE} train_val_cfn_jps.prototxt @8041c585"
RECIPES = {
    "paper": {"optimizer": "sgd", "lr_base": 0.01, "lr_rule": "linear", "momentum": 0.9, "wd": 5e-4,
              "exclude_bias_norm": True, "bias_lr_scale": 2.0, "warmup": 0},
    "small": {"optimizer": "adam", "lr_base": 1e-3, "lr_rule": "none", "momentum": 0.9, "wd": 1e-6,
              "exclude_bias_norm": True, "bias_lr_scale": 1.0, "warmup": 2},
}
SOURCES = {
    "paper": {"optimizer": f"{_SOLVER}: Caffe SGD", "lr_base": f"{_SOLVER} base_lr 0.01 (its step decay is not "
                                                              "reproduced: --lr_policy)",
              "lr_rule": f"{_NET} batch_size 256: base_lr at 256, scaled linearly", "momentum": f"{_SOLVER} momentum 0.9",
              "wd": f"{_SOLVER} weight_decay 0.0005", "exclude_bias_norm": f"{_NET}: biases decay_mult 0",
              "bias_lr_scale": f"{_NET}: biases lr_mult 2 (here every 1-D tensor: the net has no BatchNorm)",
              "warmup": f"{_SOLVER}: no warm-up"},
    "small": {k: _SMALL for k in RECIPES["small"]},
}
# --vis: the columns of vis_rows, each a grid x grid mosaic of the tiles
VIS_COLUMNS = ("shuffled tiles", "true order", "predicted order")


# ----------------------------------------------------------------------------- permutations
def all_permutations(n: int) -> np.ndarray:
    """All ``n!`` permutations of ``range(n)``, lexicographic order, ``n! x n`` uint8."""
    return np.array(list(itertools.permutations(range(n))), dtype=np.uint8).reshape(-1, n)


def _greedy_max_min(n_tiles: int, n_perms: int, seed: int) -> np.ndarray:
    """Greedy max-min Hamming selection of ``n_perms`` rows of :func:`all_permutations`."""
    pool = all_permutations(n_tiles)
    columns = np.ascontiguousarray(pool.T)                  # n x n!: one compare per position
    rng = np.random.default_rng(seed)
    dmin = np.full(len(pool), n_tiles + 1, dtype=np.uint8)  # distance to the nearest chosen one
    matches = np.empty(len(pool), dtype=np.uint8)
    equal = np.empty(len(pool), dtype=bool)
    chosen = [int(rng.integers(len(pool)))]
    for _ in range(n_perms - 1):
        p = pool[chosen[-1]]
        matches.fill(0)
        for pos in range(n_tiles):
            np.equal(columns[pos], p[pos], out=equal)
            matches += equal
        np.minimum(dmin, n_tiles - matches, out=dmin)       # chosen rows drop to distance 0
        ties = np.flatnonzero(dmin == dmin.max())
        chosen.append(int(ties[rng.integers(len(ties))]))
    return pool[chosen].astype(np.int64)


def _valid(perms: np.ndarray, n_tiles: int, n_perms: int) -> bool:
    """``n_perms`` distinct permutations of ``range(n_tiles)``."""
    return (perms.shape == (n_perms, n_tiles)
            and bool((np.sort(perms, axis=1) == np.arange(n_tiles)).all())
            and len(np.unique(perms, axis=0)) == n_perms)


@functools.lru_cache(maxsize=16)
def _permutation_set(n_tiles: int, n_perms: int, seed: int, cache_dir: str | None) -> np.ndarray:
    if n_perms == math.factorial(n_tiles):
        perms = all_permutations(n_tiles).astype(np.int64)
    else:
        path = Path(cache_dir) / "jigsaw" / f"perms_{n_tiles}tiles_{n_perms}_seed{seed}.npy" if cache_dir else None
        perms = None
        if path is not None and path.is_file():
            try:
                perms = np.load(path).astype(np.int64)
            except (OSError, ValueError):
                perms = None
            if perms is not None and not _valid(perms, n_tiles, n_perms):
                log.warning("ignoring the damaged permutation cache %s", path)
                perms = None
        if perms is None:
            perms = _greedy_max_min(n_tiles, n_perms, seed)
            if path is not None:
                try:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npy")
                    np.save(tmp, perms.astype(np.uint8))
                    os.replace(tmp, path)                    # atomic: concurrent writers are safe
                except OSError as err:
                    log.warning("could not cache the permutation set at %s (%s)", path, err)
    perms.setflags(write=False)
    return perms


def permutation_set(n_tiles: int, n_perms: int, seed: int = 0, cache_dir: str | Path | None = None) -> np.ndarray:
    """``n_perms`` permutations of ``range(n_tiles)`` as an ``n_perms x n_tiles`` int64 array (read-only).

    All ``n_tiles!`` of them in lexicographic order when ``n_perms`` is that many;
    otherwise the greedy max-min Hamming selection of the module docstring, deterministic
    for ``seed``, cached in memory and, with ``cache_dir``, in ``<cache_dir>/jigsaw/``.
    """
    if not 2 <= n_tiles <= MAX_TILES:
        raise ValueError(f"n_tiles must be in 2..{MAX_TILES}, got {n_tiles}")
    if not 2 <= n_perms <= math.factorial(n_tiles):
        raise ValueError(f"n_perms must be in 2..{math.factorial(n_tiles)} for {n_tiles} tiles, got {n_perms}")
    return _permutation_set(n_tiles, n_perms, seed, str(cache_dir) if cache_dir is not None else None)


def hamming_matrix(perms: np.ndarray) -> np.ndarray:
    """Pairwise Hamming distances (positions that differ) between the rows of ``perms``."""
    p = np.asarray(perms)
    out = np.empty((len(p), len(p)), dtype=np.int64)
    for start in range(0, len(p), 256):                     # bounded memory for large sets
        out[start:start + 256] = (p[start:start + 256, None, :] != p[None, :, :]).sum(-1)
    return out


def min_hamming(perms: np.ndarray) -> int:
    """Smallest Hamming distance between two different rows of ``perms`` (at least two rows)."""
    if len(perms) < 2:
        raise ValueError("min_hamming needs at least two permutations")
    d = hamming_matrix(perms)
    return int(d[np.triu_indices(len(d), 1)].min())


# ----------------------------------------------------------------------------- views
@dataclass(frozen=True)
class TileGeometry:
    """How a ``size x size`` view is cut: ``grid x grid`` cells of side ``cell``, crops of
    side ``crop = cell - jitter`` at a random offset in each, resized to ``tile``."""

    grid: int
    cell: int
    jitter: int
    tile: int

    @property
    def crop(self) -> int:
        return self.cell - self.jitter


def cut_tiles(img: Tensor, geo: TileGeometry, random_offsets: bool = True) -> Tensor:
    """``C x S x S`` -> ``grid^2 x C x tile x tile``, cells row by row (offsets 0 if not random)."""
    n = geo.grid * geo.grid
    if random_offsets and geo.jitter > 0:
        offsets = torch.randint(0, geo.jitter + 1, (n, 2)).tolist()
    else:
        offsets = [[0, 0]] * n
    crops = []
    for k, (dy, dx) in enumerate(offsets):
        y, x = (k // geo.grid) * geo.cell + dy, (k % geo.grid) * geo.cell + dx
        crops.append(img[:, y:y + geo.crop, x:x + geo.crop])
    tiles = torch.stack(crops)
    if geo.crop != geo.tile:
        tiles = F.interpolate(tiles, size=(geo.tile, geo.tile), mode="bilinear", align_corners=False,
                              antialias=geo.crop > geo.tile)
    return tiles


class JigsawView:
    """Raw ``C x H x W`` -> ``(tiles, label)``: ``T x C x tile x tile`` shuffled by ``perms[label]``."""

    def __init__(self, plan, geometry: TileGeometry, perms: np.ndarray) -> None:
        self.plan, self.geometry = plan, geometry
        self.perms = torch.as_tensor(np.array(perms), dtype=torch.long)

    def __call__(self, x: Tensor) -> tuple[Tensor, Tensor]:
        tiles = cut_tiles(self.plan(x), self.geometry)
        label = torch.randint(0, len(self.perms), ())
        return tiles[self.perms[label]], label

    def __repr__(self) -> str:
        return f"JigsawView({self.plan!r}, {self.geometry}, {len(self.perms)} permutations)"


# ----------------------------------------------------------------------------- model
def unshuffle(tiles: Tensor, perms: Tensor) -> Tensor:
    """Undo :class:`JigsawView`'s shuffle: ``N x T x ...`` tiles with tile ``perms[n, i]`` at position
    ``i`` -> the tiles in cell order (cells row by row)."""
    inverse = perms.argsort(dim=1)                           # cell k sits at position inverse[k]
    return tiles[torch.arange(len(tiles), device=tiles.device)[:, None], inverse]


def mosaic(tiles: Tensor, grid: int) -> Tensor:
    """``N x grid^2 x C x h x w`` (row by row) -> ``N x C x grid*h x grid*w``, the tiles side by side."""
    n, _, c, h, w = tiles.shape
    return tiles.reshape(n, grid, grid, c, h, w).permute(0, 3, 1, 4, 2, 5).reshape(n, c, grid * h, grid * w)


class Jigsaw(nn.Module):
    """Shared backbone per tile -> per-tile Linear+ReLU -> concatenation -> MLP over the permutations.

    ``perms`` (the permutation set, optional) is kept as a non-persistent buffer, so that
    :func:`vis_rows` can put the tiles back in the predicted order; it is not in the state dict.
    """

    def __init__(self, backbone: nn.Module, n_tiles: int, n_perms: int,
                 tile_dim: int = TILE_DIM, hidden_dim: int = HIDDEN_DIM, perms: np.ndarray | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.tile_fc = nn.Sequential(nn.Linear(backbone.out_dim, tile_dim), nn.ReLU(inplace=True))
        self.classifier = nn.Sequential(
            nn.Linear(n_tiles * tile_dim, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True), nn.Linear(hidden_dim, n_perms))
        self.n_tiles, self.n_perms = n_tiles, n_perms
        self.register_buffer("perms", None if perms is None else torch.as_tensor(np.array(perms), dtype=torch.long),
                             persistent=False)

    def classify(self, tiles: Tensor) -> tuple[Tensor, Tensor]:
        """``N x T x C x h x w`` shuffled tiles -> (N x n_perms logits, N*T x D tile features)."""
        z = self.backbone(tiles.flatten(0, 1))               # N*T x D, the shared backbone
        return self.classifier(self.tile_fc(z).reshape(tiles.shape[0], -1)), z

    def forward(self, views: tuple[Tensor, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        tiles, labels = views                                # N x T x C x h x w, N
        logits, z = self.classify(tiles)
        loss = F.cross_entropy(logits.float(), labels)
        acc = (logits.detach().argmax(1) == labels).float().mean()
        return loss, {"acc": acc, "emb_std": embedding_std(z)}


def vis_rows(model: Jigsaw, views: tuple[Tensor, Tensor]) -> list[list[Tensor]]:
    """``--vis``: per sample mosaics of the shuffled tiles, the tiles put back by the true label, and
    put back by the permutation the model predicts (:data:`VIS_COLUMNS`): right when the last two match."""
    tiles, labels = views
    if model.perms is None:
        raise ValueError("vis_rows needs the permutation set: build the Jigsaw model with perms")
    grid = math.isqrt(model.n_tiles)
    predicted = model.classify(tiles)[0].argmax(dim=1)
    cols = [mosaic(t, grid) for t in (tiles, unshuffle(tiles, model.perms[labels]),
                                      unshuffle(tiles, model.perms[predicted]))]
    return [list(row) for row in zip(*cols)]


# ----------------------------------------------------------------------------- wiring
def add_args(group: argparse._ArgumentGroup) -> None:
    """The jigsaw flags; 972 and 973 share them, so the second call adds nothing."""
    try:
        group.add_argument("--jigsaw-perms", dest="jigsaw_perms", type=int, default=None,
                           help="modes 972/973: size of the permutation set; unset: all 24 for 2x2, 1000 for 3x3")
    except argparse.ArgumentError:
        return
    group.add_argument("--jigsaw-jitter", dest="jigsaw_jitter", type=int, default=None,
                       help="modes 972/973: pixels a tile may move inside its cell; unset: cell side // 8, at least 1")
    group.add_argument("--jigsaw-tile", dest="jigsaw_tile", type=int, default=None,
                       help=f"modes 972/973: tile side fed to the backbone; "
                            f"unset: input_size // grid, at least {MIN_TILE}")


def n_perms_for(args: argparse.Namespace, grid: int, default: int) -> int:
    """``--jigsaw-perms`` checked against the ``(grid^2)!`` permutations that exist."""
    n = getattr(args, "jigsaw_perms", None)
    n = default if n is None else n
    total = math.factorial(grid * grid)
    if not 2 <= n <= total:
        raise UserError(f"--jigsaw-perms {n}: a {grid}x{grid} jigsaw has {total} permutations; choose 2..{total}")
    return n


def check_args(args: argparse.Namespace, grid: int, default_perms: int) -> None:
    n_perms_for(args, grid, default_perms)
    jitter, tile = getattr(args, "jigsaw_jitter", None), getattr(args, "jigsaw_tile", None)
    if jitter is not None and jitter < 0:
        raise UserError(f"--jigsaw-jitter {jitter} must be >= 0 pixels")
    if tile is not None and tile < 1:
        raise UserError(f"--jigsaw-tile {tile} must be a positive number of pixels, e.g. {MIN_TILE} or more")


def geometry(args: argparse.Namespace, input_size: int, grid: int) -> TileGeometry:
    """Tile geometry for ``input_size`` from the flags (or their defaults)."""
    cell = input_size // grid
    jitter = getattr(args, "jigsaw_jitter", None)
    jitter = max(1, cell // 8) if jitter is None else jitter
    if cell < 2 or jitter >= cell:
        raise UserError(f"--jigsaw-jitter {jitter} leaves no tile in the {cell}-pixel cells of a {grid}x{grid} grid "
                        f"on {input_size}-pixel inputs; lower it or raise --input_size")
    tile = getattr(args, "jigsaw_tile", None)
    return TileGeometry(grid, cell, jitter, max(MIN_TILE, cell) if tile is None else tile)


def build(args: argparse.Namespace, opt, backbone: nn.Module, grid: int, default_perms: int) -> Jigsaw:
    geo = geometry(args, opt.input_size, grid)
    n_perms = n_perms_for(args, grid, default_perms)
    last_stage_shape(backbone, opt.n_bands, geo.tile)        # a clear error if tiles are too small for it
    perms = permutation_set(grid * grid, n_perms, PERM_SEED, cache_root(args))
    log.info("jigsaw %dx%d: %d permutations (min Hamming distance %d), tiles %d px cut from %d-px cells (jitter %d)",
             grid, grid, n_perms, min_hamming(perms), geo.tile, geo.cell, geo.jitter)
    return Jigsaw(backbone, grid * grid, n_perms, perms=perms)


def make_transform(args: argparse.Namespace, opt, grid: int, default_perms: int) -> JigsawView:
    geo = geometry(args, opt.input_size, grid)
    perms = permutation_set(grid * grid, n_perms_for(args, grid, default_perms), PERM_SEED, cache_root(args))
    return JigsawView(build_plan(PLAN, opt.input_size, opt.mean, opt.std, opt.rgb_index), geo, perms)
