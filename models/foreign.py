"""A backbone from another code base, as a file holds it: what it is (:class:`Foreign`), its state dict,
and its first layer's input filters moved BY BAND NAME into our band order.

Shared by the ResNet loaders (:mod:`models.pretrained`) and the ViT loaders (:mod:`models.pretrained_vit`).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from torch import Tensor

from config import baselines as B
from config.ckptio import read_checkpoint
from config.codes import BACKBONES
from config.errors import UserError
from models.bands import s2_name
from models.vit import method_feature

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Foreign:
    """A Sentinel-2 backbone from another code base, read from ``path``."""

    path: Path
    state: dict[str, Tensor]      # torchvision key layout, no fc
    bands: tuple[str, ...]        # the order of the first conv's input filters
    method: str                   # moco, dino, ... or "" when nothing tells
    arch: str                     # resnet18, resnet50, vit_small_patch16, ... (or a description)
    kind: str = "resnet"          # resnet | vit
    desc: str = ""                # what the file holds, in words (ViTs)

    @property
    def pretext(self) -> str:
        return f"ssl4eo-{self.method or 'pretrained'}"

    @property
    def feature(self) -> str | None:
        """ViTs: the feature the method's paper probes (cls / avg); None for ResNets."""
        return method_feature(self.method) if self.kind == "vit" else None

    @property
    def meta(self) -> dict[str, Any]:
        """What stands in for our checkpoint meta (the pretext column, where the weights came from)."""
        return {"pretext": self.pretext, "dataset": "SSL4EO-S12", "external": str(self.path), "selected_by": "published",
                "arch": self.arch, "bands": list(self.bands), "input_size": B.SSL4EO_INPUT_SIZE,
                **({"vit_feature": self.feature} if self.kind == "vit" else {})}


def unwrap(obj: Any) -> Any:
    for key in ("state_dict", "teacher", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            return obj[key]
    return obj


def strip_prefix(state: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}
    return state


def read_state_dict_file(path: str | Path, what: str) -> dict[str, Tensor]:
    """A torchvision-layout state dict (``--weights``), possibly wrapped in ``state_dict``/``model``."""
    obj = read_checkpoint(path, what, weights_only=True, hint="download it again")
    state = unwrap(obj)
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise UserError(f"{what} {path} does not hold a state dict of tensors; give a torchvision weights file "
                        "(e.g. resnet50-0676ba61.pth)")
    return strip_prefix(dict(state), "module.")


def netnum_for(arch: str) -> str:
    digit = next((d for d, name in BACKBONES.items() if name == arch), None)
    return f"--netnum 0{digit}0000" if digit else "a --netnum of the same ResNet"


def map_first_conv(weight: Tensor, theirs: Sequence[str], ours: Sequence[str]) -> tuple[Tensor, list[str], list[str]]:
    """Their first-conv weight (out x len(theirs) x k x k) re-ordered into our band order.

    Returns the new weight, our bands they lack (zero filters) and their bands we do not read.
    """
    where = {s2_name(b): j for j, b in enumerate(theirs)}
    out = weight.new_zeros(weight.shape[0], len(ours), *weight.shape[2:])
    missing = []
    for i, band in enumerate(ours):
        j = where.get(s2_name(band))
        if j is None:
            missing.append(band)
        else:
            out[:, i] = weight[:, j]
    ours_canon = {s2_name(b) for b in ours}
    dropped = [b for b in theirs if s2_name(b) not in ours_canon]
    return out, missing, dropped


def mapped_first_layer(foreign: Foreign, key: str, bands: Sequence[str], what: str) -> Tensor:
    """``foreign.state[key]`` (the first layer's weight) moved into our ``bands`` by :func:`map_first_conv`;
    refuses data without Sentinel-2 bands and logs the bands that start at zero or are dropped (``what``:
    "filters", "patch filters")."""
    if not any(s2_name(b) for b in bands):
        raise UserError(f"{foreign.path} holds Sentinel-2 weights, but this dataset's bands ({' '.join(bands)}) are "
                        "not Sentinel-2 bands; evaluate it on Sentinel-2 data (e.g. --ds euroms)")
    weight, missing, dropped = map_first_conv(foreign.state[key], foreign.bands, bands)
    if missing:
        log.warning("%s has no %s for band(s) %s: they start at zero", foreign.path, what, " ".join(missing))
    if dropped:
        log.warning("%s: the %s of band(s) %s are dropped (this run does not read them)",
                    foreign.path, what, " ".join(dropped))
    return weight
