"""Fetch one source into its folder, or say what a fetch would do (``--dry-run``)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from .http import download as http_download
from .http import remote_size
from .hub import download as hub_download
from .hub import endpoint, metadata, offline
from .files import FetchError, accept, fetch_lock, file_sha256, read_record
from .sources import Source, human_size


@dataclass(frozen=True)
class Plan:
    source: Source
    dest: Path
    url: str
    size: int | None
    exact: bool  # size from the server (else the documented approximate one)
    present: bool


def manual_hint(source: Source, dest: Path) -> str:
    return f"download {source.where(endpoint())} by hand (browser, wget) and put it at {dest}"


def plan(source: Source, folder: Path, probe: bool = True) -> Plan:
    """What fetching ``source`` into ``folder`` would do; ``probe`` asks the server for the size."""
    dest = folder / source.file
    size, exact = None, False
    if probe and not offline() and not dest.is_file():
        try:
            size = metadata(source, timeout=5).size if source.on_hub else remote_size(source.where(), timeout=5)
        except FetchError:
            size = None
        exact = size is not None
    return Plan(source, dest, source.where(endpoint()), size if exact else source.approx_bytes or None, exact,
                dest.is_file())


def describe(p: Plan) -> str:
    if p.present:
        return f"{p.source.name}: {p.dest} is already there (nothing to download)"
    size = human_size(p.size) + ("" if p.exact else " (approx.; server not asked)")
    check = "sha256 from the Hub's LFS metadata" if p.source.on_hub else \
        "size checked; no published hash, the sha256 of this download is recorded and shown"
    return f"{p.source.name}: {p.url}\n  -> {p.dest}  ({size}; {check})"


def fetch(source: Source, folder: Path, *, progress: bool = True, timeout: float = 30, retries: int = 5) -> dict:
    """Download ``source`` into ``folder`` unless it is there; returns its record (sha256, size, ...).

    Two fetches of one file at once: the second waits for the first, then finds the file."""
    dest = folder / source.file
    if dest.exists() and not dest.is_file():
        raise FetchError(f"{dest} exists and is not a file; move it away and rerun")
    with fetch_lock(dest):
        if dest.is_file():
            record = read_record(dest) or {}
            stat = dest.stat()
            if record.get("size") != stat.st_size or record.get("mtime_ns") != stat.st_mtime_ns:
                record = {"file": dest.name, "sha256": file_sha256(dest), "size": stat.st_size, "verified": "present"}
            print(f"{dest}: already there (sha256 {record['sha256']})")
            return record
        if offline():
            raise FetchError(f"offline (HF_HUB_OFFLINE is set): {manual_hint(source, dest)}")
        print(f"fetching {source.name}: {source.where(endpoint())} -> {dest}", file=sys.stderr, flush=True)
        try:
            if source.on_hub:
                meta = metadata(source)
                staged, digest, _ = hub_download(source, dest, meta, progress=progress)
                verified = "hub-lfs-sha256" if meta.sha256 else "first-download"
            else:
                staged, digest, _ = http_download(source.where(), dest, timeout=timeout, retries=retries,
                                                  progress=progress)
                verified = "first-download"
        except FetchError as err:
            raise FetchError(f"{err}\n  or: {manual_hint(source, dest)}") from None
        record = accept(staged, dest, digest, source.where(endpoint()), verified)
    how = ("matches the Hub's published sha256" if verified == "hub-lfs-sha256" else
           "no published hash: recorded now, compare it with a colleague's copy")
    print(f"{dest}: {human_size(record['size'])}, sha256 {digest} ({how})")
    return record
