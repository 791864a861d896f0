"""Vision Transformer backbones (timm) for any band count: plain and grouped-channel (SatMAE).

:class:`ViTBackbone` is timm's ``VisionTransformer`` (timm 1.0.31, built with ``pretrained=False``:
nothing is downloaded) with the interface of :class:`models.backbones.Backbone`: ``out_dim``,
``arch``, ``input_adapter`` / ``set_input_adapter``, and ``forward(x)`` -> N x ``out_dim`` pooled
features. Its patch embedding takes the dataset's band count, its ``img_size`` is the run's input
size, and it also takes other sides that are multiples of the patch (timm's ``dynamic_img_size``:
position embeddings resampled on the fly, e.g. for DINO's local crops; at the native size they
are used as they are).

The feature a probe reads is named (:data:`FEATURES`): ``cls``, the class token after the final
LayerNorm, or ``avg``, the mean of the patch tokens after that LayerNorm (DINO eval_linear's
``avgpool``; MAE's fine-tuning pool instead puts a fresh ``fc_norm`` after the mean). It is a
persistent buffer of the backbone (``feature_code``), so every checkpoint of the weights (backbone
files, classifiers, training states) carries it and a load restores it; pretraining also writes it
to the checkpoint meta (``vit_feature``). Each method's paper default: :data:`METHOD_FEATURE`.

:class:`GroupedViTBackbone` (mode 931) embeds each band group with its own patch embedding; a
token is one (group, patch) pair whose encoding is ``[2-D sin-cos of the position || 1-D sin-cos
of the group]`` (SatMAE, Cong et al. 2022, models_mae_group_channels.py), and its pooled feature is
over all tokens of all groups.

Also here: MAE's fixed 2-D sin-cos position embedding (util/pos_embed.py, with ``np.float64``
where MAE has the removed ``np.float``), Sentinel-2 band groups by name, and the resampling of
position embeddings made at another input size (``timm.layers.resample_abs_pos_embed``).
"""
from __future__ import annotations

import logging
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from timm.layers import DropPath, PatchEmbed, calculate_drop_path_rates, resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from config.codes import ViTSpec
from config.errors import UserError
from models.bands import s2_name

log = logging.getLogger(__name__)

FEATURES = ("cls", "avg")
DEFAULT_FEATURE = "cls"        # timm's global_pool='token' (ImageNet ViTs; MoCo v3's linear probe)

# The feature each method's paper / official code reads for linear probing (vit_mae.md section 2).
METHOD_FEATURE: dict[str, str] = {
    "mae": "cls",          # MAE main_linprobe.py: global_pool False -> cls token after norm (FINETUNE.md --cls_token)
    "mae_grouped": "avg",  # SatMAE main_finetune.py: --global_pool default True, mean over all group tokens
    "dino": "cls",         # DINO eval_linear.py: [CLS] after norm (it concatenates the last 4 blocks' for ViT-S; we read the last)
    "moco": "cls",         # MoCo v3 main_lincls.py: the timm head on the cls token
    "simclr": "cls",       # SimCLR / BYOL on ViTs: MoCo v3's Table 4 framework, probed as MoCo v3 (cls token)
    "byol": "cls",
    "simsiam": "cls",      # SimSiam, Barlow Twins, VICReg: no published ViT probe; MoCo v3's, whose recipe they take
    "barlow": "cls",
    "vicreg": "cls",
    "data2vec": "avg",     # data2vec vision (SSL4EO-S12 linear_EU_data2vec.py): use_mean_pooling True
}

# SatMAE's groups (main_pretrain.py: [[0,1,2,6],[3,4,5,7],[8,9]] over B2..B8A,B11,B12 without B1/B9/B10):
# 10 m visible + NIR, 20 m red edge, 20 m SWIR.
S2_GROUPS: tuple[tuple[str, ...], ...] = (("B02", "B03", "B04", "B08"), ("B05", "B06", "B07", "B8A"), ("B11", "B12"))
GROUP_EMBED_FRACTION = 4       # group encoding width = embed_dim / 4 (SatMAE: 256 of ViT-L's 1024, decoder 128 of 512)


# ----------------------------------------------------------------------------- sin-cos embeddings (MAE)
def sincos_1d(dim: int, pos: np.ndarray) -> np.ndarray:
    """MAE's ``get_1d_sincos_pos_embed_from_grid``: M positions -> M x dim ``[sin || cos]``."""
    if dim % 2:
        raise ValueError(f"a 1-D sin-cos embedding needs an even width, got {dim}")
    omega = np.arange(dim // 2, dtype=np.float64) / (dim / 2.0)
    omega = 1.0 / 10000 ** omega
    out = np.einsum("m,d->md", pos.reshape(-1).astype(np.float64), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def sincos_2d(dim: int, grid: int, cls_token: bool = True) -> Tensor:
    """MAE's ``get_2d_sincos_pos_embed`` as a 1 x (1 + grid^2) x dim float tensor (cls slot zero).

    As in MAE, ``np.meshgrid(w, h)`` makes the first half encode the column and the second the row.
    """
    if dim % 4:
        raise ValueError(f"a 2-D sin-cos embedding needs a width divisible by 4, got {dim}")
    g = np.arange(grid, dtype=np.float64)
    mesh = np.stack(np.meshgrid(g, g), axis=0).reshape(2, 1, grid, grid)
    emb = np.concatenate([sincos_1d(dim // 2, mesh[0]), sincos_1d(dim // 2, mesh[1])], axis=1)
    if cls_token:
        emb = np.concatenate([np.zeros((1, dim)), emb], axis=0)
    return torch.from_numpy(emb).float().unsqueeze(0)


def resize_pos_embed(pos: Tensor, grid: tuple[int, int], prefix: int = 1) -> Tensor:
    """A ``1 x (prefix + g*g) x D`` position embedding resampled to ``grid`` (timm's bicubic resampling)."""
    n = pos.shape[1] - prefix
    side = int(round(n ** 0.5))
    if side * side != n:
        raise ValueError(f"position embedding of {n} patch positions is not a square grid")
    if (side, side) == tuple(grid):
        return pos
    return resample_abs_pos_embed(pos, new_size=list(grid), old_size=[side, side], num_prefix_tokens=prefix)


# ----------------------------------------------------------------------------- backbones
class ViTBackbone(VisionTransformer):
    """timm's ViT as a backbone: N x C x H x W -> N x ``out_dim`` (the named feature).

    Args:
        spec: size and patch (:data:`config.codes.VIT_BACKBONES`).
        in_channels: bands of the patch embedding.
        img_size: the run's input side (a multiple of the patch); the position embedding's grid.
        feature: ``cls`` or ``avg`` (see the module docstring).
        drop_path: timm's ``drop_path_rate`` (stochastic depth, rising linearly over the blocks).
    """

    def __init__(self, spec: ViTSpec, in_channels: int, img_size: int, feature: str = DEFAULT_FEATURE,
                 drop_path: float = 0.0) -> None:
        check_feature(feature)
        super().__init__(img_size=img_size, patch_size=spec.patch, in_chans=in_channels, num_classes=0,
                         global_pool="token", embed_dim=spec.embed_dim, depth=spec.depth, num_heads=spec.heads,
                         drop_path_rate=drop_path, dynamic_img_size=True)
        self.spec, self.arch, self.out_dim = spec, spec.name, spec.embed_dim
        self.patch, self.input_size, self.in_channels = spec.patch, img_size, in_channels
        self.register_buffer("feature_code", torch.tensor(FEATURES.index(feature)))
        self.feature = feature
        self.register_load_state_dict_post_hook(_sync_feature)
        self.register_module("input_adapter", None)

    # -- the Backbone interface
    def set_input_adapter(self, adapter: nn.Module | None) -> None:
        """Put ``adapter`` (a per-band preprocessing, :class:`models.pretrained.InputAdapter`) first."""
        self.input_adapter = adapter

    def set_feature(self, feature: str) -> None:
        """Which token summary ``forward`` returns: ``cls`` or ``avg``."""
        check_feature(feature)
        self.feature_code.fill_(FEATURES.index(feature))
        self.feature = feature

    def forward(self, x: Tensor) -> Tensor:
        """N x C x H x W images -> N x ``out_dim``: the cls token or the mean patch token, after the final norm."""
        if self.input_adapter is not None:
            x = self.input_adapter(x)
        return self.pool(self.forward_features(x))

    def pool(self, tokens: Tensor) -> Tensor:
        """N x (1 + T) x D normalised tokens -> N x D, by :attr:`feature`."""
        if self.feature == "avg":
            return tokens[:, self.num_prefix_tokens:].mean(dim=1)
        return tokens[:, 0]

    # -- pieces a masked autoencoder runs with masking in between
    def patch_tokens(self, x: Tensor) -> Tensor:
        """Images -> N x T x D patch tokens plus their position encoding (no cls token)."""
        if self.input_adapter is not None:
            x = self.input_adapter(x)
        tokens = self.patch_embed(x)
        if tokens.dim() == 4:                                  # dynamic_img_size: N x h x w x D
            h, w = tokens.shape[1:3]
            tokens = tokens.flatten(1, 2)
            return tokens + resize_pos_embed(self.pos_embed, (h, w))[:, 1:]
        return tokens + self.pos_embed[:, 1:]

    def encode_tokens(self, tokens: Tensor) -> Tensor:
        """N x T' x D (any subset of patch tokens) -> N x (1 + T') x D: cls prepended, blocks, final norm."""
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(tokens.shape[0], -1, -1)
        x = self.norm_pre(self.pos_drop(torch.cat([cls, tokens], dim=1)))
        return self.norm(self.blocks(x))

    # -- optimiser and checkpoints
    def no_weight_decay(self) -> set[str]:
        """Token parameters that take no weight decay (and no LARS scaling): ``cls_token``, ``pos_embed`` ..."""
        names = dict(self.named_parameters())
        return {n for n in super().no_weight_decay() | {"group_embed"} if n in names}

    def resize_state(self, state: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """``state`` with its ``pos_embed`` resampled to this backbone's grid (a checkpoint made at another size)."""
        state = dict(state)
        pos = state.get("pos_embed")
        if pos is not None and pos.shape != self.pos_embed.shape and pos.shape[-1] == self.pos_embed.shape[-1]:
            state["pos_embed"] = resize_pos_embed(pos, self.grid)
            log.info("position embedding resampled from %d to %d positions (input %d px)", pos.shape[1] - 1,
                     self.pos_embed.shape[1] - 1, self.input_size)
        return state

    def checkpoint_meta(self) -> dict[str, Any]:
        """What pretraining records about this encoder in the checkpoint meta."""
        return {"vit_feature": self.feature}

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(int(g) for g in self.patch_embed.grid_size) if isinstance(self.patch_embed, PatchEmbed) \
            else (self.input_size // self.patch,) * 2

    @property
    def num_patches(self) -> int:
        g = self.grid
        return g[0] * g[1]


def _sync_feature(module: nn.Module, incompatible: Any) -> None:
    """After a load: the python-side feature name follows the loaded buffer (one host read, at load time)."""
    module.feature = FEATURES[int(module.feature_code)]


class GroupedViTBackbone(ViTBackbone):
    """SatMAE's grouped-channel encoder on timm's blocks: one patch embedding per band group.

    A token is one (group, patch) pair, T = G * L tokens; its encoding is the concatenation of a
    2-D sin-cos position code (``embed_dim - embed_dim/4`` wide, ``pos_embed``) and a 1-D sin-cos
    group code (``embed_dim/4``, ``group_embed``). Both are initialised as SatMAE's fine-tuning model
    does and are trainable there; the MAE pretext freezes them, as SatMAE's pretraining does. The
    cls token gets the position code's (zero) cls slot. The input side is fixed at ``img_size``.
    """

    def __init__(self, spec: ViTSpec, in_channels: int, img_size: int, groups: Sequence[Sequence[int]],
                 group_names: Sequence[Sequence[str]], feature: str = "avg", drop_path: float = 0.0) -> None:
        super().__init__(spec, in_channels, img_size, feature, drop_path)
        if len(groups) != len(group_names) or not groups:
            raise ValueError("one name list per band group, and at least one group")
        self.groups = [tuple(int(i) for i in g) for g in groups]
        self.group_names = [tuple(g) for g in group_names]
        dim = spec.embed_dim
        self.group_dim = dim // GROUP_EMBED_FRACTION
        self.patch_embed = nn.ModuleList([PatchEmbed(img_size, spec.patch, len(g), dim) for g in self.groups])
        grid = img_size // spec.patch
        self.pos_embed = nn.Parameter(sincos_2d(dim - self.group_dim, grid))
        self.group_embed = nn.Parameter(
            torch.from_numpy(sincos_1d(self.group_dim, np.arange(len(self.groups)))).float().unsqueeze(0))
        for i, g in enumerate(self.groups):
            self.register_buffer(f"group_index_{i}", torch.tensor(g), persistent=False)

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(int(g) for g in self.patch_embed[0].grid_size)

    def patch_tokens(self, x: Tensor) -> Tensor:
        """Images -> N x (G * L) x D tokens, group-major, with position || group encoding."""
        return self.group_tokens(x).flatten(1, 2)

    def group_tokens(self, x: Tensor) -> Tensor:
        """Images -> N x G x L x D tokens with their encoding."""
        if self.input_adapter is not None:
            x = self.input_adapter(x)
        tokens = torch.stack([embed(x.index_select(1, getattr(self, f"group_index_{i}")))
                              for i, embed in enumerate(self.patch_embed)], dim=1)
        n_groups, n_pos = tokens.shape[1:3]
        pos = self.pos_embed[:, 1:].unsqueeze(1).expand(-1, n_groups, -1, -1)
        grp = self.group_embed.unsqueeze(2).expand(-1, -1, n_pos, -1)
        return tokens + torch.cat([pos, grp], dim=-1)

    def encode_tokens(self, tokens: Tensor) -> Tensor:
        cls_pos = torch.cat([self.pos_embed[:, :1], self.pos_embed.new_zeros(1, 1, self.group_dim)], dim=-1)
        cls = (self.cls_token + cls_pos).expand(tokens.shape[0], -1, -1)
        x = self.norm_pre(self.pos_drop(torch.cat([cls, tokens], dim=1)))
        return self.norm(self.blocks(x))

    def forward_features(self, x: Tensor) -> Tensor:
        """Images -> N x (1 + G * L) x D normalised tokens (cls first)."""
        return self.encode_tokens(self.patch_tokens(x))

    def forward(self, x: Tensor) -> Tensor:
        """Images -> N x D: the cls token, or the mean over every (group, patch) token."""
        return self.pool(self.forward_features(x))

    def checkpoint_meta(self) -> dict[str, Any]:
        return {"vit_feature": self.feature, "band_groups": [list(g) for g in self.group_names]}


def check_feature(feature: str) -> None:
    if feature not in FEATURES:
        raise UserError(f"ViT feature {feature!r} is not one of {', '.join(FEATURES)} (cls token, mean of patch tokens)")


def method_feature(method: str) -> str:
    """The feature ``method``'s paper reads for linear probing (default: the cls token)."""
    return METHOD_FEATURE.get(method, DEFAULT_FEATURE)


# ----------------------------------------------------------------------------- band groups
def canonical_band(band: str) -> str:
    """``B8a``/``b8a`` -> ``B8A``, ``B2``/``b02`` -> ``B02``; other names unchanged (stripped)."""
    return s2_name(band) or band.strip()


def parse_band_groups(text: str) -> list[list[str]]:
    """``--band-groups "B02,B03,B04,B08;B05,B06,B07,B8A;B11,B12"`` -> the named groups."""
    groups = [[b.strip() for b in part.split(",") if b.strip()] for part in str(text).split(";")]
    if not groups or any(not g for g in groups):
        raise UserError(f"--band-groups {text!r} has an empty group; give band names, groups separated by ';', "
                        "e.g. --band-groups \"B02,B03,B04,B08;B05,B06,B07,B8A;B11,B12\"")
    return groups


def resolve_groups(groups: Sequence[Sequence[str]] | None, bands: Sequence[str], *, strict: bool
                   ) -> tuple[list[list[int]], list[list[str]], list[str]]:
    """Band groups by name -> (input positions per group, their names in our spelling, our bands in no group).

    ``groups`` None: the Sentinel-2 groups :data:`S2_GROUPS`, each keeping the bands the data has
    (a group with none is left out). ``strict``: every named band must be among ``bands``
    (``--band-groups``, or the groups a checkpoint was pretrained with).
    """
    where = {canonical_band(b): i for i, b in enumerate(bands)}
    named = S2_GROUPS if groups is None else groups
    idx, names, seen = [], [], {}
    for group in named:
        keep = []
        for band in group:
            c = canonical_band(band)
            if c in seen:
                raise UserError(f"band {band} is in two band groups ({' / '.join(','.join(g) for g in named)}); "
                                "put each band in one group")
            seen[c] = True
            if c not in where:
                if strict:
                    raise UserError(f"band group {','.join(group)} names {band}, which this data's bands "
                                    f"({' '.join(bands)}) do not include; name bands it has, or pick the --ds/--dtype "
                                    "the groups were made for")
                continue
            keep.append(c)
        if keep:
            idx.append([where[c] for c in keep])
            names.append([bands[where[c]] for c in keep])
    dropped = [b for b in bands if canonical_band(b) not in seen]
    return idx, names, dropped


# ----------------------------------------------------------------------------- building
def build_vit(spec: ViTSpec, in_channels: int, input_size: int | None, drop_path: float = 0.0,
              band_groups: Sequence[Sequence[str]] | None = None, bands: Sequence[str] | None = None,
              feature: str = DEFAULT_FEATURE) -> ViTBackbone:
    """A ViT backbone of ``spec`` for ``in_channels`` bands at ``input_size`` px (default 224, timm's).

    ``band_groups`` (names, e.g. read from a mode-931 checkpoint) with the data's ``bands`` build
    the grouped-channel encoder instead, pooling ``avg`` unless the checkpoint says otherwise.
    """
    size = int(input_size or 224)
    if size % spec.patch or size < spec.patch:
        raise UserError(f"{spec.name} cuts the input into {spec.patch}x{spec.patch} patches but the input is "
                        f"{size}x{size}; use an --input_size that is a multiple of {spec.patch}")
    if not 0 <= drop_path < 1:
        raise UserError(f"--drop-path {drop_path} must be in [0, 1); MAE fine-tunes ViTs with 0.1")
    if band_groups is None:
        return ViTBackbone(spec, in_channels, size, feature, drop_path)
    if bands is None or len(bands) != in_channels:
        raise ValueError("a grouped-channel ViT needs the names of its input bands")
    idx, names, _ = resolve_groups(band_groups, bands, strict=True)
    return GroupedViTBackbone(spec, in_channels, size, idx, names, "avg", drop_path)


def is_vit(module: nn.Module) -> bool:
    return isinstance(module, ViTBackbone)


def freeze_patch_embed(model: nn.Module) -> list[str]:
    """MoCo v3's random patch projection: every ViT patch embedding in ``model`` keeps its initial weights.

    Its parameters get ``requires_grad=False`` (moco-v3 vits.py ``--stop-grad-conv1``), so the
    optimiser built afterwards leaves them out of its groups (an EMA copy of them then stays equal
    to them). Returns the names of the tensors it froze; a model without a ViT is an error (the plan
    refuses the flag for CNN codes before this runs).
    """
    vits = [(prefix, m) for prefix, m in model.named_modules() if is_vit(m)]
    if not vits:
        raise ValueError("freeze_patch_embed: the model has no ViT backbone")
    frozen = []
    for prefix, vit in vits:
        for name, p in vit.patch_embed.named_parameters():
            if p.requires_grad:
                frozen.append(f"{prefix + '.' if prefix else ''}patch_embed.{name}")
                p.requires_grad_(False)
    return frozen


def set_drop_path(vit: ViTBackbone, rate: float) -> None:
    """Stochastic depth on ``vit``'s blocks, rising linearly from 0 to ``rate`` over the depth (timm's
    ``drop_path_rate`` rule), set after building: DINO's student has it, its teacher (a copy) not."""
    for block, r in zip(vit.blocks, calculate_drop_path_rates(rate, len(vit.blocks))):
        block.drop_path1 = DropPath(r) if r > 0 else nn.Identity()
        block.drop_path2 = DropPath(r) if r > 0 else nn.Identity()
