"""``--split-file``: use a published or shared split instead of this project's rule.

Two formats:

* our CSV (``python -m datasets --ds NAME --export-split FILE.csv`` writes it): columns
  ``path,class,split``, ``split`` one of train / val / test, paths relative to the dataset
  folder, and any other columns (the export adds ``split_version``, its provenance), read by
  name; lines starting with ``#`` are comments (older exports began with one), and a
  byte-order mark (a spreadsheet's save) is ignored. ``class`` may be empty for unlabelled
  imagery; when given it must be the file's class folder.
* a folder with the file-name lists of Neumann et al. (2019, "In-domain representation
  learning for remote sensing"), the split TorchGeo uses: ``<prefix>-train.txt``,
  ``<prefix>-val.txt``, ``<prefix>-test.txt`` with one file name per line (e.g.
  ``AnnualCrop_1.jpg``); the prefix is the option module's ``SPLIT_LISTS`` (``eurosat``,
  ``uc_merced``, ``resisc45``), or the folder's only set of lists. Their validation list
  becomes the validation slice, and the training split is their train + val.

Entries are matched by scene key, never by extension, so the lists published for the
EuroSAT .jpg release work for the 13-band .tif release. An entry without a folder
(``AnnualCrop_1.jpg``) is matched by file stem across the class folders. The split must
cover exactly the files on disk: files listed but missing, or present but not listed, are
an error that names a few of them and the counts.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path, PurePosixPath

from config.dataset_cfg import DatasetOpt
from config.errors import UserError

SPLITS = ("train", "val", "test")     # the three sides of every split, in this order


def _few(items: list[str], n: int = 3) -> str:
    return ", ".join(items[:n]) + (", ..." if len(items) > n else "")


def _list_files(folder: Path, prefix: str) -> dict[str, Path]:
    """The train/val/test lists in ``folder``: ``<prefix>-<split>.txt`` (the dataset's published
    lists), or for a dataset without published lists the folder's only ``<name>-train.txt`` set."""
    found = sorted(p.name[: -len("-train.txt")] for p in folder.glob("*-train.txt"))
    if prefix:
        if prefix not in found:
            raise UserError(f"--split-file {folder} has no {prefix}-train.txt (found "
                            f"{_few([f + '-train.txt' for f in found]) or 'no lists'}); put the "
                            f"{prefix}-train.txt / -val.txt / -test.txt lists of Neumann et al. there")
        chosen = prefix
    elif len(found) == 1:
        chosen = found[0]
    else:
        raise UserError(f"--split-file {folder} holds {'no' if not found else 'several sets of'} split lists "
                        f"({_few([f + '-train.txt' for f in found]) or 'none'}); this dataset has no published "
                        "lists, so the folder must hold exactly one <name>-train.txt / -val.txt / -test.txt set")
    lists = {sp: folder / f"{chosen}-{sp}.txt" for sp in SPLITS if (folder / f"{chosen}-{sp}.txt").is_file()}
    if "test" not in lists:
        raise UserError(f"--split-file {folder} has {chosen}-train.txt but no {chosen}-test.txt; add the test list")
    return lists


def _read_lists(folder: Path, prefix: str) -> list[tuple[str, str, str, str]]:
    """(where, path, class, split) entries of a folder of Neumann-style lists."""
    out = []
    for sp, f in _list_files(folder, prefix).items():
        for n, line in enumerate(f.read_text(encoding="utf-8-sig", errors="replace").splitlines(), 1):
            name = line.strip()
            if name and not name.startswith("#"):
                out.append((f"{f.name}:{n}", name, "", sp))
    return out


def _read_csv(path: Path) -> list[tuple[str, str, str, str]]:
    """(where, path, class, split) entries of our ``path,class,split`` CSV."""
    lines = [(n, line) for n, line in enumerate(path.read_text(encoding="utf-8-sig", errors="replace").splitlines(), 1)
             if line.strip() and not line.lstrip().startswith("#")]
    if not lines:
        raise UserError(f"--split-file {path} is empty; give a path,class,split CSV")
    rows = list(csv.reader(io.StringIO("\n".join(line for _, line in lines))))
    header = [h.strip().lower() for h in rows[0]]
    if "path" not in header or "split" not in header:
        raise UserError(f"--split-file {path} must start with the header path,class,split "
                        f"(found {','.join(rows[0])}); write it with python -m datasets --export-split")
    ip, isp = header.index("path"), header.index("split")
    ic = header.index("class") if "class" in header else None
    out = []
    for (n, _), row in zip(lines[1:], rows[1:]):
        if len(row) <= max(ip, isp, ic or 0):
            raise UserError(f"--split-file {path} line {n} has {len(row)} field(s); every row needs path,class,split")
        out.append((f"{path.name}:{n}", row[ip].strip(), row[ic].strip() if ic is not None else "", row[isp].strip()))
    return out


def read_split_file(path: Path, opt: DatasetOpt, disk: dict[str, str]) -> dict[str, str]:
    """Scene key -> ``train`` / ``val`` / ``test`` for every file on disk.

    ``disk`` maps the scene keys of the files on disk to their class name ("" unlabelled).
    """
    path = Path(path)
    entries = _read_lists(path, opt.split_lists) if path.is_dir() else _read_csv(path)
    by_stem: dict[str, list[str]] = {}
    for key in disk:
        by_stem.setdefault(PurePosixPath(key).name, []).append(key)
    assign: dict[str, str] = {}
    missing: list[str] = []
    for where, name, cls, split in entries:
        if split not in SPLITS:
            raise UserError(f"--split-file {where}: split {split!r} is not one of train, val, test; fix that row")
        rel = PurePosixPath(name.replace("\\", "/"))
        if rel.is_absolute() or ".." in rel.parts or not rel.name:
            raise UserError(f"--split-file {where}: {name!r} must be a path relative to the dataset folder "
                            f"{opt.root}; fix that row")
        if len(rel.parts) == 1:
            hits = by_stem.get(rel.stem, [])
            if len(hits) > 1:
                raise UserError(f"--split-file {where}: {name} matches {len(hits)} files ({_few(sorted(hits))}); "
                                "give its class folder, e.g. Class/" + name)
            key = hits[0] if hits else None
        else:
            key = rel.with_suffix("").as_posix()
            key = key if key in disk else None
        if key is None:
            missing.append(name)
            continue
        if cls and disk[key] and cls != disk[key]:
            raise UserError(f"--split-file {where}: {name} is labelled {cls!r} but lies in class folder "
                            f"{disk[key]!r}; fix the class column or move the file")
        if assign.get(key, split) != split:
            raise UserError(f"--split-file {where}: {name} is listed in both {assign[key]} and {split}; "
                            "keep one row per scene")
        assign[key] = split
    unlisted = sorted(k for k in disk if k not in assign)
    if missing or unlisted:
        parts = []
        if missing:
            parts.append(f"{len(missing)} listed file(s) are not on disk ({_few(missing)})")
        if unlisted:
            parts.append(f"{len(unlisted)} file(s) on disk are not listed ({_few(unlisted)})")
        raise UserError(f"--split-file {path} does not match the files of {opt.root}: {' and '.join(parts)}; "
                        "use the split made for this copy of the dataset, or restore or move out those files")
    return assign
