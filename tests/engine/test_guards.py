"""Bad values through both entry scripts, in-process: one sentence each, exit 2, no traceback,
nothing written (issue 11 §3, §4 busy port, §6). The tables below are the list of cases."""
from __future__ import annotations

import csv
import socket

import pytest
import torch

import main_cls
import main_cls_ss_train
from engine import guards
from engine.results import RESULT_COLUMNS

NET = "000000"          # resnet18_small: any input size, cheapest to build


pytestmark = pytest.mark.usefixtures("one_thread")


def pre_args(root, ck, *extra):
    return ["--mode", "910", "--ds", "demo", "--data-root", str(root), "--netnum", NET, "--input_size", "16",
            "--bs", "8", "--mepoch", "1", "--workers", "0", "--ckpt", str(ck), "--no-progress", *extra]


def cls_args(root, ck, results, *extra):
    return ["--ds", "demo", "--data-root", str(root), "--netnum", NET, "--input_size", "16", "--workers", "0",
            "--ckpt", str(ck), "--results", str(results), "--no-progress", "--mode", "11", "--ts", "2",
            "--mepoch", "1", "--bs", "8", *extra]


BOTH = [   # (extra flags, what the sentence must say): the same in both scripts
    (["--bs", "0"], "--bs 0 must be a positive total batch size"),
    (["--bs", "-4"], "--bs -4 must be a positive total batch size"),
    (["--seed", "-1"], "--seed -1 must be >= 0"),
    (["--workers", "-1"], "--workers -1 must be >= 0"),
    (["--lr", "inf"], "--lr inf is not a finite number"),
    (["--lr", "nan"], "--lr nan is not a finite number"),
    (["--lr=-1e-3"], "--lr -0.001 must be a positive number"),
    (["--wd", "nan"], "--wd nan is not a finite number"),
    (["--warmup", "-1"], "--warmup -1.0 must be >= 0"),
    (["--input_size", "0"], "--input_size 0 must be a positive number"),
    (["--mp-distributed", "--nproc", "0"], "--nproc 0 must be >= 1"),
    (["--mp-distributed", "--world-size", "2", "--rank", "2"], "--rank 2 must be in 0..1"),
    (["--gpu", "7"], "--gpu 7 does not exist" if torch.cuda.is_available() else "--gpu 7: no GPU is visible"),
    (["--netnum", "070000", "--input_size", "32"], "--netnum 070000 (alexnet) needs inputs of at least 63x63"),
    (["--netnum", "050000", "--input_size", "8"], "--netnum 050000 (vgg16_bn) needs inputs of at least 32x32"),
    (["--netnum", "060000", "--input_size", "8"], "--netnum 060000 (googlenet) needs inputs of at least 15x15"),
    (["--netnum", "080000", "--input_size", "8"], "--netnum 080000 (alexnet_small) needs inputs of at least 15x15"),
    # issue 19: a name that is a path, and a size no memory holds
    (["--expnum", "../x_pretrain"], "--expnum ../x_pretrain is a name, not a path"),
    (["--expnum", "a/b"], "--expnum a/b is a name, not a path"),
    (["--expnum", ".."], "--expnum .. is a name, not a path"),
    (["--input_size", "100000"], "--input_size 100000 needs"),
]

PRETRAIN = [
    (["--sepoch", "-1"], "--sepoch -1 must be >= 0"),
    (["--feature_dim", "0"], "--feature_dim 0 must be >= 1"),
    (["--ckpt_freq", "-1"], "--ckpt_freq -1 must be >= 0"),
    (["--knn-freq", "-2"], "--knn-freq -2 must be >= 0"),
    (["--overwrite"], "--overwrite replaces the run --expnum names"),
    (["--mp-distributed", "--dist-url", "tcp://localhost"], "has no host:port"),
    (["--vis-every", "2"], "--vis-every shape the --vis figures; add --vis or drop it"),
    (["--vis", "--vis-bands", "B08,B04"], "--vis-bands B08,B04 must name three of this dataset's bands"),
    (["--vis", "--vis-every", "0"], "--vis-every 0 must be >= 1 epoch"),
    (["--mode", "930"], "--mode 930 (mae) masks the patch tokens of a Vision Transformer, and --netnum 000000 is "
                        "resnet18_small; use a ViT code such as --netnum 110000"),
    (["--mode", "96", "--netnum", "110000"], "--mode 96 (inpaint) works on the feature maps of a CNN's conv stages"),
    (["--mode", "930", "--netnum", "110000", "--input_size", "40"], "--netnum 110000 (vit tiny patch 16) cuts the "
     "input into 16x16 patches, so its side must be a multiple of 16, and 40 px is not; use --input_size 32 or 48"),
    (["--mode", "930", "--netnum", "110000", "--mask-ratio", "1.5"], "--mask-ratio 1.5 must be strictly between 0 and 1"),
    (["--mode", "931", "--netnum", "110000", "--dtype", "RGB"], "this data's bands (B04 B03 B02) form 1 group(s)"),
    (["--mode", "910", "--consistent-mask"], "--consistent-mask belongs to --mode 931"),
]

CLS = [
    (["--layer-decay", "0.75"], "--layer-decay fine-tune a Vision Transformer, and --netnum 000000 is resnet18_small"),
    (["--netnum", "110000", "--hos", "9", "--drop-path", "0.1"], "--drop-path change how a ViT is trained, and here "
                                                                 "the backbone is frozen (--hos 9): drop it"),
    (["--netnum", "110000", "--layer-decay", "1.5"], "--layer-decay 1.5 must be in (0, 1]"),
    (["--netnum", "120000", "--input_size", "20"], "use --input_size 16 or 24"),
    (["--bs", "1"], "BatchNorm needs at least 2 per process: use --bs 2 or more"),
    (["--bs", "3", "--mp-distributed", "--nproc", "2"], "use --bs 4 or more"),
]


def _fails(main, argv, message, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2, err
    assert message in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, err          # one sentence, one line
    return err


@pytest.mark.parametrize("extra,message", BOTH + PRETRAIN)
def test_pretraining_refuses(demo_root, tmp_path, capsys, extra, message):
    _fails(main_cls_ss_train.main, pre_args(demo_root, tmp_path / "ck", *extra), message, capsys)
    assert not (tmp_path / "ck").exists() or not any((tmp_path / "ck").iterdir())


@pytest.mark.parametrize("extra,message", BOTH + CLS)
def test_main_cls_refuses(demo_root, tmp_path, capsys, extra, message):
    _fails(main_cls.main, cls_args(demo_root, tmp_path / "ck", tmp_path / "r.csv", *extra), message, capsys)
    assert not (tmp_path / "r.csv").exists()
    assert not (tmp_path / "ck").exists() or not any((tmp_path / "ck").iterdir())


def test_batch_of_one_is_fine_for_a_linear_probe(demo_root, tmp_path):
    """--bs 1 is refused where BatchNorm trains (above); a linear probe keeps the backbone in eval mode."""
    from engine import evaljob
    from engine.cli import base_parser
    parser = evaljob.add_args(base_parser("", script="cls"))
    job = evaljob.resolve(parser.parse_args(cls_args(demo_root, tmp_path / "ck", tmp_path / "r.csv",
                                                      "--bs", "1", "--hos", "9")))
    assert job.expnum.endswith("_train") and job.log.exists()


def test_busy_dist_port_is_named_before_spawning(demo_root, tmp_path, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        url = f"tcp://localhost:{port}"
        _fails(main_cls_ss_train.main, pre_args(demo_root, tmp_path / "ck", "--mp-distributed", "--nproc", "2",
                                                "--bs", "8", "--dist-url", url),
               f"--dist-url port {port} is already in use", capsys)
        _fails(main_cls.main, cls_args(demo_root, tmp_path / "ck", tmp_path / "r.csv", "--mp-distributed",
                                       "--nproc", "2", "--dist-url", url), f"port {port} is already in use", capsys)


def test_a_free_or_remote_port_passes():
    import argparse
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ns = argparse.Namespace(mp_distributed=True, rank=0, dist_url=f"tcp://127.0.0.1:{port}")
    guards.check_dist_port(ns)                                            # free: passes
    ns.dist_url = "tcp://192.0.2.1:10010"                                 # another machine (TEST-NET): not ours to bind
    guards.check_dist_port(ns)


# ---- main_cls.py checks the test split, the results table and the folders BEFORE training ----

def _own_copy(demo_root, tmp_path):
    """The demo as the user's own imagery (class folders of 13-band GeoTIFFs) and its index."""
    import argparse
    import shutil

    from datasets.options import get_opt
    from datasets.folder import prepare_dataset
    root = tmp_path / "mine"
    shutil.copytree(demo_root / "rsssl_demo", root, ignore=shutil.ignore_patterns(".*"))
    ns = argparse.Namespace(ds=str(root), data_root=None, cache_dir=None, dtype=None, rgb_bands=None, input_size=16)
    _, index = prepare_dataset(get_opt(str(root), ns))
    return root, index


def _own_args(root, tmp_path, *extra):
    return ["--ds", str(root), "--netnum", NET, "--input_size", "16", "--workers", "0", "--ckpt", str(tmp_path / "ck"),
            "--results", str(tmp_path / "r.csv"), "--no-progress", "--mode", "11", "--ts", "2", "--mepoch", "1",
            "--bs", "8", *extra]


def test_broken_test_files_are_refused_before_training(demo_root, tmp_path, capsys):
    root, index = _own_copy(demo_root, tmp_path)
    empty, garbage = index.test[0].path, index.test[-1].path
    empty.write_bytes(b"")
    _fails(main_cls.main, _own_args(root, tmp_path), f"{empty} is an empty file", capsys)
    index.test[0].path.unlink()
    garbage.write_bytes(b"not a tiff at all" * 10)
    _fails(main_cls.main, _own_args(root, tmp_path), f"{garbage} is not a readable raster", capsys)
    assert not (tmp_path / "ck").exists() or not any((tmp_path / "ck").iterdir())


def test_bad_results_tables_are_refused_before_training(demo_root, tmp_path, capsys):
    res = tmp_path / "r.csv"
    res.mkdir()
    _fails(main_cls.main, cls_args(demo_root, tmp_path / "ck", res), f"--results {res} is a folder", capsys)
    res.rmdir()
    res.write_text("name,score\nA,1\n", encoding="utf-8")
    _fails(main_cls.main, cls_args(demo_root, tmp_path / "ck", res), "is not a results table of this project", capsys)
    res.write_bytes(",".join(RESULT_COLUMNS).encode() + b"\n\xff\xfe\n")
    _fails(main_cls.main, cls_args(demo_root, tmp_path / "ck", res), "is not UTF-8 text (byte", capsys)
    assert not (tmp_path / "ck").exists() or not any((tmp_path / "ck").iterdir())
    blocker = tmp_path / "file"
    blocker.write_text("x")
    _fails(main_cls.main, cls_args(demo_root, tmp_path / "ck", blocker / "r.csv"), f"{blocker} is a file, not a folder",
           capsys)
    _fails(main_cls.main, cls_args(demo_root, blocker / "ck", tmp_path / "ok.csv"), f"{blocker} is a file, not a folder",
           capsys)


def test_an_empty_results_file_or_our_header_is_accepted(tmp_path):
    res = tmp_path / "r.csv"
    res.write_text("")
    guards.check_results_table(res)
    with open(res, "w", newline="") as f:
        csv.writer(f).writerow(RESULT_COLUMNS)
    guards.check_results_table(res)
    res.write_bytes(b"\xef\xbb\xbf" + res.read_bytes())    # saved by a spreadsheet: a byte-order mark (issue 19)
    guards.check_results_table(res)


def test_test_images_with_nodata_pixels_are_refused_before_training(demo_root, tmp_path, capsys):
    """Issue 19: a test GeoTIFF whose pixels sit at its nodata tag fails in one sentence BEFORE the fit,
    not when the test split is read after it."""
    from osgeo import gdal

    from datasets.reader import read_raw
    root, index = _own_copy(demo_root, tmp_path)
    bad = index.test[-1].path
    ds = gdal.Open(str(bad), gdal.GA_Update)
    value = int(read_raw(bad)[0, 0, 0])
    ds.GetRasterBand(1).SetNoDataValue(value)
    ds = None
    _fails(main_cls.main, _own_args(root, tmp_path, "--mepoch", "50"), f"{bad} has", capsys)
    assert not (tmp_path / "ck").exists() or not any((tmp_path / "ck").iterdir())


def test_a_split_file_without_test_rows_says_so(demo_root, tmp_path, capsys):
    from datasets.index import split_csv
    from datasets.options import get_opt
    root, index = _own_copy(demo_root, tmp_path)
    no_test = tmp_path / "no_test.csv"
    no_test.write_text(split_csv(get_opt(str(root)), index).replace(",test,", ",train,"))
    err = _fails(main_cls.main, _own_args(root, tmp_path, "--split-file", str(no_test)), "has no test rows", capsys)
    assert "2 images" not in err and str(no_test) in err
