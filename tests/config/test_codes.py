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
