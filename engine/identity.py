"""What makes a result row what it is: the run identity, derived from main_cls.py's parser.

Every flag of main_cls.py changes the number a row reports unless it is listed in
:data:`NOT_IDENTITY`, with the reason it cannot. So a flag added tomorrow is part of the
identity by default: :func:`flag_columns` maps it to the row column that records it
(:data:`FLAG_COLUMNS` where the column has another name, else its own name), the row is
filled from the resolved value (:func:`flag_values`), and ``append_result`` refuses a row
whose column does not exist, so the flag cannot be forgotten. Settings that come from a
checkpoint rather than a flag (how the backbone was pretrained) are read from its meta
(:func:`pretrain_values`, from ``meta["args"]``); a new one is a line in :data:`PRETRAIN_ARGS`
and a column.

scripts/summarize.py groups rows by :func:`identity_columns`: every column of the table
except the outcomes (:data:`OUTCOME_COLUMNS`). A column someone adds to the table is
therefore part of the identity without a change here.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
from typing import Any, Mapping

from engine.results import RESULT_COLUMNS

# main_cls.py flags that cannot change a row's numbers, and why; every other flag is identity
NOT_IDENTITY: dict[str, str] = {
    "help": "prints the usage", "list_codes": "prints the code tables and exits",
    "data_root": "where the files lie; which files and split they are is split_version",
    "cache_dir": "where split records and caches go; the caches are keyed by content",
    "ckpt": "where checkpoints lie; which file the weights came from is init_sha",
    "results": "which table the row is appended to",
    "workers": "how many processes decode: like the seed, it only picks which random numbers augmentation "
               "draws, not the configuration",
    "pin_memory": "decodes each image once into memory: the same arrays",
    "vis": "writes figures", "progress": "draws progress bars",
    "gpu": "picks the device", "rank": "this node's number", "dist_url": "the rendezvous address",
    "dist_backend": "the transport between processes",
    "channels_last": "a memory layout: the same arithmetic in another order",
    "nseeds": "how many draws are made: each row records its own seed",
}
# flags whose value a column of another name records
FLAG_COLUMNS: dict[str, str] = {
    "ts_list": "ts", "expnum": "pretrain_expnum", "cepoch": "pretrain_epoch", "encoder_cp": "init_sha",
    "weights": "init_sha", "ptcp": "pretext", "mepoch": "epochs", "knn_k": "probe_param", "knn_vote": "probe_param",
    "split_file": "split_version", "mp_distributed": "processes", "nproc": "processes", "world_size": "processes",
    "resume": "resumed", "sepoch": "resumed", "init_seed": "pretrain_seed",
}
# flags that matter only when a classifier is trained (empty in probe and --mode 2x/3x rows)
TRAINING_FLAGS = ("bs", "optimizer", "lr", "wd", "momentum", "beta2", "lars_eta", "lars_clip", "layer_decay",
                  "drop_path", "lr_policy", "warmup", "milestones", "lr_decay", "loss", "sync_bn")
# pretraining settings a row takes from its checkpoint's meta["args"]: column -> key
PRETRAIN_ARGS: dict[str, str] = {
    "pretrain_optimizer": "optimizer", "pretrain_lr": "lr", "pretrain_bs": "bs", "pretrain_epochs": "mepoch",
    "pretrain_seed": "seed", "pretrain_recipe": "recipe", "pretrain_lr_selection": "lr_selection",
}
# pretraining flags that do not make another configuration: the seed (a level of one run in a summary),
# names, paths, processes, memory layout, monitoring and figures; every other resolved flag of the
# checkpoint's meta["args"] enters ``pretrain_config``, so two configurations never pool in a summary
PRETRAIN_NOT_CONFIG = frozenset({
    "seed", "expnum", "ckpt", "data_root", "cache_dir", "workers", "progress", "resume", "dry_run", "overwrite",
    "lr_selection", "knn_freq", "ckpt_freq", "vis", "vis_every", "vis_bands", "pin_memory", "cache_size", "gpu",
    "rank", "dist_url", "dist_backend", "channels_last", "list_codes", "help"})
# what a row measured (and when): everything else in it says what was run
OUTCOME_COLUMNS = ("time", "seed", "probe_param", "selection_labels", "OA", "AA", "kappa", "macro_F1", "n_train",
                   "n_test", "seconds", "per_class", "predictions")


def flag_columns(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Every identity flag of ``parser`` (its dest) -> the column that records it."""
    return {a.dest: FLAG_COLUMNS.get(a.dest, a.dest) for a in parser._actions
            if a.dest not in NOT_IDENTITY and a.dest != argparse.SUPPRESS}


def identity_columns() -> tuple[str, ...]:
    """The columns that name a run: the table's columns minus the outcomes, logreg's per-draw C replaced by the
    kind of probe parameter (``probe_kind``: C, or kNN's ``k=20,weighted``), the train scale last."""
    cols = [("probe_kind" if c == "probe_param" else c) for c in RESULT_COLUMNS
            if c not in OUTCOME_COLUMNS or c == "probe_param"]
    cols.remove("ts")
    return (*cols, "ts")


def cell(value: Any) -> Any:
    """A resolved flag value as a table cell: booleans 0/1, lists comma-joined, None empty."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (list, tuple)):
        return ",".join(str(cell(v)) for v in value)
    if isinstance(value, float) and math.isnan(value):
        return ""
    return value


def flag_values(args: argparse.Namespace, columns: Mapping[str, str]) -> dict[str, Any]:
    """The resolved value of every identity flag that has a column of its own name (the mapped ones are
    written by the report from what they resolved to)."""
    return {dest: cell(getattr(args, dest, None)) for dest, col in columns.items() if col == dest}


def pretrain_values(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The pretraining a backbone checkpoint records (a 2x/3x classifier keeps its backbone's under
    ``pretrain_meta``): code version, steps and the :data:`PRETRAIN_ARGS` settings; empty where unknown."""
    meta = meta.get("pretrain_meta", meta) if isinstance(meta.get("pretrain_meta"), Mapping) else meta
    args = meta.get("args") if isinstance(meta.get("args"), Mapping) else {}
    out = {"pretrain_code_version": meta.get("code_version", ""), "pretrain_steps": meta.get("steps", ""),
           "pretrain_config": pretrain_config(args)}
    out.update({col: cell(args.get(key)) for col, key in PRETRAIN_ARGS.items()})
    return out


def pretrain_config(args: Mapping[str, Any]) -> str:
    """A digest of every pretraining setting but those in :data:`PRETRAIN_NOT_CONFIG` (12 hex digits; empty
    without settings): one value per configuration, whatever its seed, so a summary pools the pretraining
    seeds of one configuration and never two configurations (e.g. another --tau or --hidden-dim)."""
    kept = {k: v for k, v in sorted(args.items()) if k not in PRETRAIN_NOT_CONFIG}
    if not kept:
        return ""
    return hashlib.sha1(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:12]
