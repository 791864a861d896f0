"""Shared fixtures: the real data beside the checkout, and a small demo dataset."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
EUROSAT_MS = SHARED / "eurosat_ms"
AID_SUBSET = SHARED / "aid_subset"

needs_eurosat = pytest.mark.skipif(not EUROSAT_MS.is_dir(),
                                   reason=f"real EuroSAT data not found at {EUROSAT_MS} (only beside the project checkout)")
needs_aid = pytest.mark.skipif(not AID_SUBSET.is_dir(),
                               reason=f"real AID subset not found at {AID_SUBSET} (only beside the project checkout)")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Split records, statistics and feature caches go to a temporary folder."""
    monkeypatch.setenv("RSSSL_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture
def one_thread():
    """One intra-op thread (tests opt in with usefixtures): on 2 shared cores more threads only spin."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory) -> Path:
    """A small demo dataset (6 classes x 10 images) as a data root holding rsssl_demo/."""
    from datasets.demo import generate_demo
    root = tmp_path_factory.mktemp("data")
    generate_demo(root / "rsssl_demo", per_class=10)
    return root


def run_script(args: list[str], cwd: Path | None = None, timeout: int = 600, env: dict | None = None):
    """Run an entry script in a subprocess with this interpreter; returns CompletedProcess."""
    import subprocess
    e = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, *args], cwd=cwd or REPO, capture_output=True, text=True,
                          timeout=timeout, env=e)
