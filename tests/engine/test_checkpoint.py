"""Checkpoint names, atomic saving, backbone hand-over and resumable training state."""
from __future__ import annotations

import pickle

import argparse
import logging
import random
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from config.errors import UserError
from engine.checkpoint import (
    atomic_save,
    ckpt_path,
    load_backbone,
    load_training_state,
    make_expnum,
    save_backbone,
    save_training_state,
    state_path,
)


def _backbone(bands: int = 3, extra: bool = False) -> nn.Sequential:
    layers = [nn.Conv2d(bands, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 6, 1)]
    if extra:
        layers.append(nn.Conv2d(6, 6, 1))
    return nn.Sequential(*layers)


def _meta(**over) -> dict:
    meta = {
        "netnum": "020000", "in_channels": 3, "bands": ["B04", "B03", "B02"], "mode": 910, "epoch": 400,
        "expnum": "20186093531_pretrain", "dataset": "nr",
        "args": argparse.Namespace(lr=1e-4, ckpt=Path("ckpt"), milestones=[2, 4]),
    }
    meta.update(over)
    return meta


def test_make_expnum_uses_year_day_of_year_time():
    assert make_expnum("pretrain", datetime(2020, 7, 4, 9, 35, 31)) == "20186093531_pretrain"
    assert make_expnum("finetune", datetime(2021, 1, 1, 0, 0, 5)) == "21001000005_finetune"
    with pytest.raises(ValueError):
        make_expnum("a/b", datetime(2020, 7, 4))


def test_ckpt_path_follows_the_contract():
    assert ckpt_path("ck", "020000", "20186093531_pretrain", 400) == Path("ck/020000_20186093531_pretrain_400.pth")
    assert ckpt_path(Path("ck"), "020000", "E", "best") == Path("ck/020000_E_best.pth")
    assert ckpt_path("ck", "020000", "E", "0400") == Path("ck/020000_E_400.pth")
    assert state_path("ck", "020000", "E") == Path("ck/020000_E_state.pth")
    for bad in ("last", -1, "4.5", True):
        with pytest.raises(UserError):
            ckpt_path("ck", "020000", "E", bad)


def test_atomic_save_writes_and_replaces(tmp_path):
    path = tmp_path / "sub" / "x.pth"
    atomic_save({"a": torch.arange(3)}, path)
    atomic_save({"a": torch.arange(5)}, path)
    assert torch.equal(torch.load(path)["a"], torch.arange(5))
    assert sorted(p.name for p in path.parent.iterdir()) == ["x.pth"]


def test_atomic_save_failure_keeps_old_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "x.pth"
    atomic_save({"a": torch.tensor([1.0, 2.0])}, path)
    before = path.read_bytes()
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        atomic_save({"a": torch.zeros(1000), "f": lambda x: x}, path)  # a lambda cannot be pickled
    assert path.read_bytes() == before
    assert torch.equal(torch.load(path)["a"], torch.tensor([1.0, 2.0]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.pth"]


def test_backbone_round_trip(tmp_path):
    torch.manual_seed(0)
    src, dst = _backbone(), _backbone()
    src[1].running_mean.fill_(0.25)
    path = ckpt_path(tmp_path, "020000", "20186093531_pretrain", 400)
    save_backbone(path, src.state_dict(), _meta())
    meta = load_backbone(path, dst)
    for key, value in src.state_dict().items():
        assert torch.equal(dst.state_dict()[key], value), key
    assert meta["epoch"] == 400 and meta["in_channels"] == 3
    assert meta["args"] == {"lr": 1e-4, "ckpt": "ckpt", "milestones": [2, 4]}
    plain = torch.load(path, weights_only=True)  # shareable: no pickled objects
    assert set(plain) == {"backbone", "meta"}


def test_backbone_saved_from_ddp_keys_loads(tmp_path):
    src, dst = _backbone(), _backbone()
    wrapped = {f"module.{k}": v for k, v in src.state_dict().items()}
    save_backbone(tmp_path / "b.pth", wrapped, _meta())
    load_backbone(tmp_path / "b.pth", dst)
    assert torch.equal(dst[0].weight, src[0].weight)


def test_save_backbone_requires_meta_keys(tmp_path):
    meta = _meta()
    del meta["bands"]
    with pytest.raises(ValueError, match="bands"):
        save_backbone(tmp_path / "b.pth", _backbone().state_dict(), meta)


def test_missing_checkpoint_lists_existing_epochs(tmp_path):
    for epoch in (100, 200):
        save_backbone(ckpt_path(tmp_path, "020000", "E_pretrain", epoch), _backbone().state_dict(), _meta())
    model = _backbone()
    opt = torch.optim.SGD(model.parameters(), lr=1)
    save_training_state(state_path(tmp_path, "020000", "E_pretrain"), model, opt, 1, 1)
    save_backbone(tmp_path / "010000_E_pretrain_100.pth", _backbone().state_dict(), _meta())
    with pytest.raises(UserError) as err:
        load_backbone(ckpt_path(tmp_path, "020000", "E_pretrain", 400), _backbone())
    msg = str(err.value)
    assert "020000_E_pretrain_400.pth" in msg
    assert "020000_E_pretrain_100.pth, 020000_E_pretrain_200.pth" in msg
    assert "010000" not in msg and "_state.pth" not in msg


def test_missing_checkpoint_in_empty_or_absent_folder(tmp_path):
    with pytest.raises(UserError, match="has no 020000_E_pretrain_"):
        load_backbone(tmp_path / "020000_E_pretrain_400.pth", _backbone())
    with pytest.raises(UserError, match="neither does its folder"):
        load_backbone(tmp_path / "nope" / "020000_E_pretrain_400.pth", _backbone())


def test_band_count_mismatch_names_both_counts(tmp_path):
    path = tmp_path / "ms.pth"
    save_backbone(path, _backbone(bands=13).state_dict(), _meta(in_channels=13))
    with pytest.raises(UserError) as err:
        load_backbone(path, _backbone(bands=3))
    msg = str(err.value)
    assert str(path) in msg
    assert "13 input bands" in msg and "model has 3" in msg
    assert "0.weight (4, 13, 3, 3) vs (4, 3, 3, 3)" in msg


def test_shape_mismatch_skipped_when_not_strict(tmp_path, caplog):
    src, dst = _backbone(bands=13), _backbone(bands=3)
    save_backbone(tmp_path / "ms.pth", src.state_dict(), _meta(in_channels=13))
    first_conv = dst[0].weight.detach().clone()
    with caplog.at_level(logging.WARNING, logger="engine.checkpoint"):
        load_backbone(tmp_path / "ms.pth", dst, strict_shapes=False)
    assert torch.equal(dst[0].weight, first_conv)  # left as initialised
    assert torch.equal(dst[3].weight, src[3].weight)  # the rest is loaded
    assert "skipping 1 tensor" in caplog.text


def test_key_mismatch_names_keys(tmp_path):
    save_backbone(tmp_path / "b.pth", _backbone().state_dict(), _meta())
    with pytest.raises(UserError) as err:
        load_backbone(tmp_path / "b.pth", _backbone(extra=True))
    assert "4.weight, 4.bias" in str(err.value) and "netnum 020000" in str(err.value)


def test_not_a_backbone_file_and_truncated_file(tmp_path):
    torch.save({"model": {}}, tmp_path / "other.pth")
    with pytest.raises(UserError, match="not a backbone checkpoint"):
        load_backbone(tmp_path / "other.pth", _backbone())
    save_backbone(tmp_path / "b.pth", _backbone().state_dict(), _meta())
    data = (tmp_path / "b.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="cannot be read"):
        load_backbone(tmp_path / "cut.pth", _backbone())


def _draws() -> tuple[float, float, float]:
    return torch.rand(1).item(), float(np.random.rand()), random.random()


def test_training_state_round_trip_restores_everything(tmp_path):
    torch.manual_seed(1)
    model = _backbone()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    opt.step()
    scaler = torch.amp.GradScaler("cpu", init_scale=512.0)
    torch.manual_seed(7)
    np.random.seed(7)
    random.seed(7)
    path = tmp_path / "state.pth"
    save_training_state(path, model, opt, epoch=3, it=120, scaler=scaler, extra={"best_oa": 0.5})
    expected_draws = _draws()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    buffers = [opt.state[p]["momentum_buffer"].clone() for p in model.parameters()]

    model2 = _backbone()
    opt2 = torch.optim.SGD(model2.parameters(), lr=0.1, momentum=0.9)
    scaler2 = torch.amp.GradScaler("cpu", init_scale=2.0)
    _draws()  # move every RNG on
    info = load_training_state(path, model2, opt2, scaler2)
    assert info == {"epoch": 3, "it": 120, "extra": {"best_oa": 0.5}}
    assert _draws() == expected_draws
    for key, value in weights.items():
        assert torch.equal(model2.state_dict()[key], value), key
    for p, buf in zip(model2.parameters(), buffers):
        assert torch.equal(opt2.state[p]["momentum_buffer"], buf)
    assert scaler2.get_scale() == 512.0


def test_training_state_errors(tmp_path):
    with pytest.raises(UserError, match="--resume file"):
        load_training_state(tmp_path / "none.pth", _backbone())
    model = _backbone()
    save_training_state(tmp_path / "s.pth", model, torch.optim.SGD(model.parameters(), lr=0.1), 1, 10)
    with pytest.raises(UserError, match="does not fit this model"):
        load_training_state(tmp_path / "s.pth", _backbone(extra=True))
    save_backbone(tmp_path / "b.pth", model.state_dict(), _meta())
    with pytest.raises(UserError, match="not a training-state file"):
        load_training_state(tmp_path / "b.pth", model)


def test_wrapped_models_save_and_load_without_prefix(tmp_path):
    model = _backbone()
    wrapped = nn.DataParallel(model)
    save_training_state(tmp_path / "s.pth", wrapped, torch.optim.SGD(model.parameters(), lr=0.1), 2, 20)
    assert all(not k.startswith("module.") for k in torch.load(tmp_path / "s.pth", weights_only=False)["model"])
    plain = _backbone()
    assert load_training_state(tmp_path / "s.pth", plain)["epoch"] == 2
    assert torch.equal(plain[0].weight, model[0].weight)
    save_backbone(tmp_path / "b.pth", model.state_dict(), _meta())
    other = nn.DataParallel(_backbone())
    load_backbone(tmp_path / "b.pth", other)
    assert torch.equal(other.module[3].weight, model[3].weight)
