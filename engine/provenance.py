"""What a pretraining checkpoint saw, and the checks main_cls.py makes before using it.

A backbone's meta carries ``provenance``: the datasets it was pretrained on (pools
included) with their split versions and folders, the sorted scene keys of every
pretraining image (``<class folder>/<file stem>``, so EuroSAT's .jpg and .tif releases
of one scene share a key), their SHA-256, and the normalisation (mean, std, bands).

Before an evaluation, :func:`check_checkpoint` compares those keys with the scene
keys of the evaluation's TEST split: a pretraining run that saw any test scene
(of this dataset under another name, or inside an ``a+b`` pool) would report leaked
accuracy, so it is refused unless the user says ``--allow-overlap`` (recorded in the
row). A differing normalisation is a warning; a checkpoint without provenance (older
than this check) is accepted with a notice.
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from config.dataset_cfg import DatasetOpt
from config.errors import UserError
from datasets.index import Index, Sample, scene_key

log = logging.getLogger(__name__)


def scene_keys(samples: Iterable[Sample], roots: Iterable[Path]) -> list[str]:
    """Sorted, de-duplicated scene keys of ``samples``, each relative to the dataset folder that holds it.

    Samples from :func:`datasets.index.build_index` carry their key; others are keyed here.
    """
    roots = sorted((Path(r).resolve() for r in roots), key=lambda r: -len(r.parts))
    keys = set()
    for s in samples:
        if s.key:
            keys.add(s.key)
            continue
        p = Path(s.path).resolve()
        root = next((r for r in roots if p.is_relative_to(r)), None)
        if root is None:
            raise ValueError(f"{s.path} lies under none of the dataset folders {[str(r) for r in roots]}")
        keys.add(scene_key(p, root))
    return sorted(keys)


def keys_digest(keys: list[str]) -> str:
    return hashlib.sha256("\n".join(keys).encode("utf-8")).hexdigest()


def provenance(opt: DatasetOpt, index: Index, train: list[Sample]) -> dict[str, Any]:
    """The ``provenance`` entry of a pretraining backbone's meta (see the module docstring)."""
    parts = tuple(zip(opt.parts, index.parts)) if opt.parts else ((opt, index),)
    keys = scene_keys(train, [o.root for o, _ in parts])
    return {"datasets": [{"name": o.name, "split_version": i.split_version, "root": str(o.root), **_norm(o)}
                         for o, i in parts],
            "scene_keys_sha": keys_digest(keys), "scene_keys": keys, **_norm(opt), "bands": list(opt.bands)}


def _norm(opt: DatasetOpt) -> dict[str, list[float] | None]:
    return {"mean": [float(v) for v in opt.mean] if opt.mean is not None else None,
            "std": [float(v) for v in opt.std] if opt.std is not None else None}


def pretrain_datasets(meta: dict) -> str:
    """The datasets a checkpoint was pretrained on, ``name@split_version`` joined by ``+``."""
    prov = meta.get("provenance")
    if isinstance(prov, dict) and prov.get("datasets"):
        return "+".join(f"{d.get('name')}@{d.get('split_version')}" for d in prov["datasets"])
    return str(meta.get("dataset", ""))


def check_checkpoint(meta: dict, path: Path, opt: DatasetOpt, index: Index, allow_overlap: bool) -> None:
    """Refuse pretraining on the evaluation's test scenes; warn on another normalisation.

    Raises UserError (exit 2) on overlap unless ``allow_overlap``.
    """
    prov = meta.get("provenance")
    if not isinstance(prov, dict) or "scene_keys" not in prov:
        log.warning("checkpoint %s has no provenance (written before it was recorded): cannot check that its "
                    "pretraining images exclude the %s test split; accepted as it is", path, opt.name)
        return
    seen = set(prov["scene_keys"])
    if keys_digest(sorted(seen)) != prov.get("scene_keys_sha"):
        raise UserError(f"checkpoint {path}: its provenance scene keys do not match their recorded digest; "
                        "the file was altered, use the checkpoint as pretraining wrote it")
    test = scene_keys(index.test, [opt.root])
    shared = [k for k in test if k in seen]
    names = pretrain_datasets(meta)
    if shared:
        msg = (f"checkpoint {path} was pretrained on {len(shared)} of the {len(test)} test scenes of "
               f"--ds {opt.name} (e.g. {', '.join(shared[:3])}; pretraining data {names})")
        if not allow_overlap:
            raise UserError(msg + ": its accuracy would be inflated; pretrain on a split that excludes them, "
                            "or pass --allow-overlap to run anyway (the row records it)")
        log.warning("%s; --allow-overlap given, so the row records allow_overlap=1", msg)
    else:
        log.info("provenance: checkpoint pretrained on %s (%d scenes), none of the %d %s test scenes",
                 names, len(seen), len(test), opt.name)
    _check_normalisation(prov, path, opt)


def _check_normalisation(prov: dict, path: Path, opt: DatasetOpt) -> None:
    bands, mean, std = prov.get("bands"), prov.get("mean"), prov.get("std")
    if mean is None:       # a pool normalises each dataset with its own statistics: compare with this one's
        same = [d for d in prov.get("datasets", []) if d.get("name") == opt.name]
        mean, std = (same[0].get("mean"), same[0].get("std")) if same else (None, None)
    if bands is not None and list(bands) != list(opt.bands):
        log.warning("checkpoint %s was pretrained on bands %s, this run reads %s", path,
                    " ".join(bands), " ".join(opt.bands))
        return
    if mean is None or std is None or opt.mean is None or opt.std is None:
        return
    if len(mean) != len(opt.mean) or not (np.allclose(mean, opt.mean, rtol=1e-3, atol=1e-6)
                                          and np.allclose(std, opt.std, rtol=1e-3, atol=1e-6)):
        log.warning("checkpoint %s was pretrained with mean %s / std %s, this run normalises with mean %s / std %s: "
                    "the features see shifted inputs", path, _fmt(mean), _fmt(std), _fmt(opt.mean), _fmt(opt.std))


def _fmt(values: Iterable[float]) -> str:
    return "[" + " ".join(f"{float(v):.4g}" for v in values) + "]"
