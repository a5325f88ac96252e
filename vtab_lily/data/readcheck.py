"""The fingerprint a run records is the data it actually read.

``check_read_data(root, task, loaded)`` compares the splits a run loaded (``SplitData.origin``:
the parsed list file and the images' size/mtime hash taken before decoding) with the task's
``manifest.json`` before any training:

- the list: entry count and ``list_sha256`` of the very entries the run's labels came from
  (exact; the list file is hashed every run, it is small);
- the pixels: the sha256 of the split decoded at the manifest's ``pixels_px``, as the manifest
  hashes them. It is read from the cache's pixel note for this data (list bytes plus every
  image's size and mtime, :mod:`.cache`) when one exists; otherwise it is computed once from the
  pixels the run loaded (when they are at ``pixels_px``; else decoded at that size) and noted.
  So a run costs one small file read, and an image replaced since (a new size or mtime) is
  always hashed again; one rewritten with the same size and its old mtime restored is only
  caught by ``verify``, which decodes every image.

A difference is a :class:`StaleData` error naming the task, the list file and the command that
records the data as it is now; with ``allow`` the run goes on and its record says so: the
fingerprint of the data as read (the manifest's split hashes with the read splits' replaced,
which is what ``verify --write-manifest`` would give when the other splits are unchanged) and
the manifest's own under ``stale_manifest``. A task without a manifest records no fingerprint.
"""

from __future__ import annotations

from typing import Iterable

from ..errors import UserError
from ..tasks import suite
from . import cache
from .manifest import MANIFEST, PIXELS_PX, fingerprint, hash_array, list_sha256, read_manifest


class StaleData(UserError):
    """The data a run read is not the data its task's manifest describes."""


def _split_pixels(data, task_name: str, size: int, workers: int | None, progress: bool) -> str:
    """The pixel hash of a loaded split at ``size`` (from its note, its loaded pixels or a decode)."""
    origin = data.origin
    split_list = origin.split_list
    path = None
    if origin.cache_dir is not None:
        path = cache.cache_path(origin.cache_dir, task_name, data.split, size, split_list.sha256,
                                origin.images_sha256)
        known = cache.read_pixels_note(path)
        if known:
            return known
    digest = cache.pixels_digest(len(split_list), size)
    cached = cache.open_cached(path, len(split_list), size) if path is not None and data.img_size != size else None
    if data.img_size == size:
        hash_array(digest, data.images.cpu().numpy())  # exactly the pixels the run trains on
    elif cached is not None:
        hash_array(digest, cached)
    else:
        print(f"hashing {split_list.file} at {size} px once, to check it against {MANIFEST}")
        for chunk in cache.decode_chunks(split_list, size, workers, progress, desc=f"hashing {split_list.file}"):
            digest.update(memoryview(chunk))
    if path is not None:
        cache.write_pixels_note(path, digest.hexdigest())
    return digest.hexdigest()


def check_read_data(root, task_name: str, loaded: Iterable, allow: bool = False, flag: str = "--allow-stale-data",
                    workers: int | None = None, progress: bool = True) -> dict:
    """``{"fingerprint", "encoding", "source"}`` for a run's result, after checking every loaded
    split (a :class:`~.dataset.SplitData` from ``load_split``) against the task's manifest.

    Raises :class:`StaleData` on a difference unless ``allow`` (then the record carries
    ``stale_manifest``: the manifest's fingerprint, what differed and ``flag``).
    """
    manifest = read_manifest(root, task_name)
    if manifest is None:
        return {"fingerprint": None, "encoding": None, "source": None}
    size = manifest.get("pixels_px", PIXELS_PX)
    path = f"{root}/{task_name}/{MANIFEST}"
    actual = {split: dict(values) for split, values in manifest["splits"].items()}
    differs: list[str] = []
    for data in loaded:
        if data.origin is None:
            raise ValueError(f"{data.split}: loaded without load_split, nothing to check its data against")
        split_list = data.origin.split_list
        recorded = manifest["splits"].get(data.split)
        entry = {"n": len(split_list), "list_sha256": list_sha256(split_list)}
        if recorded is None:
            differs.append(f"{split_list.file}: {path} has no entry for split {data.split}")
        elif (recorded["n"], recorded["list_sha256"]) != (entry["n"], entry["list_sha256"]):
            differs.append(f"{split_list.file}: its entries (paths, labels or order) differ from {path}")
        if differs and not allow:
            break  # the list alone decides: no need to hash any pixels
        entry["pixels_sha256"] = _split_pixels(data, task_name, size, workers, progress)
        if recorded is not None and recorded["pixels_sha256"] != entry["pixels_sha256"] \
                and recorded["list_sha256"] == entry["list_sha256"]:
            differs.append(f"{split_list.file}: the images it lists decode to other pixels than {path} "
                           f"records at {size} px (an image was replaced or edited)")
        actual[data.split] = entry
        if differs and not allow:
            break
    record = {"fingerprint": manifest["fingerprint"], "encoding": manifest["encoding"],
              "source": manifest.get("source")}
    if not differs:
        return record
    demo = " --suite demo" if task_name in suite("demo") and task_name not in suite("vtab") else ""
    fix = f"python -m vtab_lily.data verify --root {root}{demo} --tasks {task_name} --write-manifest"
    if not allow:
        raise StaleData(f"task {task_name}: the data differs from its manifest, so the result would record a "
                        f"fingerprint of other data: {'; '.join(differs)}. If the change is intended, check and "
                        f"record the data as it is now with `{fix}` (or run with {flag} to record the data as "
                        "read, marked stale)")
    record["fingerprint"] = fingerprint(actual)
    record["stale_manifest"] = {"fingerprint": manifest["fingerprint"], "differs": differs, "allowed_by": flag}
    return record
