"""``<root>/<task>/manifest.json``: where a task's data came from and a fingerprint of it.

Two copies of "the same" VTAB-1K differ (a JPEG re-encoding moves CIFAR-100 by ~10 points), so
every result records the fingerprint of the data it was made on. Per split the manifest holds
the number of entries, a hash of the list (each entry's path and label, in order; independent
of line ends and spacing) and a hash of the decoded pixels at 224 px (the ``(n, 3, 224, 224)``
uint8 array the loader trains on, in list order). The fingerprint is the first 16 hex digits of
a hash over those split hashes: equal fingerprints mean equal lists and equal model inputs.

Written by ``prepare``, by ``verify --write-manifest`` for a tree laid out by hand, and by the
demo generator. Hashing the pixels reads the decoded cache when one exists, else decodes a
chunk at a time (never a whole split in memory). ``prepare`` takes the hashes from ``verify``'s
own decoding pass (``verify_task(pixels_px=...)``), so each image is decoded once.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from pathlib import Path
from typing import Callable

from ..errors import UserError
from ..fsutil import atomic_write_json
from ..tasks import ALIASES, SPLITS
from . import cache
from .cache import pixels_digest
from .lists import SplitList

SCHEMA = 1
MANIFEST = "manifest.json"
PIXELS_PX = 224  # the resolution the fingerprint's pixels are decoded at (the models' input)
MAX_PIXELS_PX = 1024  # a larger pixels_px is no manifest of ours: refused before anything decodes at it
ENCODINGS = ("png", "jpeg", "mixed")
_HEX16 = re.compile(r"[0-9a-f]{16}")
_READ_CHUNK = 256  # images hashed at a time from a cache file


def list_sha256(split_list: SplitList) -> str:
    """Hash of the entries (path, label) in order; blind to line ends, BOMs and spacing."""
    text = "".join(f"{e.path}\t{e.label}\n" for e in split_list.entries)
    return hashlib.sha256(text.encode()).hexdigest()


def pixels_sha256(split_list: SplitList, task_name: str, split: str, size: int = PIXELS_PX,
                  cache_dir: Path | None = None, build: bool = False, workers: int | None = None,
                  progress: bool = True) -> str:
    """Hash of the split's decoded ``(n, 3, size, size)`` uint8 pixels, in list order.

    With ``cache_dir``: a pixel note for this exact data (see :mod:`.cache`) answers at once;
    else the split's decoded cache is read when there is one, or with ``build`` built on the way
    (so training later reuses it); the hash is noted for next time. Otherwise images are decoded
    a chunk at a time and only hashed.
    """
    path = cache.split_cache_path(cache_dir, task_name, split_list, split, size) if cache_dir else None
    known = cache.read_pixels_note(path) if path is not None else None
    if known:
        return known
    digest = pixels_digest(len(split_list), size)
    cached = cache.open_cached(path, len(split_list), size) if path is not None else None
    if cached is not None:
        hash_array(digest, cached)
    elif path is not None and build:
        with cache.build_lock(path, cache.cache_bytes(len(split_list), size)):
            cache.build_cache(path, split_list, size, workers, progress,
                              on_chunk=lambda chunk: digest.update(memoryview(chunk)))
    else:
        for chunk in cache.decode_chunks(split_list, size, workers, progress, desc=f"hashing {split_list.file}"):
            digest.update(memoryview(chunk))
    if path is not None:
        cache.write_pixels_note(path, digest.hexdigest())
    return digest.hexdigest()


def hash_array(digest: "hashlib._Hash", images) -> None:
    """Feed a ``(n, 3, s, s)`` uint8 array (e.g. a memory-mapped cache) to ``digest``, a chunk at a time."""
    for start in range(0, len(images), _READ_CHUNK):
        digest.update(memoryview(images[start : start + _READ_CHUNK]).cast("B"))


def fingerprint(splits: dict[str, dict]) -> str:
    """First 16 hex digits of a hash over every split's list and pixel hashes."""
    text = json.dumps({s: [v["n"], v["list_sha256"], v["pixels_sha256"]] for s, v in splits.items()},
                      sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


_MAGIC = {b"\x89PNG\r\n\x1a\n": "png", b"\xff\xd8\xff": "jpeg"}


def detect_encoding(split_lists: list[SplitList]) -> str:
    """"png" or "jpeg" when every listed image is one of them (by content), else "mixed"."""
    kinds = set()
    for split_list in split_lists:
        for entry in split_list.entries:
            try:
                with open(split_list.image_path(entry), "rb") as f:
                    head = f.read(8)
            except OSError:
                head = b""
            kinds.add(next((kind for magic, kind in _MAGIC.items() if head.startswith(magic)), "other"))
            if len(kinds) > 1:
                return "mixed"
    return kinds.pop() if kinds and kinds <= {"png", "jpeg"} else "mixed"


def compute_manifest(task_name: str, split_lists: dict[str, SplitList], source: str, encoding: str | None = None,
                     size: int = PIXELS_PX, cache_dir: Path | None = None, build_cache: bool = False,
                     workers: int | None = None, progress: bool = True,
                     on_split: Callable[[str], None] | None = None, pixels: dict[str, str] | None = None) -> dict:
    """The manifest of one task from its parsed (and already checked) list files.

    ``pixels``: split -> pixel hash at ``size`` already computed from these lists (``verify``'s
    decoding pass, ``TaskReport.pixels_sha256``); those splits are not decoded again (unless
    ``build_cache``: the cache is built, and hashed, on the way).
    """
    splits = {}
    for split in SPLITS:
        if split not in split_lists:
            continue
        if on_split is not None:
            on_split(split)
        split_list = split_lists[split]
        known = None if build_cache else (pixels or {}).get(split)
        splits[split] = {"n": len(split_list), "list_sha256": list_sha256(split_list),
                         "pixels_sha256": known or pixels_sha256(split_list, task_name, split, size, cache_dir,
                                                                 build_cache, workers, progress)}
    from .. import __version__

    return {"schema": SCHEMA, "task": task_name, "source": source,
            "encoding": encoding or detect_encoding(list(split_lists.values())),
            "fingerprint": fingerprint(splits), "pixels_px": size, "splits": splits,
            "prepared_by": f"vtab-lily {__version__}",
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def write_manifest(task_dir: Path, manifest: dict) -> Path:
    path = Path(task_dir) / MANIFEST
    try:
        atomic_write_json(path, manifest)
    except OSError as err:
        raise UserError(f"cannot write {path} ({err.strerror or err})") from None
    return path


def _check(manifest: object, path: Path) -> dict:
    """``manifest`` when it follows the schema; else a UserError naming the file."""
    def bad(why: str) -> UserError:
        return UserError(f"{path}: {why}; rewrite it with `python -m vtab_lily.data verify --root ... "
                         f"--write-manifest`")

    if not isinstance(manifest, dict):
        raise bad("not a JSON object")
    if manifest.get("schema") != SCHEMA:
        raise bad(f"schema {manifest.get('schema')!r}, expected {SCHEMA}")
    if not isinstance(manifest.get("fingerprint"), str) or not _HEX16.fullmatch(manifest["fingerprint"]):
        raise bad(f"fingerprint {manifest.get('fingerprint')!r} is not 16 hex digits")
    px = manifest.get("pixels_px", PIXELS_PX)  # the size its pixels were hashed at (runs and verify decode at it)
    if isinstance(px, bool) or not isinstance(px, int) or not 1 <= px <= MAX_PIXELS_PX:
        raise bad(f"pixels_px {px!r} is not an integer in 1..{MAX_PIXELS_PX}")
    if manifest.get("encoding") not in ENCODINGS:
        raise bad(f"encoding {manifest.get('encoding')!r} is not one of {', '.join(ENCODINGS)}")
    splits = manifest.get("splits")
    if not isinstance(splits, dict) or not all(
            isinstance(v, dict) and isinstance(v.get("n"), int) and isinstance(v.get("list_sha256"), str)
            and isinstance(v.get("pixels_sha256"), str) for v in splits.values()):
        raise bad("'splits' is not a mapping of split -> {n, list_sha256, pixels_sha256}")
    if fingerprint(splits) != manifest["fingerprint"]:
        raise bad("the fingerprint does not match its split hashes (edited by hand?)")
    return manifest


def read_manifest(root: str | Path, task_name: str) -> dict | None:
    """``<root>/<task>/manifest.json`` (task aliases resolved), or None when there is none.

    A manifest that is not valid JSON or does not follow the schema is a :class:`UserError`.
    """
    name = ALIASES.get(task_name, task_name)
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise UserError(f"task name {task_name!r} is not a folder name")
    path = Path(root) / name / MANIFEST
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read {path}: {err}") from None
    try:
        manifest = json.loads(text)
    except ValueError as err:
        raise UserError(f"{path}: not valid JSON ({err})") from None
    return _check(manifest, path)


def data_fingerprint(root: str | Path, task_name: str) -> str | None:
    """The task's data fingerprint from its manifest, or None when it has none."""
    manifest = read_manifest(root, task_name)
    return manifest["fingerprint"] if manifest else None
