"""The local side of a fetch: work folder, lock, checks, the atomic move and the hash record.

Everything in flight lives in ``<target folder>/.fetch/`` (``<file>.part``, the Hub client's
staging, ``<file>.lock``); the target name only ever appears through one ``os.replace`` after
the size and sha256 checks, so nothing half-downloaded is read as the file. ``<file>.json``
records the accepted file's sha256, size, mtime and source: the runner reads the hash from it
(provenance) instead of re-reading a 400 MB file, as long as size and mtime still match.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from ..errors import UserError
from ..fsutil import _fsync_dir, atomic_write_json, dir_lock, read_json

WORK = ".fetch"
CHUNK = 1 << 20


class FetchError(UserError):
    """A download that could not be completed or checked (exit 2, one line, nothing accepted)."""


def work_dir(dest: Path) -> Path:
    return dest.parent / WORK


def record_path(dest: Path) -> Path:
    return work_dir(dest) / f"{dest.name}.json"


@contextlib.contextmanager
def fetch_lock(dest: Path) -> Iterator[None]:
    """Exclusive lock on fetching ``dest``; a second fetch of the same file waits (and says so),
    then finds the file in place. The kernel drops the lock when its holder dies."""
    def waiting(holder: str) -> None:
        print(f"waiting: another process is fetching {dest} ({holder})", file=sys.stderr, flush=True)

    folder = work_dir(dest)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise FetchError(f"cannot create {folder} ({err.strerror or err})") from None
    with dir_lock(folder, f"{dest.name}.lock", wait=waiting):
        yield


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


_MEMO: dict[tuple, str] = {}


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of ``path``: from its fetch record while size and mtime match, else read once per
    process (a hand-placed checkpoint is hashed, ~1 s per 400 MB)."""
    path = Path(path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _MEMO:
        record = read_record(path)
        if record and record.get("size") == stat.st_size and record.get("mtime_ns") == stat.st_mtime_ns:
            _MEMO[key] = record["sha256"]
        else:
            _MEMO[key] = sha256_file(path)
    return _MEMO[key]


def read_record(dest: Path) -> dict | None:
    try:
        record = read_json(record_path(dest))
    except (OSError, ValueError):
        return None
    ok = isinstance(record, dict) and isinstance(record.get("sha256"), str) and isinstance(record.get("size"), int)
    return record if ok else None


def check_file(path: Path, size: int | None, sha256: str | None, what: str) -> str:
    """The file's sha256 after checking its size and (when known) its hash; FetchError otherwise."""
    actual = path.stat().st_size
    if size is not None and actual != size:
        raise FetchError(f"{what}: got {actual:,} bytes, the server says {size:,}; nothing was kept, rerun to "
                         "download it again")
    digest = sha256_file(path)
    if sha256 is not None and digest != sha256.lower():
        raise FetchError(f"{what}: sha256 {digest} does not match the published {sha256.lower()}; the download is "
                         "corrupt or was tampered with and was deleted, rerun to download it again")
    return digest


def accept(staged: Path, dest: Path, sha256: str, source: str, verified: str) -> dict:
    """Move a checked file into place (one rename) and record its hash."""
    os.replace(staged, dest)
    _fsync_dir(dest.parent)
    stat = dest.stat()
    record = {"file": dest.name, "sha256": sha256, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
              "source": source, "verified": verified,
              "fetched_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
    atomic_write_json(record_path(dest), record)
    return record


def check_space(folder: Path, needed: int, what: str) -> None:
    """FetchError before a byte is written when the disk cannot hold ``needed`` more bytes."""
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise FetchError(f"{what} needs {needed / 1e9:.2f} GB more in {folder}, only {free / 1e9:.2f} GB free; free "
                         "some space (or fetch elsewhere and link the file here) and rerun")


def disk_error(err: OSError, path: Path, what: str) -> FetchError:
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return FetchError(f"{what}: the disk is full while writing {path}; the bytes so far are kept, free some "
                          "space and rerun to resume")
    return FetchError(f"{what}: cannot write {path} ({err.strerror or err})")
