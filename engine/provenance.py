"""What a pretraining checkpoint saw, and the checks main_cls.py makes before using it.

A backbone's meta carries ``provenance``: the datasets it was pretrained on (pools
included) with their split versions, folders and what their images show (``scenes``:
the EuroSAT .jpg and .tif releases share ``eurosat``; a folder of your own imagery is
``folder:<its path>``), the sorted scene keys of every pretraining image, the BLAKE2b
digests of their bytes (each list with its SHA-256), and the normalisation (mean, std, bands).

A scene key is ``<parent folder>/<file stem>`` of the file itself, so it does not depend on
the folder the dataset was read from: pretraining on ``--ds <data-root>`` keys EuroSAT's
files ``AnnualCrop/AnnualCrop_1`` as the evaluation does. Before an evaluation,
:func:`check_checkpoint` finds the TEST scenes of the evaluation the checkpoint saw: a test
image whose bytes it saw (the same file copied, renamed or flattened into one folder), or
whose scene key it saw in a dataset that shows the same scenes (the .tif release of a .jpg
scene). Two unrelated datasets that merely name their files alike share no bytes and no
``scenes``, so they never match. A checkpoint that saw any test scene would report leaked
accuracy and is refused unless ``--allow-overlap`` (recorded in the row).

Pretraining that continues from a checkpoint (``--resume``, ``--expnum E --cepoch N``)
records the union of what every stage saw (:func:`merge`). A differing normalisation is a
warning; a checkpoint without provenance (older than this check) is accepted with a notice.
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from config.dataset_cfg import DatasetOpt, available, option_module
from config.errors import UserError
from datasets.fingerprint import content_digests
from datasets.index import Index, Sample

log = logging.getLogger(__name__)
PROVENANCE_FORMAT = 2      # 1: keys relative to the dataset folder, no digests, no scenes


def scene_name(path: Path) -> str:
    """``<parent folder>/<file stem>``: the class folder and scene of a file, wherever the dataset lies."""
    p = Path(path)
    return f"{p.parent.name}/{p.stem}"


def _name_of(key: str) -> str:
    """A recorded key as a scene name (format-1 keys were relative to the folder: ``eurosat_ms/Forest/Forest_1``)."""
    return "/".join(key.split("/")[-2:])


def scene_keys(samples: Iterable[Sample]) -> list[str]:
    """Sorted, de-duplicated scene keys (:func:`scene_name`) of ``samples``."""
    return sorted({scene_name(s.path) for s in samples})


def keys_digest(keys: list[str]) -> str:
    return hashlib.sha256("\n".join(keys).encode("utf-8")).hexdigest()


def provenance(opt: DatasetOpt, index: Index, train: list[Sample]) -> dict[str, Any]:
    """The ``provenance`` entry of a pretraining backbone's meta (see the module docstring)."""
    parts = tuple(zip(opt.parts, index.parts)) if opt.parts else ((opt, index),)
    keys = scene_keys(train)
    digests = sorted(set(content_digests([s.path for s in train])))
    return {"format": PROVENANCE_FORMAT,
            "datasets": [{"name": o.name, "split_version": i.split_version, "root": str(o.root),
                          "scenes": o.scenes or o.name, **_norm(o)} for o, i in parts],
            "scene_keys_sha": keys_digest(keys), "scene_keys": keys,
            "scene_digests_sha": keys_digest(digests), "scene_digests": digests,
            **_norm(opt), "bands": list(opt.bands)}


def merge(earlier: dict | None, current: dict, source: str) -> dict:
    """What a run that continues from a checkpoint has seen: its own images and every earlier stage's.

    ``earlier`` is the provenance of the checkpoint it started from (``source`` names it);
    the normalisation and bands are the current run's.
    """
    if not isinstance(earlier, dict) or "scene_keys" not in earlier:
        log.warning("%s records no provenance: the overlap check of this run's checkpoints covers only the images "
                    "of this run", source)
        return {**current, "unrecorded_stage": source}
    keys = sorted({_name_of(k) for k in earlier["scene_keys"]} | set(current["scene_keys"]))
    digests = sorted(set(earlier.get("scene_digests", [])) | set(current["scene_digests"]))
    seen = {(d.get("name"), d.get("split_version"), d.get("root")) for d in current["datasets"]}
    datasets = current["datasets"] + [d for d in earlier.get("datasets", [])
                                      if (d.get("name"), d.get("split_version"), d.get("root")) not in seen]
    out = {**current, "datasets": datasets, "scene_keys": keys, "scene_keys_sha": keys_digest(keys),
           "scene_digests": digests, "scene_digests_sha": keys_digest(digests)}
    if "unrecorded_stage" in earlier:
        out["unrecorded_stage"] = earlier["unrecorded_stage"]
    return out


def _norm(opt: DatasetOpt) -> dict[str, list[float] | None]:
    return {"mean": [float(v) for v in opt.mean] if opt.mean is not None else None,
            "std": [float(v) for v in opt.std] if opt.std is not None else None}


def _scenes_of(entry: dict) -> str:
    """What a recorded dataset shows (format-1 entries: from its name, or its folder for your own imagery)."""
    if entry.get("scenes"):
        return str(entry["scenes"])
    name = str(entry.get("name", ""))
    if name in available():
        return str(getattr(option_module(name), "SCENES", name))
    root = Path(str(entry.get("root", "")))
    return f"folder:{root.resolve() if root.exists() else root}"


def pretrain_datasets(meta: dict) -> str:
    """The datasets a checkpoint was pretrained on, ``name@split_version`` joined by ``+``."""
    prov = meta.get("provenance")
    if isinstance(prov, dict) and prov.get("datasets"):
        return "+".join(f"{d.get('name')}@{d.get('split_version')}" for d in prov["datasets"])
    return str(meta.get("dataset", ""))


def seen_test_scenes(prov: dict, path: Path, opt: DatasetOpt, test: list[Sample]) -> list[str]:
    """Scene keys of the ``test`` images that the checkpoint at ``path`` (provenance ``prov``) saw."""
    names = {_name_of(k) for k in prov["scene_keys"]}
    digests = set(prov.get("scene_digests", []))
    for what, items, sha in (("scene keys", prov["scene_keys"], "scene_keys_sha"),
                             ("image digests", prov.get("scene_digests"), "scene_digests_sha")):
        if items is not None and keys_digest(sorted(set(items))) != prov.get(sha):
            raise UserError(f"checkpoint {path}: its provenance {what} do not match their recorded digest; "
                            "the file was altered, use the checkpoint as pretraining wrote it")
    by_name = (opt.scenes or opt.name) in {_scenes_of(d) for d in prov.get("datasets", [])}
    mine = content_digests([s.path for s in test]) if digests else [None] * len(test)
    return sorted({scene_name(s.path) for s, d in zip(test, mine)
                   if d in digests or (by_name and scene_name(s.path) in names)})


def check_checkpoint(meta: dict, path: Path, opt: DatasetOpt, index: Index, allow_overlap: bool) -> None:
    """Refuse pretraining on the evaluation's test scenes; warn on another normalisation.

    Raises UserError (exit 2) on overlap unless ``allow_overlap``.
    """
    prov = meta.get("provenance")
    if not isinstance(prov, dict) or "scene_keys" not in prov:
        log.warning("checkpoint %s has no provenance (written before it was recorded): cannot check that its "
                    "pretraining images exclude the %s test split; accepted as it is", path, opt.name)
        return
    shared = seen_test_scenes(prov, path, opt, list(index.test))
    n_test = len({scene_name(s.path) for s in index.test})
    names = pretrain_datasets(meta)
    if prov.get("unrecorded_stage"):
        log.warning("checkpoint %s continued from %s, which records no provenance: its images could not be "
                    "checked", path, prov["unrecorded_stage"])
    if shared:
        msg = (f"checkpoint {path} was pretrained on {len(shared)} of the {n_test} test scenes of "
               f"--ds {opt.name} (e.g. {', '.join(shared[:3])}; pretraining data {names})")
        if not allow_overlap:
            raise UserError(msg + ": its accuracy would be inflated; pretrain on a split that excludes them, "
                            "or pass --allow-overlap to run anyway (the row records it)")
        log.warning("%s; --allow-overlap given, so the row records allow_overlap=1", msg)
    else:
        log.info("provenance: checkpoint pretrained on %s (%d scenes), none of the %d %s test scenes",
                 names, len(prov["scene_keys"]), n_test, opt.name)
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
