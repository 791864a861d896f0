"""Atomic file writes: temp file in the same folder, flush + fsync, rename over the target.

A crash, a full disk or a concurrent reader never sees a partial file, and an older
file survives any failure. Used for checkpoints, results tables, logs, split records and
cached statistics.

Every file gets the mode the user's umask gives (as ``open`` would), not mkstemp's 0600.
Temporary names carry the writer's host and pid (``.<name>.<host>-<pid>.<random>.tmp``), so
:func:`remove_stale_tmp` can delete what a killed run left behind without touching the
temporary file of a run that is still writing into the same folder.
"""
from __future__ import annotations

import errno
import hashlib
import os
import re
import socket
import tempfile
import time
from pathlib import Path
from typing import BinaryIO, Callable

from config.errors import UserError, note_written
from config.errors import last_written as _last_written

_FULL = (errno.ENOSPC, errno.EDQUOT)
_HOST = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:6]
_TMP = re.compile(r"^\..+\.([0-9a-f]{6})-(\d+)\.[^.]+\.tmp$")
FOREIGN_TMP_AGE_S = 24 * 3600     # a temp file of another host (shared filesystem) this old is dead


def default_mode() -> int:
    """The mode a new file gets under the current umask (0o666 & ~umask)."""
    try:                                   # Linux: read without changing it (thread-safe)
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def disk_full_error(path: Path, err: OSError) -> UserError:
    """The sentence for a write that ran out of space; what was written before is intact."""
    return UserError(f"no space left on the device to write {path} ({err.strerror or err}); free space there "
                     "(or write elsewhere) and re-run; files written before are intact")


def _fsync_dir(directory: Path) -> None:
    """Make a rename durable; some filesystems cannot open directories, which is fine."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object], mode: int | None = None) -> None:
    """Call ``write(f)`` on a temporary binary file, then rename it to ``path``.

    ``mode``: the file's permission bits (default: what the umask gives). A full disk is a
    :class:`UserError` naming ``path``; the temporary file is removed on any failure,
    Ctrl-C included.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{_HOST}-{os.getpid()}.", suffix=".tmp")
    except OSError as err:
        if err.errno in _FULL:
            raise disk_full_error(path, err) from None
        raise
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, default_mode() if mode is None else mode)
        os.replace(tmp, path)
    except BaseException as err:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        full = _disk_full_cause(err)
        if full is not None:
            raise disk_full_error(path, full) from None
        if not isinstance(err, KeyboardInterrupt) and _caused_by(err, KeyboardInterrupt):
            # Ctrl-C inside torch.save: its zip writer then fails on close ("unexpected pos"), which
            # would hide the interrupt behind a RuntimeError (exit 1, two tracebacks); it stays Ctrl-C
            raise KeyboardInterrupt from None
        raise
    _fsync_dir(path.parent)
    note_written(path)


def _caused_by(err: BaseException, kind: type) -> bool:
    """Whether ``kind`` is among the exceptions ``err`` was raised while handling."""
    seen = 0
    while err is not None and seen < 5:
        if isinstance(err, kind):
            return True
        err = err.__cause__ or err.__context__
        seen += 1
    return False


def _disk_full_cause(err: BaseException) -> OSError | None:
    """The ENOSPC/EDQUOT error behind ``err`` (torch.save wraps the writer's OSError)."""
    seen = 0
    while err is not None and seen < 5:
        if isinstance(err, OSError) and err.errno in _FULL:
            return err
        err = err.__cause__ or err.__context__
        seen += 1
    return None


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """:func:`atomic_write` for UTF-8 text."""
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def last_written() -> Path | None:
    """The last file this process completed with :func:`atomic_write` (for the Ctrl-C message)."""
    done = _last_written()
    return Path(done) if done else None


def create_exclusive(path: str | os.PathLike) -> None:
    """Create an empty ``path`` with O_EXCL (mode from the umask): FileExistsError if it exists.

    The claim that makes a run's name its own: of two runs creating the same name at the
    same moment exactly one succeeds.
    """
    path = Path(path)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
    except OSError as err:
        if err.errno in _FULL:
            raise disk_full_error(path, err) from None
        raise
    os.close(fd)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:                # another user's process
        return True
    return True


def remove_stale_tmp(folder: str | os.PathLike) -> list[Path]:
    """Delete temporary files a killed run left in ``folder``; return what was removed.

    A file of this host whose writer process is gone is removed; one of another host (a
    shared filesystem) only when older than a day. A live writer's file is never touched.
    """
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for p in folder.glob(".*.tmp"):
        m = _TMP.match(p.name)
        try:
            if m is not None and m.group(1) == _HOST:
                stale = not _pid_alive(int(m.group(2)))
            else:                          # another host, or a name from before host/pid tags
                stale = time.time() - p.stat().st_mtime > FOREIGN_TMP_AGE_S
            if stale:
                p.unlink()
                removed.append(p)
        except FileNotFoundError:          # its writer renamed or removed it meanwhile
            continue
    return removed
