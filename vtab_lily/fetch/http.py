"""Plain HTTPS download with resume (HTTP Range), for files outside the Hugging Face Hub.

Google's ``ViT-B_16.npz`` has no published hash: the size is checked against the server's
``Content-Length`` and the sha256 of the first complete download is recorded and shown, so two
people can compare theirs. Bytes go to ``.fetch/<file>.part`` through unbuffered writes: after
a cut connection, a timeout or a full disk the part holds exactly the bytes received, and the
next attempt (a retry here, or a rerun) asks the server for the rest.
"""

from __future__ import annotations

import http.client
import os
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from ..fsutil import atomic_write_json, read_json
from .files import CHUNK, FetchError, check_file, check_space, disk_error, work_dir

USER_AGENT = "vtab-lily-fetch"
TRANSIENT = (socket.timeout, TimeoutError, ConnectionError, http.client.IncompleteRead, http.client.RemoteDisconnected,
             urllib.error.URLError)


def remote_size(url: str, timeout: float = 10) -> int | None:
    """The server's size for ``url`` (HEAD), or None when it cannot be asked."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD", headers={"User-Agent": USER_AGENT}),
                                    timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            return int(length) if length is not None else None
    except (OSError, ValueError, http.client.HTTPException):
        return None


def download(url: str, dest: Path, *, sha256: str | None = None, timeout: float = 30, retries: int = 5,
             progress: bool = True) -> tuple[Path, str, int]:
    """Download ``url`` to ``dest``'s part file and check it; returns (part path, sha256, size).

    The caller holds the fetch lock and moves the checked part into place. A transient error
    (cut connection, ``timeout`` seconds without a byte) retries from where it stopped, up to
    ``retries`` times with a growing pause; a bad size or hash deletes the part.
    """
    part = work_dir(dest) / f"{dest.name}.part"
    part.parent.mkdir(parents=True, exist_ok=True)
    total = None
    for attempt in range(retries + 1):
        try:
            total = _fetch_range(url, part, timeout, progress, dest.name)
            break
        except TRANSIENT as err:
            if isinstance(err, urllib.error.HTTPError) and err.code < 500:  # 5xx: the server may recover
                raise FetchError(_http_message(url, err)) from None
            if isinstance(err, urllib.error.URLError) and not isinstance(err, urllib.error.HTTPError):
                # no connection at all (no network, DNS, refused): retrying will not help
                raise FetchError(f"cannot reach {url}: {err.reason}") from None
            if attempt == retries:
                have = part.stat().st_size if part.exists() else 0
                reason = getattr(err, "reason", None) or err
                raise FetchError(f"{url}: {reason.__class__.__name__}: {reason} after {retries + 1} attempts; "
                                 f"{have:,} bytes are kept in {part}, rerun to resume") from None
            time.sleep(min(2 ** attempt, 30) * 0.5)
    try:
        digest = check_file(part, total, sha256, url)
    except FetchError:
        part.unlink(missing_ok=True)
        raise
    finally:
        part.with_name(part.name + ".json").unlink(missing_ok=True)
    return part, digest, part.stat().st_size


def _http_message(url: str, err: urllib.error.HTTPError) -> str:
    if err.code == 404:
        return f"{url}: 404 not found (the file has moved or the name is wrong)"
    if err.code in (401, 403):
        return f"{url}: {err.code} {err.reason} (access denied)"
    return f"{url}: HTTP {err.code} {err.reason}"


def _fetch_range(url: str, part: Path, timeout: float, progress: bool, name: str) -> int:
    """One request for the bytes ``part`` lacks; returns the file's full size."""
    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    validator_file = part.with_name(part.name + ".json")  # the version of the file the part holds
    validator = _read_validator(validator_file) if have else None
    if have and validator:  # If-Range: the rest only if the file is unchanged, else all of it (200)
        headers["Range"], headers["If-Range"] = f"bytes={have}-", validator
    elif have:  # no way to tell which version the part holds: start over
        have = 0
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # nothing after `have`: the part may be complete already
            size = _size_from_range(err.headers.get("Content-Range"))
            if size == have:
                return have
            part.unlink()  # larger than the file, or unknowable: start over
            return _fetch_range(url, part, timeout, progress, name)
        raise
    with response:
        if have and response.status != 206:  # the server ignored Range: start over
            have = 0
        length = response.headers.get("Content-Length")
        total = _size_from_range(response.headers.get("Content-Range")) if response.status == 206 else None
        if total is None:
            total = have + int(length) if length is not None else None
        if total is not None:
            check_space(part.parent, total - have, url)
        if not have:
            atomic_write_json(validator_file, {"url": url, "validator": response.headers.get("ETag")
                                               or response.headers.get("Last-Modified")})
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | (os.O_APPEND if have else os.O_TRUNC), 0o644)
        bar = tqdm(total=total, initial=have, unit="B", unit_scale=True, desc=name, disable=not progress,
                   mininterval=0.5)
        try:
            while block := response.read1(CHUNK):  # what has arrived: a timeout loses no bytes
                _write_all(fd, block, part, url)
                bar.update(len(block))
        finally:
            bar.close()
            os.close(fd)
    size = part.stat().st_size
    if total is not None and size < total:  # the server closed early without an error
        raise http.client.IncompleteRead(b"", total - size)
    return total if total is not None else size


def _read_validator(path: Path) -> str | None:
    try:
        value = read_json(path).get("validator")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) and value else None


def _write_all(fd: int, block: bytes, part: Path, url: str) -> None:
    view = memoryview(block)
    while view:
        try:
            written = os.write(fd, view)
        except OSError as err:
            raise disk_error(err, part, url) from None
        view = view[written:]


def _size_from_range(header: str | None) -> int | None:
    """The full size from ``Content-Range: bytes a-b/N`` (or ``bytes */N``)."""
    if not header or "/" not in header:
        return None
    size = header.rsplit("/", 1)[1].strip()
    return int(size) if size.isdigit() else None
