"""scripts/band_stats.py: per-band statistics of a split, printed and saved."""
import json
import sys

import numpy as np

from datasets.folder import prepare_dataset
from datasets.options import get_opt
from datasets.reader import read_raw
from tests.conftest import REPO
from tests.datasets.trees import class_tree

sys.path.insert(0, str(REPO / "scripts"))
import band_stats  # noqa: E402

SIZES = {"Fields": 12, "Forest": 20, "Water": 7}


def test_band_stats_of_a_split_match_numpy_and_the_normalisation(tmp_path, capsys):
    root = class_tree(tmp_path / "mine", SIZES)
    out = band_stats.main(["--ds", str(root), "--split", "test", "--out", str(tmp_path / "t.json")])
    opt, idx = prepare_dataset(get_opt(str(root)))
    a = np.concatenate([read_raw(s.path).reshape(3, -1).astype(np.float64) for s in idx.test], axis=1)
    assert np.allclose(out["mean"], a.mean(1)) and np.allclose(out["std"], a.std(1))
    assert out["min"] == a.min(1).tolist() and out["max"] == a.max(1).tolist() and out["files"] == len(idx.test)
    assert json.loads((tmp_path / "t.json").read_text())["split_version"] == idx.split_version
    assert "B1" in capsys.readouterr().out
    train = band_stats.main(["--ds", str(root), "--out", str(tmp_path / "tr.json")])
    assert np.allclose(train["mean"], opt.mean) and np.allclose(train["std"], opt.std)   # what runs use
