"""What a file list holds, as digests: cheap ones from the file system, exact ones from the bytes.

Caches and checks must notice when images change under the same names:

* :func:`files_fingerprint` digests each file's path, size, modification and change time
  (nanoseconds). Any rewrite changes it, even one that keeps the size and sets the old
  modification time back (``cp -p``, ``touch -r``): the change time cannot be set. It reads
  no pixels, so the feature and statistics caches can check it on every run. A dataset
  copied elsewhere gets a new fingerprint (its files have new change times): one
  recomputation, never a stale hit.
* :func:`content_digests` digests each file's bytes (BLAKE2b, 64 bits): the same image in
  another folder, under another root or flattened into one folder, has the same digest. The
  overlap guard compares these (engine/provenance.py).
"""
from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable, Sequence

CONTENT_DIGEST_BYTES = 8      # 64 bits: P(collision) ~ 1e-11 between 27,000 training and 5,400 test images


def files_fingerprint(paths: Iterable[Path]) -> str:
    """SHA-256 over the sorted (path, size, mtime_ns, ctime_ns) of ``paths``; a missing file counts as missing."""
    h = hashlib.sha256()
    for p in sorted(Path(p).as_posix() for p in paths):
        try:
            st = os.stat(p)
            h.update(f"{p}\t{st.st_size}\t{st.st_mtime_ns}\t{st.st_ctime_ns}\n".encode())
        except FileNotFoundError:
            h.update(f"{p}\tmissing\n".encode())
    return h.hexdigest()


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    """SHA-256 of a file's bytes (checkpoints and weights files: a copied or renamed file keeps its digest)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def content_digest(path: Path, chunk: int = 1 << 20) -> str:
    """BLAKE2b (64-bit) of a file's bytes, as 16 hex digits."""
    h = hashlib.blake2b(digest_size=CONTENT_DIGEST_BYTES)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def content_digests(paths: Sequence[Path], threads: int = 4) -> list[str]:
    """:func:`content_digest` of every path, in order (threads: hashing releases the GIL)."""
    with ThreadPoolExecutor(max(1, threads)) as pool:
        return list(pool.map(content_digest, paths))
