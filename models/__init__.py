"""Networks: backbones built from ``--netnum``, heads, and the scene classifier."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from torch import Tensor, nn

from models.backbones import Backbone, build_backbone
from models.heads import ProjectionHead


class SceneNet(nn.Module):
    """Scene classifier: ``backbone`` (images -> N x D features) then ``head`` (linear, D -> classes).

    Kept as two attributes so that fine-tuning protocols can treat them apart (a linear
    probe freezes ``backbone``; a pretraining checkpoint loads into ``backbone`` only).
    """

    def __init__(self, backbone: nn.Module, head: nn.Linear) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: Tensor) -> Tensor:
        """N x C x H x W images -> N x num_classes logits."""
        return self.head(self.backbone(x))


def build_model(netnum: str, in_channels: int, num_classes: int, ptcp: bool = False,
                rgb_index: tuple[int, int, int] | None = None, weights: str | Path | None = None, *,
                input_size: int | None = None, drop_path: float = 0.0,
                band_groups: Sequence[Sequence[str]] | None = None, bands: Sequence[str] | None = None) -> SceneNet:
    """The classifier ``--netnum`` names, with a new ``num_classes``-way linear last layer.

    Family 0: backbone + global average pool + linear head. Family 9: the plain
    torchvision classifier whose last layer is the head (RGB only). ``ptcp`` and
    ``rgb_index`` and ``weights`` (and, for ViTs, ``input_size``, ``drop_path``, ``band_groups``,
    ``bands``) are as in :func:`build_backbone`; the head is always freshly initialised.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    backbone, dim = build_backbone(netnum, in_channels, ptcp=ptcp, rgb_index=rgb_index, weights=weights,
                                   input_size=input_size, drop_path=drop_path, band_groups=band_groups, bands=bands)
    return SceneNet(backbone, nn.Linear(dim, num_classes))


__all__ = ["Backbone", "ProjectionHead", "SceneNet", "build_backbone", "build_model"]
