"""Limits every layer checks against: the smallest input each backbone takes, and the largest one
the machine's memory can hold.

A ground-floor table (no imports above ``config``), so datasets, models and pretexts can
refuse a size without reaching up into the engine.
"""
from __future__ import annotations

import os

from config.codes import decode_netnum
from config.errors import UserError

# Smallest input side (pixels) each backbone's forward pass takes, measured with
# tests/engine/test_guards.py::test_min_input_sizes_are_exact (min works, min - 1 fails).
# ResNets end in adaptive pooling and take any size.
MIN_INPUT_SIZE: dict[str, int] = {
    "vgg16_bn": 32, "googlenet": 15, "alexnet": 63, "alexnet_small": 15,
}


def check_input_size(netnum: str, size: int) -> None:
    """The backbone of ``netnum`` must take ``size x size`` inputs (see :data:`MIN_INPUT_SIZE`); a ViT's
    side must be a multiple of its patch (the error names the nearest sizes that are)."""
    code = decode_netnum(netnum)
    if code.vit is not None:
        p = code.patch
        if size % p:
            fits = [s for s in (size // p * p, size // p * p + p) if s >= p]
            raise UserError(f"--netnum {netnum} (vit {code.vit.size} patch {p}) cuts the input into {p}x{p} patches, "
                            f"so its side must be a multiple of {p}, and {size} px is not; use --input_size "
                            + " or ".join(str(s) for s in fits))
        return
    need = MIN_INPUT_SIZE.get(code.backbone, 1)
    if size < need:
        small = {"alexnet": " or alexnet_small (--netnum 080000, 15 px)", "vgg16_bn": "", "googlenet": ""}
        raise UserError(f"--netnum {netnum} ({code.backbone}) needs inputs of at least {need}x{need} pixels but "
                        f"the input is {size}x{size}; raise --input_size to {need} or more, or use a ResNet "
                        f"(e.g. --netnum 000000, any size){small.get(code.backbone, '')}")


# The first feature map every backbone here makes: 64 channels at half the input side (ResNet's and
# GoogLeNet's stride-2 stems; the small stems and VGG keep the full side, so this is a lower bound).
FIRST_MAP_FLOATS_PER_PIXEL = 64 / 4


def physical_memory() -> int:
    """Bytes of RAM of this machine (0 where the OS does not say)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 0


def check_input_memory(size: int, bands: int, batch: int, memory: int | None = None) -> None:
    """``--input_size``: one batch of float32 inputs plus the first feature map must fit in memory.

    A lower bound of what the run needs (the deeper layers need more), compared with the physical
    memory, so a size no machine here can hold is one sentence instead of an out-of-memory traceback.
    """
    memory = physical_memory() if memory is None else memory
    need = 4 * batch * size * size * (bands + FIRST_MAP_FLOATS_PER_PIXEL)
    if memory and need > memory:
        raise UserError(f"--input_size {size} needs at least {_gib(need)} for one batch of {batch} images "
                        f"({bands} bands and the first layer's feature maps at {size}x{size} px, float32), more "
                        f"than the {_gib(memory)} of memory here; use a smaller --input_size (e.g. 224) or leave it "
                        "out for the dataset's own size")


def _gib(n: float) -> str:
    return f"{n / 2**40:,.0f} TiB" if n >= 2**40 else f"{n / 2**30:,.1f} GiB"
