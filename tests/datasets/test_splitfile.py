"""--export-split / --split-file: our CSV round trip, Neumann et al. lists, and mismatches."""
import argparse

import pytest

from config.category import EUROSAT
from config.errors import UserError
from datasets.__main__ import main as datasets_main
from datasets.index import build_index, few_shot
from datasets.options import get_opt
from tests.conftest import run_script
from tests.datasets.trees import class_tree, eurosat_tree

SIZES = {"Fields": 12, "Forest": 20, "Water": 7}


def ns(root, split_file=None):
    return argparse.Namespace(data_root=str(root), split_file=None if split_file is None else str(split_file))


def exported(tmp_path):
    """A user's class tree and its split exported as good.csv."""
    root = class_tree(tmp_path / "mine", SIZES)
    good = tmp_path / "good.csv"
    datasets_main(["--ds", str(root), "--export-split", str(good)])
    return root, good


def splits_of(idx):
    return {n: sorted(s.key for s in idx.split(n)) for n in ("train", "val", "pool", "test")}


def test_export_then_import_gives_the_same_split(tmp_path, capsys):
    root = class_tree(tmp_path / "mine", SIZES)
    out = tmp_path / "shared" / "mine-split.csv"
    datasets_main(["--ds", str(root), "--export-split", str(out)])
    assert f"written to {out}" in capsys.readouterr().out
    lines = out.read_text().splitlines()
    assert lines[0] == "path,class,split,split_version" and len(lines) == 1 + sum(SIZES.values())
    assert {line.split(",")[2] for line in lines[1:]} == {"train", "val", "test"}
    assert "Forest/forest_000.tif,Forest," in "\n".join(lines)
    built = build_index(get_opt(str(root)))
    imported = build_index(get_opt(str(root), ns(tmp_path, out)))
    assert splits_of(imported) == splits_of(built)
    # the same split has the same digest; the prefix says it came from a file
    assert built.split_version.startswith("v2-") and imported.split_version == "file-" + built.split_version[3:]
    assert [s.path for s in few_shot(imported.pool, 3, 1)] == [s.path for s in few_shot(built.pool, 3, 1)]


def test_an_exported_jpg_split_applies_to_the_tif_release(tmp_path):
    eurosat_tree(tmp_path, 6, ".jpg")
    eurosat_tree(tmp_path, 6, ".tif")
    csv_file = tmp_path / "eurorgb.csv"
    datasets_main(["--ds", "eurorgb", "--data-root", str(tmp_path), "--export-split", str(csv_file)])
    ms = build_index(get_opt("euroms", ns(tmp_path, csv_file)))
    rgb = build_index(get_opt("eurorgb", ns(tmp_path)))
    assert splits_of(ms) == splits_of(rgb) and ms.train[0].path.suffix == ".tif"


def neumann_lists(folder, per_class, prefix="eurosat", n_val=1, n_test=2):
    """TorchGeo-style lists: bare .jpg file names, per class the first n_val to val, the last n_test to test."""
    folder.mkdir(parents=True, exist_ok=True)
    lists = {"train": [], "val": [], "test": []}
    for c in EUROSAT:
        for n in range(1, per_class + 1):
            split = "val" if n <= n_val else "test" if n > per_class - n_test else "train"
            lists[split].append(f"{c}_{n}.jpg")
    for split, names in lists.items():
        (folder / f"{prefix}-{split}.txt").write_text("\n".join(names) + "\n")
    return lists


def test_neumann_lists_match_the_tif_release_by_scene(tmp_path):
    eurosat_tree(tmp_path, 6, ".tif")
    lists = neumann_lists(tmp_path / "splits", 6)
    (tmp_path / "splits" / "resisc45-train.txt").write_text("airplane_001.jpg\n")   # other datasets' lists may sit beside
    idx = build_index(get_opt("euroms", ns(tmp_path, tmp_path / "splits")))
    stem = lambda items: sorted(s.path.stem + ".jpg" for s in items)  # noqa: E731
    assert stem(idx.val) == sorted(lists["val"]) and stem(idx.test) == sorted(lists["test"])
    assert stem(idx.train) == sorted(lists["train"] + lists["val"])   # their train + val
    assert stem(idx.pool) == sorted(lists["train"]) and idx.split_version.startswith("file-")
    opt = get_opt("euroms", ns(tmp_path))
    record = opt.cache_dir / opt.cache_key / f"split_{idx.split_version}.csv"    # resolved to the .tif files
    assert f"AnnualCrop/AnnualCrop_1.tif,AnnualCrop,val,{idx.split_version}" in record.read_text().splitlines()


def test_neumann_lists_that_do_not_match_the_files(tmp_path):
    eurosat_tree(tmp_path, 6, ".tif")
    folder = tmp_path / "splits"
    neumann_lists(folder, 6)
    test_list = folder / "eurosat-test.txt"
    test_list.write_text(test_list.read_text() + "AnnualCrop_999.jpg\nForest_998.jpg\n")
    with pytest.raises(UserError, match=r"2 listed file\(s\) are not on disk \(AnnualCrop_999.jpg, Forest_998.jpg\)"):
        build_index(get_opt("euroms", ns(tmp_path, folder)))
    neumann_lists(folder, 6)
    train_list = folder / "eurosat-train.txt"
    train_list.write_text("\n".join(train_list.read_text().splitlines()[1:]) + "\n")     # drops AnnualCrop_2
    with pytest.raises(UserError, match=r"1 file\(s\) on disk are not listed \(AnnualCrop/AnnualCrop_2\)"):
        build_index(get_opt("euroms", ns(tmp_path, folder)))
    # through the command line: one sentence on stderr, exit 2
    r = run_script(["-m", "datasets", "--ds", "euroms", "--data-root", str(tmp_path), "--split-file", str(folder)])
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "not listed" in r.stderr


def test_split_file_folder_without_lists(tmp_path):
    eurosat_tree(tmp_path, 3, ".tif")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="has no eurosat-train.txt \\(found no lists\\)"):
        build_index(get_opt("euroms", ns(tmp_path, tmp_path / "empty")))
    (tmp_path / "empty" / "uc_merced-train.txt").write_text("agricultural00.tif\n")   # another dataset's lists
    with pytest.raises(UserError, match="has no eurosat-train.txt \\(found uc_merced-train.txt\\)"):
        build_index(get_opt("euroms", ns(tmp_path, tmp_path / "empty")))
    with pytest.raises(UserError, match="does not exist"):
        get_opt("euroms", ns(tmp_path, tmp_path / "nope.csv"))


@pytest.mark.parametrize("row,message", [
    ("Fields/fields_000.tif,Fields,training", "split 'training' is not one of train, val, test"),
    ("Fields/fields_000.tif,Forest,train", "labelled 'Forest' but lies in class folder 'Fields'"),
    ("../Fields/fields_000.tif,Fields,train", "must be a path relative to the dataset folder"),
])
def test_bad_rows_are_named(tmp_path, row, message):
    root, good = exported(tmp_path)
    lines = [line for line in good.read_text().splitlines() if not line.startswith("Fields/fields_000.tif")]
    bad = tmp_path / "bad.csv"
    bad.write_text("\n".join(lines + [row]) + "\n")
    with pytest.raises(UserError, match=message):
        build_index(get_opt(str(root), ns(tmp_path, bad)))


def test_conflicting_rows_and_missing_header(tmp_path):
    root, good = exported(tmp_path)
    dup = tmp_path / "dup.csv"
    dup.write_text(good.read_text() + "Fields/fields_000.jpg,Fields,test\nFields/fields_000.jpg,Fields,train\n")
    with pytest.raises(UserError, match="listed in both"):
        build_index(get_opt(str(root), ns(tmp_path, dup)))
    headless = tmp_path / "headless.csv"
    headless.write_text("\n".join(good.read_text().splitlines()[1:]))
    with pytest.raises(UserError, match="must start with the header path,class,split"):
        build_index(get_opt(str(root), ns(tmp_path, headless)))


def test_a_split_without_val_rows_gets_the_hash_slice_of_its_train_rows(tmp_path):
    root, good = exported(tmp_path)
    no_val = tmp_path / "train_test.csv"
    no_val.write_text(good.read_text().replace(",val\n", ",train\n"))
    idx = build_index(get_opt(str(root), ns(tmp_path, no_val)))
    built = build_index(get_opt(str(root)))
    assert splits_of(idx) == splits_of(built)           # same train/test, so the rule cuts the same slice


def test_entry_scripts_take_split_file(tmp_path):
    """--split-file reaches the index of both entry scripts (it is not accepted and ignored)."""
    import main_cls  # noqa: F401  (the scripts build their parsers from engine.cli.base_parser)
    from engine import evaljob, plan, pretrain_flags
    from engine.cli import base_parser
    root, good = exported(tmp_path)
    common = ["--ds", str(root), "--split-file", str(good), "--netnum", "090000", "--workers", "0",
              "--ckpt", str(tmp_path / "ck"), "--input_size", "8", "--bs", "8"]
    pre = pretrain_flags.add_args(base_parser("", "pretrain")).parse_args(common + ["--mode", "910", "--ts", "1"])
    cls = evaljob.add_args(base_parser("", "cls")).parse_args(common + ["--mode", "11", "--ts", "2",
                                                                          "--results", str(tmp_path / "r.csv")])
    assert plan.resolve(pre).index.split_version.startswith("file-")
    assert evaljob.resolve(cls).index.split_version.startswith("file-")


def test_lists_for_a_dataset_without_published_ones(tmp_path):
    """AID or your own tree: the folder's only <name>-train/-test lists; no val list -> the rule's slice."""
    root = class_tree(tmp_path / "mine", SIZES)
    built = build_index(get_opt(str(root)))
    folder = tmp_path / "lists"
    folder.mkdir()
    (folder / "mine-train.txt").write_text("\n".join(s.path.name for s in built.train) + "\n")
    (folder / "mine-test.txt").write_text("\n".join(s.path.name for s in built.test) + "\n")
    idx = build_index(get_opt(str(root), ns(tmp_path, folder)))
    assert splits_of(idx) == splits_of(built) and idx.split_version == "file-" + built.split_version[3:]
    (folder / "other-train.txt").write_text("x.tif\n")
    with pytest.raises(UserError, match="several sets of split lists"):
        build_index(get_opt(str(root), ns(tmp_path, folder)))


# ---- issue 19: the file a plain CSV, never written over another file, read as spreadsheets save it ----

def test_the_exported_split_is_a_plain_csv_any_reader_takes(tmp_path):
    """No comment line: pandas and csv.DictReader see the header path,class,split (+ split_version, the provenance)."""
    import csv

    import pandas as pd
    root, good = exported(tmp_path)
    built = build_index(get_opt(str(root)))
    table = pd.read_csv(good, dtype=str)
    assert list(table.columns) == ["path", "class", "split", "split_version"] and len(table) == sum(SIZES.values())
    assert set(table["split_version"]) == {built.split_version}
    with open(good, newline="") as f:
        rows = list(csv.DictReader(f))
    assert {r["split"] for r in rows} == {"train", "val", "test"} and rows[0]["path"].endswith(".tif")


def test_an_older_split_file_with_its_comment_line_still_reads(tmp_path):
    root, good = exported(tmp_path)
    old = tmp_path / "old.csv"
    body = [",".join(line.split(",")[:3]) for line in good.read_text().splitlines()]
    old.write_text("# rs-ssl split of mine: split_version v2-x; paths relative to the dataset folder\n"
                   + "\n".join(body) + "\n")
    built = build_index(get_opt(str(root)))
    assert splits_of(build_index(get_opt(str(root), ns(tmp_path, old)))) == splits_of(built)


def test_a_split_file_saved_with_a_bom_reads(tmp_path):
    root, good = exported(tmp_path)
    bom = tmp_path / "bom.csv"
    bom.write_bytes(b"\xef\xbb\xbf" + good.read_bytes())
    built = build_index(get_opt(str(root)))
    assert splits_of(build_index(get_opt(str(root), ns(tmp_path, bom)))) == splits_of(built)


def test_export_never_writes_over_an_existing_file_unless_overwrite(tmp_path, capsys):
    root = class_tree(tmp_path / "mine", SIZES)
    table = tmp_path / "results.csv"
    table.write_text("time,code_version,ds,ts,seed,OA\n2026-01-01,abc,x,5,0,50\n")
    before = table.read_bytes()
    with pytest.raises(SystemExit) as e:
        datasets_main(["--ds", str(root), "--export-split", str(table)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"--export-split {table} exists" in err and "--overwrite" in err
    assert "Traceback" not in err and table.read_bytes() == before
    datasets_main(["--ds", str(root), "--export-split", str(table), "--overwrite"])
    assert table.read_text().startswith("path,class,split")
    with pytest.raises(SystemExit) as e:
        datasets_main(["--ds", str(root), "--overwrite"])
    assert e.value.code == 2 and "--overwrite replaces the --export-split file" in capsys.readouterr().err
