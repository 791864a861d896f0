"""The label rule: who may read which labels (engine/labels.py) and that main_cls follows it."""
import csv

import pytest

import main_cls
from datasets.index import build_index
from datasets.options import get_opt
from engine import labels
from tests.datasets.trees import class_tree

SIZES = {"Fields": 12, "Forest": 20, "Water": 7}


def test_each_use_gets_its_own_set(tmp_path):
    idx = build_index(get_opt(str(class_tree(tmp_path / "mine", SIZES))))
    monitor = labels.monitor_set(idx)
    test = set(labels.final_eval_set(idx))
    assert set(monitor) == set(labels.selection_set(idx)) == set(idx.val) and len(monitor) == 1 + 2 + 1
    assert set(labels.fewshot_pool(idx)) == set(idx.train) - set(idx.val)
    assert not set(monitor) & test and not set(labels.fewshot_pool(idx)) & set(monitor)
    assert test == set(idx.test) and len(test) == 2 + 4 + 1


def test_unlabelled_imagery_has_no_selection_or_evaluation_set(tmp_path):
    from tests.datasets.trees import write_tif
    for i in range(6):
        write_tif(tmp_path / "mine" / f"img_{i}.tif", 3, i)
    idx = build_index(get_opt(str(tmp_path / "mine")))
    assert labels.fewshot_pool(idx) == idx.train
    for ask in (labels.selection_set, labels.monitor_set, labels.final_eval_set):
        with pytest.raises(ValueError, match="needs labels"):
            ask(idx)


def test_main_cls_trains_on_the_pool_only(demo_root, tmp_path):
    """--ts 1 is the whole few-shot pool: 7 of the 8 training images per class (1 is the slice)."""
    res = tmp_path / "r.csv"
    main_cls.main(["--ds", "demo", "--data-root", str(demo_root), "--netnum", "090000", "--input_size", "16",
                   "--workers", "0", "--ckpt", str(tmp_path / "ck"), "--results", str(res), "--no-progress",
                   "--bs", "16", "--mode", "11", "--ts", "1", "--mepoch", "1"])
    with open(res, newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert int(row["n_train"]) == 6 * 7 and row["split_version"].startswith("v2-")


def test_empty_slice_or_test_split_is_a_user_error(tmp_path):
    from config.errors import UserError
    idx = build_index(get_opt(str(class_tree(tmp_path / "mine", {"A": 2, "B": 2}))))   # 1 train + 1 test each
    assert idx.val == [] and len(idx.test) == 2
    for ask in (labels.selection_set, labels.monitor_set):
        with pytest.raises(UserError, match="has none"):
            ask(idx)
    idx.test = []
    with pytest.raises(UserError, match="no test images"):
        labels.final_eval_set(idx)


# ---- issue 19: a class with no shots or no test image is refused, never scored silently ----

def _resolve(root, tmp_path, *extra):
    from engine import evaljob
    from engine.cli import base_parser
    args = evaljob.add_args(base_parser("", "cls")).parse_args(
        ["--ds", str(root), "--mode", "11", "--netnum", "000000", "--ts", "5", "--workers", "0",
         "--ckpt", str(tmp_path / "ck"), "--results", str(tmp_path / "r.csv"), "--no-progress", *extra])
    return evaljob.resolve(args)


def test_a_class_with_one_image_has_no_test_image_and_is_refused(tmp_path):
    from config.errors import UserError
    root = class_tree(tmp_path / "mine", {"Fields": 12, "Forest": 20, "Lonely": 1})
    idx = build_index(get_opt(str(root)))
    assert [s for s in idx.test if s.label == 2] == []                 # the one image went to training
    with pytest.raises(UserError, match=r"Lonely.*no image in the test split"):
        _resolve(root, tmp_path)


def test_a_split_file_putting_a_class_wholly_in_test_is_refused(tmp_path):
    from config.errors import UserError
    from datasets.index import split_csv
    root = class_tree(tmp_path / "mine", SIZES)
    opt = get_opt(str(root))
    lines = split_csv(opt, build_index(opt)).splitlines()
    moved = [(ln.replace(",train,", ",test,").replace(",val,", ",test,") if ln.startswith("Water/") else ln)
             for ln in lines]
    f = tmp_path / "split.csv"
    f.write_text("\n".join(moved) + "\n")
    with pytest.raises(UserError, match=r"Water.*no image in the few-shot pool"):
        _resolve(root, tmp_path, "--split-file", str(f))


def test_one_class_folder_is_named_as_one_not_as_none(tmp_path):
    from config.errors import UserError
    root = class_tree(tmp_path / "mine", {"Fields": 6})
    with pytest.raises(UserError, match=r"one class folder \(Fields\).*at least two"):
        _resolve(root, tmp_path)
