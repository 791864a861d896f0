"""Checkpoint provenance: what pretraining saw, and main_cls.py's overlap, 'best' and normalisation checks."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

import main_cls
from datasets.options import get_opt
from config.errors import UserError
from datasets.folder import prepare_dataset
from datasets.index import Sample
from engine import checkpoint as ckpt
from engine import evaljob, provenance
from engine.cli import base_parser
from models import build_model

NET = "090000"
EXP = "20186093531_pretrain"


def parse(root: Path, ck: Path, *extra: str):
    parser = evaljob.add_args(base_parser("t", script="cls"))
    return parser.parse_args(["--ds", "demo", "--data-root", str(root), "--netnum", NET, "--input_size", "32",
                              "--workers", "0", "--ckpt", str(ck), "--no-progress", *extra])


@pytest.fixture(scope="module")
def demo(demo_root):
    return prepare_dataset(get_opt("demo", parse(demo_root, Path("ck"))))


def write_backbone(ck: Path, tag: str, meta_over: dict) -> Path:
    path = ckpt.ckpt_path(ck, NET, EXP, tag)
    model = build_model(NET, 13, 6)
    meta = {"netnum": NET, "in_channels": 13, "bands": [], "mode": 910, "pretext": "simclr", "epoch": 1,
            "expnum": EXP, "dataset": "demo", "args": {}, **meta_over}
    ckpt.save_backbone(path, model.backbone.state_dict(), meta)
    return path


def with_keys(prov: dict, keys: list[str]) -> dict:
    keys = sorted(set(keys))
    return {**prov, "scene_keys": keys, "scene_keys_sha": provenance.keys_digest(keys)}


def test_scene_keys_match_across_releases_and_pools(tmp_path):
    rgb, ms = tmp_path / "EuroSAT", tmp_path / "EuroSAT_MS"
    a = [Sample(rgb / "Forest" / "Forest_1.jpg", 1), Sample(rgb / "River" / "River_7.jpg", 2)]
    b = [Sample(ms / "Forest" / "Forest_1.tif", 1), Sample(ms / "Pasture" / "Pasture_3.tif", 0)]
    assert provenance.scene_keys(a) == ["Forest/Forest_1", "River/River_7"]
    # a pool holds both releases: the key is the file's class folder and stem, whatever folder holds the dataset
    assert provenance.scene_keys(a + b) == ["Forest/Forest_1", "Pasture/Pasture_3", "River/River_7"]
    assert provenance.scene_keys([Sample(tmp_path / "data" / "eurosat_ms" / "Forest" / "Forest_1.tif", -1)]) \
        == ["Forest/Forest_1"]


def test_provenance_records_datasets_scene_keys_and_normalisation(demo):
    opt, index = demo
    prov = provenance.provenance(opt, index, index.train[:7])
    expected = sorted(f"{s.path.parent.name}/{s.path.stem}" for s in index.train[:7])
    assert prov["scene_keys"] == expected and prov["scene_keys_sha"] == provenance.keys_digest(expected)
    assert prov["datasets"] == [{"name": "demo", "split_version": index.split_version, "root": str(opt.root),
                                 "scenes": "demo", "mean": prov["mean"], "std": prov["std"]}]
    from datasets.fingerprint import content_digest
    assert prov["scene_digests"] == sorted({content_digest(s.path) for s in index.train[:7]})
    assert index.split_version.startswith("v2-")
    assert prov["bands"] == list(opt.bands) and np.allclose(prov["mean"], opt.mean) and np.allclose(prov["std"], opt.std)


def test_pretraining_writes_provenance_main_cls_accepts_it(demo, demo_root, tmp_path):
    """The real hand-over: main_cls_ss_train.py writes provenance of its training images only."""
    import main_cls_ss_train
    opt, index = demo
    ck = tmp_path / "ck"
    main_cls_ss_train.main(["--mode", "910", "--ds", "demo", "--data-root", str(demo_root), "--netnum", NET,
                            "--input_size", "32", "--bs", "16", "--mepoch", "1", "--workers", "0", "--ckpt", str(ck),
                            "--expnum", EXP, "--knn-freq", "0", "--no-progress"])
    meta = ckpt.read_checkpoint(ckpt.ckpt_path(ck, NET, EXP, 1))["meta"]
    assert meta["provenance"]["scene_keys"] == provenance.scene_keys(index.train)
    job = evaljob.resolve(parse(demo_root, ck, "--mode", "41", "--ts", "2", "--expnum", EXP, "--cepoch", "1"))
    assert job.init_meta["provenance"]["scene_keys_sha"] == meta["provenance"]["scene_keys_sha"]


def test_overlap_with_the_test_split_is_refused_unless_allowed(demo, demo_root, tmp_path, capsys):
    opt, index = demo
    ck = tmp_path / "ck"
    prov = provenance.provenance(opt, index, index.train)
    leaked = with_keys(prov, prov["scene_keys"] + provenance.scene_keys(index.test[:3]))
    write_backbone(ck, "1", {"provenance": leaked})
    with pytest.raises(UserError, match=r"pretrained on 3 of the 12 test scenes of --ds demo.*--allow-overlap"):
        evaljob.resolve(parse(demo_root, ck, "--mode", "41", "--ts", "2", "--expnum", EXP, "--cepoch", "1"))
    with pytest.raises(SystemExit) as exit_:
        main_cls.main(["--ds", "demo", "--data-root", str(demo_root), "--netnum", NET, "--ckpt", str(ck),
                       "--mode", "41", "--ts", "2", "--expnum", EXP, "--cepoch", "1", "--probe", "knn"])
    assert exit_.value.code == 2 and "test scenes" in capsys.readouterr().err
    res = tmp_path / "r.csv"
    main_cls.main(["--ds", "demo", "--data-root", str(demo_root), "--netnum", NET, "--input_size", "32",
                   "--workers", "0", "--ckpt", str(ck), "--no-progress", "--results", str(res), "--mode", "41",
                   "--ts", "2", "--expnum", EXP, "--cepoch", "1", "--probe", "knn", "--allow-overlap"])
    with open(res, newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert row["allow_overlap"] == "1" and row["pretrain_datasets"] == f"demo@{index.split_version}"
    assert row["probe"] == "knn" and row["probe_param"].startswith("k=") and row["split_version"] == index.split_version
    assert row["bs"] == row["optimizer"] == row["lr"] == "" and row["epochs"] == "0"     # a probe trains nothing


def test_altered_scene_keys_are_refused(demo, demo_root, tmp_path):
    opt, index = demo
    prov = provenance.provenance(opt, index, index.train)
    write_backbone(tmp_path, "1", {"provenance": {**prov, "scene_keys": prov["scene_keys"][1:]}})
    with pytest.raises(UserError, match="do not match their recorded digest"):
        evaljob.resolve(parse(demo_root, tmp_path, "--mode", "41", "--ts", "2", "--expnum", EXP, "--cepoch", "1"))


def test_old_checkpoint_without_provenance_is_accepted_with_a_notice(demo_root, tmp_path, caplog):
    write_backbone(tmp_path, "1", {})
    with caplog.at_level("WARNING"):
        job = evaljob.resolve(parse(demo_root, tmp_path, "--mode", "41", "--ts", "2", "--expnum", EXP, "--cepoch", "1"))
    assert job.init is not None and "has no provenance" in caplog.text


def test_other_normalisation_warns(demo, demo_root, tmp_path, caplog):
    opt, index = demo
    prov = provenance.provenance(opt, index, index.train)
    write_backbone(tmp_path, "1", {"provenance": {**prov, "mean": [m + 100.0 for m in prov["mean"]]}})
    with caplog.at_level("WARNING"):
        evaljob.resolve(parse(demo_root, tmp_path, "--mode", "41", "--ts", "2", "--expnum", EXP, "--cepoch", "1"))
    assert "this run normalises with" in caplog.text
    caplog.clear()
    write_backbone(tmp_path, "2", {"provenance": prov})
    with caplog.at_level("WARNING"):
        evaljob.resolve(parse(demo_root, tmp_path, "--mode", "41", "--ts", "2", "--expnum", EXP, "--cepoch", "2"))
    assert "normalises" not in caplog.text


def test_cepoch_best_needs_a_validation_slice_choice(demo, demo_root, tmp_path):
    opt, index = demo
    prov = provenance.provenance(opt, index, index.train)
    write_backbone(tmp_path, "best", {"provenance": prov})                 # written before the slice existed
    with pytest.raises(UserError, match="not by the kNN monitor on the validation slice"):
        evaljob.resolve(parse(demo_root, tmp_path, "--mode", "41", "--ts", "2", "--expnum", EXP, "--cepoch", "best"))
    write_backbone(tmp_path, "best", {"provenance": prov, "selected_by": "val-knn", "selected_epoch": 1})
    job = evaljob.resolve(parse(demo_root, tmp_path, "--mode", "41", "--ts", "2", "--expnum", EXP, "--cepoch", "best"))
    assert job.init_meta["selected_by"] == "val-knn"


def test_allow_overlap_without_a_checkpoint_is_refused(demo_root, tmp_path):
    with pytest.raises(UserError, match="drop it"):
        evaljob.resolve(parse(demo_root, tmp_path, "--mode", "11", "--ts", "2", "--allow-overlap"))


# ---- issue 19: scene keys independent of the folder root, content digests, no false matches ----

def _check(prov_opt, prov_index, samples, eval_opt, eval_index):
    """check_checkpoint of a checkpoint pretrained on ``samples`` against the test split of ``eval_*``."""
    meta = {"provenance": provenance.provenance(prov_opt, prov_index, samples), "dataset": prov_opt.name}
    provenance.check_checkpoint(meta, Path("ck.pth"), eval_opt, eval_index, allow_overlap=False)


def test_pretraining_on_the_parent_folder_or_a_flat_copy_still_matches(tmp_path):
    """`--ds <data-root>` keys its files eurosat_ms/<class>/<stem>, a flat copy <stem>: every test scene of
    euroms must still be found (before: 0 of them)."""
    import argparse
    import shutil

    from datasets.index import build_index
    from tests.datasets.trees import eurosat_tree
    data = tmp_path / "data"
    folder = eurosat_tree(data, 3, ".tif")
    ns = argparse.Namespace(data_root=str(data), split_file=None)
    eval_opt = get_opt("euroms", ns)
    eval_index = build_index(eval_opt)
    flat = tmp_path / "flat"
    flat.mkdir()
    for f in folder.rglob("*.tif"):
        shutil.copy(f, flat / f.name)
    for root in (data, flat):
        opt = get_opt(str(root))
        index = build_index(opt)
        with pytest.raises(UserError, match=f"pretrained on {len(eval_index.test)} of the {len(eval_index.test)} test "
                                            "scenes of --ds euroms"):
            _check(opt, index, index.train + index.test, eval_opt, eval_index)


def test_the_rgb_release_matches_the_tif_release_by_name(tmp_path):
    import argparse

    from datasets.index import build_index
    from tests.datasets.trees import eurosat_tree
    eurosat_tree(tmp_path, 3, ".jpg")
    eurosat_tree(tmp_path, 3, ".tif")
    ns = argparse.Namespace(data_root=str(tmp_path), split_file=None)
    rgb, ms = get_opt("eurorgb", ns), get_opt("euroms", ns)
    rgb_index, ms_index = build_index(rgb), build_index(ms)
    with pytest.raises(UserError, match=f"{len(rgb_index.test)} of the {len(rgb_index.test)} test scenes"):
        _check(ms, ms_index, ms_index.train + ms_index.test, rgb, rgb_index)
    _check(ms, ms_index, ms_index.train, rgb, rgb_index)       # the training split only: none of them


def test_unrelated_datasets_with_the_same_file_names_do_not_match(tmp_path):
    """Two trees named alike (Fields/fields_000.tif ...) with other pixels are other scenes."""
    from datasets.index import build_index
    from tests.datasets.trees import class_tree
    sizes = {"Fields": 6, "Forest": 6, "Water": 6}
    a_opt = get_opt(str(class_tree(tmp_path / "a", sizes, seed=0)))
    b_opt = get_opt(str(class_tree(tmp_path / "b", sizes, seed=1)))
    a, b = build_index(a_opt), build_index(b_opt)
    assert {s.key for s in a.test} == {s.key for s in b.test}
    _check(a_opt, a, a.train + a.test, b_opt, b)                # other files: accepted
    with pytest.raises(UserError, match="test scenes"):
        _check(a_opt, a, a.train + a.test, a_opt, a)            # the same files: refused


# ---- issue 19: a test-chosen 'best' is refused on every path that loads a checkpoint ----

def test_a_test_chosen_best_is_refused_through_encoder_cp_too(demo, demo_root, tmp_path):
    opt, index = demo
    prov = provenance.provenance(opt, index, index.train)
    best = write_backbone(tmp_path, "best", {"provenance": prov})          # an old best: chosen on TEST labels
    with pytest.raises(UserError, match="not by the kNN monitor on the validation slice"):
        evaljob.resolve(parse(demo_root, tmp_path, "--mode", "41", "--ts", "2", "--encoder_cp", str(best)))
    copy = tmp_path / "renamed.pth"                                        # renamed: its meta still says so
    write_backbone(tmp_path, "best", {"provenance": prov, "selected_epoch": 3})
    copy.write_bytes(best.read_bytes())
    with pytest.raises(UserError, match="not by the kNN monitor on the validation slice"):
        evaljob.resolve(parse(demo_root, tmp_path, "--mode", "41", "--ts", "2", "--encoder_cp", str(copy)))


def test_a_test_chosen_best_is_refused_as_a_pretraining_start(demo, demo_root, tmp_path, capsys):
    import main_cls_ss_train
    opt, index = demo
    write_backbone(tmp_path, "best", {"provenance": provenance.provenance(opt, index, index.train)})
    with pytest.raises(SystemExit) as e:
        main_cls_ss_train.main(["--mode", "910", "--ds", "demo", "--data-root", str(demo_root), "--netnum", NET,
                                "--input_size", "32", "--bs", "16", "--mepoch", "1", "--workers", "0",
                                "--ckpt", str(tmp_path), "--expnum", EXP, "--cepoch", "best", "--knn-freq", "0"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "not by the kNN monitor on the validation slice" in err and "Traceback" not in err


def test_encoder_cp_rows_say_what_chose_the_checkpoint(demo, demo_root, tmp_path):
    opt, index = demo
    prov = provenance.provenance(opt, index, index.train)
    path = write_backbone(tmp_path, "7", {"provenance": prov, "selected_by": "epoch", "epoch": 7})
    old = write_backbone(tmp_path, "8", {"provenance": prov, "epoch": 8})       # numbered, before selected_by
    res = tmp_path / "r.csv"
    for f in (path, old):
        main_cls.main(["--ds", "demo", "--data-root", str(demo_root), "--netnum", NET, "--input_size", "32",
                       "--workers", "0", "--ckpt", str(tmp_path), "--no-progress", "--results", str(res),
                       "--mode", "41", "--ts", "2", "--encoder_cp", str(f), "--probe", "knn"])
    with open(res, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["ckpt_selected_by"], r["pretrain_epoch"]) for r in rows] == [("epoch", "7"), ("epoch", "8")]
