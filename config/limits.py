"""Limits every layer checks against: the smallest input each backbone takes.

A ground-floor table (no imports above ``config``), so datasets, models and pretexts can
refuse a size without reaching up into the engine.
"""
from __future__ import annotations

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
