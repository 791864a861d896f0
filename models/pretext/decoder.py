"""The reconstruction decoder shared by inpainting (96) and colorization (98).

It maps the backbone's LAST stage feature map back to a full-size image with every
band: a 1x1 conv narrows the channels, then transposed-conv blocks (4x4, stride 2,
BN, ReLU; Pathak et al.'s context-encoder decoder) double the side until it reaches the
input size, and a 3x3 conv gives one output per band. Backbones whose last stage does
not divide the input by a power of two (a 7x7 map for 224 pixels is fine, a 4x4 map
for 100 pixels is not) are brought to the exact size by one final bilinear resize.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from models.backbones import stage_shapes

DECODER_WIDTH = 256     # channels after the 1x1 narrowing conv
MIN_WIDTH = 32          # channel floor of the last upsampling blocks


def last_stage_shape(backbone: nn.Module, in_channels: int, size: int) -> tuple[int, int]:
    """Channels and side of ``backbone``'s last stage output for a ``size x size`` input.

    Found by one forward pass of a blank image in eval mode (BatchNorm statistics are
    left untouched). A backbone that cannot take ``size`` pixels (e.g. VGG below 32)
    is a user error: the message names the size.
    """
    fmap = stage_shapes(backbone, in_channels, size)[-1]
    return int(fmap[1]), int(fmap[-1])


def _up_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class ReconstructionDecoder(nn.Module):
    """Last-stage map ``N x in_channels x in_side x in_side`` -> ``N x out_channels x out_size x out_size``.

    ``ceil(log2(out_size / in_side))`` upsampling blocks, channels halving from
    ``width`` to at least ``MIN_WIDTH``; no output activation (targets are normalised,
    hence unbounded).
    """

    def __init__(self, in_channels: int, out_channels: int, in_side: int, out_size: int,
                 width: int = DECODER_WIDTH) -> None:
        super().__init__()
        width = min(width, in_channels)
        self.n_up = 0
        while max(in_side, 1) << self.n_up < out_size:
            self.n_up += 1
        layers: list[nn.Module] = [nn.Conv2d(in_channels, width, 1, bias=False), nn.BatchNorm2d(width),
                                   nn.ReLU(inplace=True)]
        c = width
        for _ in range(self.n_up):
            c_next = max(MIN_WIDTH, c // 2)
            layers.append(_up_block(c, c_next))
            c = c_next
        layers.append(nn.Conv2d(c, out_channels, 3, padding=1))
        self.net = nn.Sequential(*layers)
        self.out_size = out_size

    def forward(self, fmap: Tensor, size: tuple[int, int] | None = None) -> Tensor:
        """Decode ``fmap``; the output is resized to ``size`` (default ``out_size`` square) if it differs."""
        out = self.net(fmap)
        size = tuple(size) if size is not None else (self.out_size, self.out_size)
        if tuple(out.shape[-2:]) != size:
            out = F.interpolate(out, size=size, mode="bilinear", align_corners=False)
        return out


def build_decoder(backbone: nn.Module, in_channels: int, out_channels: int, size: int) -> ReconstructionDecoder:
    """A decoder sized for ``backbone`` on ``size x size`` inputs of ``in_channels`` bands."""
    channels, side = last_stage_shape(backbone, in_channels, size)
    return ReconstructionDecoder(channels, out_channels, side, size)
