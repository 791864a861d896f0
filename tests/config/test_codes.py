import pytest

from config import codes
from config.errors import UserError


def test_seed_netnum_meanings_are_fixed():
    want = {"1": "resnet34", "2": "resnet50", "3": "resnet34_small", "4": "resnet101",
            "5": "vgg16_bn", "6": "googlenet", "7": "alexnet", "8": "alexnet_small"}
    for digit, name in want.items():
        assert codes.decode_netnum(f"0{digit}0000").backbone == name
    assert codes.decode_netnum("020000").family == "scene"
    assert codes.decode_netnum("920000").family == "torchvision"
    assert codes.decode_netnum("090000").backbone == "resnet18"
    assert codes.decode_netnum("000000").backbone == "resnet18_small"


@pytest.mark.parametrize("bad", ["02000", "0200000", "x20000", "520000", "020001", ""])
def test_bad_netnum_lists_valid_codes(bad):
    with pytest.raises(UserError) as e:
        codes.decode_netnum(bad)
    assert "resnet50" in str(e.value) and "digit 2" in str(e.value)


def test_modes():
    m = codes.decode_mode(910, "pretrain")
    assert (m.job, m.pretext) == ("pretrain", "simclr")
    assert codes.decode_mode("41", "cls").job == "finetune"
    assert codes.decode_mode(12, "cls").job == "train"
    assert codes.decode_mode(31).job == "test"
    for code, name in [(920, "multitask"), (96, "inpaint"), (972, "jigsaw4"), (973, "jigsaw9"),
                       (98, "colorize"), (990, "gan"), (991, "gan_fm")]:
        assert codes.decode_mode(code, "pretrain").pretext == name


@pytest.mark.parametrize("bad,script", [(919, "pretrain"), (41, "pretrain"), (910, "cls"), (51, "cls"), ("x", "cls")])
def test_bad_modes(bad, script):
    with pytest.raises(UserError):
        codes.decode_mode(bad, script)


def test_list_codes_tables():
    text = codes.format_tables()
    for word in ("910", "920", "973", "resnet18_small", "vgg16_bn", "finetune"):
        assert word in text


def test_vit_family_has_its_own_digit_2_table():
    want = {"1": ("vit_tiny_patch16", 16), "2": ("vit_tiny_patch8", 8), "3": ("vit_small_patch16", 16),
            "4": ("vit_small_patch8", 8)}
    for digit, (name, patch) in want.items():
        code = codes.decode_netnum(f"1{digit}0000")
        assert (code.family, code.backbone, code.patch) == ("vit", name, patch)
    assert codes.decode_netnum("010000").backbone == "resnet34"        # digit 2 means a CNN in family 0
    for bad in ("100000", "150000", "190000"):
        with pytest.raises(UserError, match="digit 2 of family 1"):
            codes.decode_netnum(bad)
    lines = [line for line in codes.format_netnums().splitlines() if line.strip().startswith(("1 ", "2 ", "3 ", "4 "))]
    assert "    1  vit tiny patch 16  (vit_tiny_patch16: 192-d, 12 blocks, 3 heads; input side a multiple of 16)" in lines
    assert "    4  vit small patch 8  (vit_small_patch8: 384-d, 12 blocks, 6 heads; input side a multiple of 8)" in lines


def test_mae_modes():
    assert codes.decode_mode(930, "pretrain").pretext == "mae"
    assert codes.decode_mode(931, "pretrain").pretext == "mae_grouped"
    assert "930" in codes.format_modes("pretrain") and "931" in codes.format_modes("pretrain")
