"""Files on the Hugging Face Hub, through ``huggingface_hub`` (endpoint, token, offline mode).

The file's metadata (``get_hf_file_metadata``: the LFS sha256 as its ETag, the size, the commit)
is read first, then ``hf_hub_download`` at that commit writes the bytes into our staging folder
``.fetch/hub/`` on the target's file system; we check size and sha256 ourselves (the client
checks only the size) and move the file into place. ``HF_ENDPOINT`` (a mirror), ``HF_TOKEN`` and
``HF_HUB_OFFLINE`` work as for any Hub download. Resume: the client resumes a cut connection
within one fetch (a few retries); whether a partial file survives a killed fetch depends on the
installed huggingface_hub version (2.x starts the file over).
"""

from __future__ import annotations

import importlib
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from .files import FetchError, check_file, check_space, work_dir
from .sources import Source

SHA256 = re.compile(r"^[0-9a-f]{64}$")


def _network_errors() -> tuple[type[BaseException], ...]:
    """What the Hub client raises when the network fails: OSError, and its HTTP library's request
    errors, which are not OSErrors (httpx2 under huggingface_hub 2.x, httpx under 1.x)."""
    errors: list[type[BaseException]] = [OSError]
    for module in ("httpx2", "httpx"):
        try:
            errors.append(importlib.import_module(module).RequestError)
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


NETWORK_ERRORS = _network_errors()


@dataclass(frozen=True)
class HubFile:
    url: str
    size: int | None
    sha256: str | None  # the LFS sha256; None for a small (non-LFS) file, whose ETag is a git hash
    commit: str


def endpoint() -> str | None:
    """``HF_ENDPOINT`` read now (the client reads it once, at import)."""
    return os.environ.get("HF_ENDPOINT") or None


def offline() -> bool:
    from huggingface_hub import constants

    value = os.environ.get("HF_HUB_OFFLINE", "")
    return value.upper() in ("1", "ON", "YES", "TRUE") or constants.HF_HUB_OFFLINE


def metadata(source: Source, timeout: float = 10) -> HubFile:
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import HfHubHTTPError

    url = hf_hub_url(source.repo_id, source.remote_file, repo_type=source.repo_type, revision=source.revision,
                     endpoint=endpoint())
    try:
        meta = get_hf_file_metadata(url, timeout=timeout, endpoint=endpoint())
    except HfHubHTTPError as err:
        status = getattr(err.response, "status_code", None)
        if status == 404:
            raise FetchError(f"{url}: 404 not found (the repo or file has moved, or it is private: set HF_TOKEN)") \
                from None
        raise FetchError(f"{url}: {str(err).splitlines()[0]}") from None
    except NETWORK_ERRORS as err:  # no connection, timeout, offline mode
        raise FetchError(f"cannot reach {url}: {err.__class__.__name__}: {str(err).splitlines()[0] if str(err) else ''}"
                         ) from None
    if not meta.commit_hash or not meta.etag:
        raise FetchError(f"{url}: the server's answer lacks the Hub's X-Repo-Commit / ETag headers (is HF_ENDPOINT "
                         "a Hub mirror?)")
    digest = meta.etag.lower()
    return HubFile(url, meta.size, digest if SHA256.match(digest) else None, meta.commit_hash)


def download(source: Source, dest: Path, meta: HubFile, progress: bool = True) -> tuple[Path, str, int]:
    """Download ``source`` (described by ``meta``) into the staging folder and check it; returns
    (staged path, sha256, size). The caller holds the fetch lock and moves the file into place."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

    staging = work_dir(dest) / "hub" / source.repo_id.replace("/", "--")
    staging.mkdir(parents=True, exist_ok=True)
    if meta.size is not None:
        check_space(staging, meta.size, meta.url)
    if not progress:
        disable_progress_bars()
    try:
        path = Path(hf_hub_download(source.repo_id, source.remote_file, repo_type=source.repo_type, revision=meta.commit,
                                    local_dir=staging, endpoint=endpoint()))
    except NETWORK_ERRORS as err:  # HTTP errors, cut connections past the client's retries, a full disk
        raise FetchError(f"{meta.url}: {err.__class__.__name__}: {str(err).splitlines()[0] if str(err) else ''}; "
                         "nothing was kept as the file, rerun to try again") from None
    finally:
        if not progress:
            enable_progress_bars()
    try:
        digest = check_file(path, meta.size, meta.sha256, meta.url)
    except FetchError:
        path.unlink(missing_ok=True)
        shutil.rmtree(staging / ".cache", ignore_errors=True)  # the client's record of the bad file
        raise
    return path, digest, path.stat().st_size
