"""Frozen features for the probes, extracted once per sweep and cached by what they were made from.

Cache: ``<cache>/<dataset>/features/<key>.npz``. The key names everything the features depend
on: the checkpoint's content (SHA-256), or ImageNet weights, or the seed of a random
initialisation; the netnum; the dataset folder, its split version and file list (paths and
labels) with every file's size, modification and change time (images rewritten under the same
names miss the cache); band selection, input size and normalisation. Features that are NaN or
infinite are refused, naming the images (or the weights, when every image has them). Each file stores the image paths with the
features, and features are looked up by path, never by position, so a changed file list can
neither hit a stale entry nor pair an image with another image's features. Files are written
under a unique temporary name and renamed into place (concurrent runs).
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from config.atomic import atomic_write
from config.errors import UserError
from datasets.fingerprint import file_sha256, files_fingerprint
from datasets.folder import make_dataset
from datasets.index import Sample
from datasets.plans import plain
from engine.classifier import build_classifier, reestimate_bn
from engine.evaljob import EVAL_BATCH, EvalJob
from engine.knn import extract_indexed
from engine.runtime import Runtime, reseed

log = logging.getLogger(__name__)

FEATURE_FORMAT = 3         # bump when what a cached row means changes (3: files keyed by content too)


@dataclass
class FeatureTable:
    """Features of images, addressed by image path."""

    paths: list[str]
    feats: np.ndarray           # (n, d) float32, row i belongs to paths[i]

    def __post_init__(self) -> None:
        self.row = {p: i for i, p in enumerate(self.paths)}
        if len(self.row) != len(self.paths) or len(self.paths) != len(self.feats):
            raise ValueError("a feature table needs one row per distinct path")

    def covers(self, samples: Sequence[Sample]) -> bool:
        return all(s.path.as_posix() in self.row for s in samples)

    def take(self, samples: Sequence[Sample]) -> tuple[np.ndarray, np.ndarray]:
        """Features and labels of ``samples``, in their order."""
        idx = [self.row[s.path.as_posix()] for s in samples]
        return self.feats[idx], np.array([s.label for s in samples], dtype=np.int64)


def samples_digest(samples: Sequence[Sample]) -> str:
    """SHA-256 of the sorted (path, label) pairs: changes whenever the file list or a label does."""
    h = hashlib.sha256()
    for p, y in sorted((s.path.as_posix(), s.label) for s in samples):
        h.update(f"{p}\t{y}\n".encode())
    return h.hexdigest()


def feature_identity(job: EvalJob) -> dict:
    """Everything the cached features depend on (the cache key is its digest)."""
    opt, index = job.opt, job.index
    if job.init is not None:
        weights = f"checkpoint sha256:{file_sha256(job.init)}"
    elif job.imagenet and job.weights is not None:
        weights = f"imagenet file sha256:{file_sha256(job.weights)}"
    elif job.imagenet:
        import torchvision
        weights = f"imagenet torchvision {torchvision.__version__}"
    else:
        weights = f"random init seed {init_seed(job)} torch {torch.__version__}"
    return {
        "format": FEATURE_FORMAT, "netnum": job.netnum, "weights": weights,
        "input_adapter": "baseline-input-v1",       # how ImageNet / SSL4EO weights see our bands
        "dataset": opt.name, "root": str(Path(opt.root).resolve()),
        "split_version": str(getattr(index, "split_version", "")),
        "train_files": samples_digest(index.train), "test_files": samples_digest(index.test),
        "files_fingerprint": files_fingerprint(s.path for s in list(index.train) + list(index.test)),
        "bands": list(opt.bands), "input_size": int(opt.input_size),
        "bn_stats": job.bn_stats, "amp": bool(job.procs.amp),        # bf16 features are other features
        "rgb_index": list(opt.rgb_index) if opt.rgb_index is not None else None,   # where ImageNet's filters go
        "mean": [round(float(v), 6) for v in np.asarray(opt.mean).ravel()],
        "std": [round(float(v), 6) for v in np.asarray(opt.std).ravel()],
        # ViTs: the token summary the probe reads (cls / avg), named by the checkpoint's meta or the method
        **({"vit_feature": job.init_meta["vit_feature"]} if job.init_meta.get("vit_feature") else {}),
    }


def weights_source(job: EvalJob) -> str:
    """Where the backbone's weights came from, for a message."""
    if job.init is not None:
        return f"checkpoint {job.init}"
    if job.weights is not None:
        return f"--weights {job.weights}"
    return "ImageNet weights" if job.imagenet else f"random init, seed {init_seed(job)}"


def check_finite(feats: np.ndarray, samples: Sequence[Sample], source: str) -> None:
    """NaN or infinite features would be scored as class 0: refused, naming the images (or the weights)."""
    ok = np.isfinite(feats).all(axis=1)
    if ok.all():
        return
    if not ok.any():
        raise UserError(f"the backbone ({source}) gives NaN or infinite features for every image: its weights are "
                        "damaged or overflow; use another checkpoint")
    bad = [samples[i].path.as_posix() for i in np.flatnonzero(~ok)]
    raise UserError(f"the backbone ({source}) gives NaN or infinite features for {len(bad)} of the {len(samples)} "
                    f"images (e.g. {', '.join(bad[:3])}): their pixel values overflow it; check or remove those files")


def load_cache(path: Path, identity: dict, samples: Sequence[Sample]) -> FeatureTable | None:
    """The cached table at ``path`` if it was made for ``identity`` and covers every sample."""
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            stored = json.loads(str(z["identity"]))
            table = FeatureTable([str(p) for p in z["paths"]], z["feats"])
    except (OSError, ValueError, KeyError) as err:
        log.warning("ignoring unreadable feature cache %s (%s)", path, err)
        return None
    if stored != identity or not table.covers(samples):
        log.warning("feature cache %s was made for other inputs; extracting again", path)
        return None
    return table


def save_cache(path: Path, identity: dict, table: FeatureTable) -> None:
    """Write under a unique temporary name, then rename: concurrent runs never clash."""
    def write(f) -> None:
        np.savez(f, identity=np.array(json.dumps(identity, sort_keys=True)),
                 paths=np.array(table.paths), feats=table.feats)
    try:
        atomic_write(path, write)
    except OSError as err:
        log.warning("could not cache features in %s (%s)", path, err)


def probe_features(job: EvalJob, rt: Runtime) -> FeatureTable:
    """Frozen features of the training split (pool and validation slice) and the test split, cached."""
    opt = job.opt
    samples = list(job.index.train) + list(job.index.test)
    identity = feature_identity(job)
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:24]
    path = opt.cache_dir / opt.cache_key / "features" / f"{key}.npz"
    table = load_cache(path, identity, samples)
    if table is not None:
        log.info("frozen features from cache %s", path)
        return table
    t0 = time.time()
    reseed(init_seed(job), 0, 0)
    model = build_classifier(job).to(rt.device)
    if job.bn_stats == "reestimated":
        reestimate_bn(model.backbone, job.index.train, opt, rt.device, job.workers,
                      channels_last=rt.channels_last)
    ds = make_dataset(opt, samples, lambda o: plain(o.input_size, o.mean, o.std))
    loader = DataLoader(ds, batch_size=EVAL_BATCH, num_workers=job.workers, shuffle=False)
    feats, _, idx = extract_indexed(model.backbone, loader, rt.device, rt.amp, rt.channels_last)
    if sorted(idx.tolist()) != list(range(len(samples))):
        raise RuntimeError(f"feature extraction covered {len(set(idx.tolist()))} of {len(samples)} images")
    ordered = [samples[i] for i in idx.tolist()]
    check_finite(feats.numpy(), ordered, weights_source(job))
    table = FeatureTable([s.path.as_posix() for s in ordered], feats.numpy())
    log.info("frozen features of %d images (%d-d) in %.1f s; cached in %s", len(samples), table.feats.shape[1],
             time.time() - t0, path)
    save_cache(path, identity, table)
    return table


def init_seed(job: EvalJob, draw: int | None = None) -> int:
    """The seed of a random initialisation: ``--init-seed``, else the draw's (a probe sweep: the first draw's)."""
    return job.init_seed if job.init_seed is not None else (job.seeds[0] if draw is None else draw)

