"""A run's per-example predictions, ``predictions.npz``: the file's format, written by the runner
and read back (checked) by :func:`vtab_lily.results.read_predictions`. numpy only, no torch.

The file is a plain ``.npz`` (loaded with ``allow_pickle=False``: an object array is refused,
never unpickled) of 1-D int16 arrays, one entry per evaluated example in the order of the
evaluation split's list file: ``labels`` (true class), ``final`` (predicted class at the final
evaluation) and, when known, ``selected`` (at the evaluation whose accuracy is ``accuracy.best``).
Two uint8 arrays hold ASCII text that ties the file to its run: ``config_hash`` (the run folder's
name) and ``list_sha256`` (the hash of the list's entries, as the task's manifest.json records
it), so a file copied in from another run or task is refused rather than paired with the wrong
images. result.json's ``predictions`` record says the same (see ARCHITECTURE.md).
"""

from __future__ import annotations

import io
import re
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import UserError

FILE = "predictions.npz"
CLASS_ARRAYS = ("labels", "final", "selected")
TEXT_ARRAYS = ("config_hash", "list_sha256")
MAX_EXAMPLES = 10**7  # far above any VTAB test split (svhn: 26,032); bounds what a reader loads
MAX_BYTES = 8 * MAX_EXAMPLES + 2**20
MAX_CLASS = 2**15 - 1  # int16
ACCURACY_TOLERANCE = 1e-6  # percentage points: result.json stores the same 100 * correct / n
_HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Predictions:
    """One run's predictions (numpy int16 arrays of equal length n, in list-file order).
    ``selected`` is None when the run does not know it; ``note`` then says why."""

    labels: np.ndarray
    final: np.ndarray
    selected: np.ndarray | None
    list_sha256: str
    note: str = ""

    @property
    def n(self) -> int:
        return len(self.labels)


def encode(labels: Any, final: Any, selected: Any | None, config_hash: str, list_sha256: str) -> bytes:
    """The file's bytes (``np.savez`` into memory: the caller writes them atomically)."""
    arrays = {"labels": labels, "final": final}
    if selected is not None:
        arrays["selected"] = selected
    out = {}
    for name, values in arrays.items():
        values = np.asarray(values)
        if values.ndim != 1 or len(values) != len(labels) or (len(values) and not 0 <= values.min() <= values.max() <= MAX_CLASS):
            raise ValueError(f"{name}: expected {len(labels)} class indices in [0, {MAX_CLASS}], got shape {values.shape}")
        out[name] = values.astype(np.int16)
    out["config_hash"] = np.frombuffer(config_hash.encode("ascii"), dtype=np.uint8)
    out["list_sha256"] = np.frombuffer(list_sha256.encode("ascii"), dtype=np.uint8)
    buffer = io.BytesIO()
    np.savez(buffer, **out)
    return buffer.getvalue()


def record(n: int, eval_split: str, list_sha256: str, selected_note: str = "") -> dict:
    """result.json's ``predictions`` entry; ``selected_missing`` says why ``selected`` is absent."""
    entry = {"file": FILE, "n": n, "eval_split": eval_split, "list_sha256": list_sha256}
    if selected_note:
        entry["selected_missing"] = selected_note
    return entry


def check_record(entry: Any, where: str) -> None:
    """result.json's ``predictions`` entry has the shape :func:`record` writes (UserError naming ``where``)."""
    if not isinstance(entry, dict):
        raise UserError(f"{where}: field 'predictions' must be an object, got {type(entry).__name__}")
    n = entry.get("n")
    if entry.get("file") != FILE:
        raise UserError(f"{where}: predictions.file must be {FILE!r}, got {str(entry.get('file'))[:60]!r}")
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_EXAMPLES:
        raise UserError(f"{where}: predictions.n must be a count of examples from 1 to {MAX_EXAMPLES}, got {str(n)[:30]}")
    if not isinstance(entry.get("eval_split"), str) or not entry["eval_split"]:
        raise UserError(f"{where}: predictions.eval_split must be a split name")
    if not isinstance(entry.get("list_sha256"), str) or not _HEX64.fullmatch(entry["list_sha256"]):
        raise UserError(f"{where}: predictions.list_sha256 must be 64 hex digits")
    note = entry.get("selected_missing")
    if note is not None and not isinstance(note, str):
        raise UserError(f"{where}: predictions.selected_missing must be a string")


def _text(arrays: dict, name: str, path: Path) -> str:
    values = arrays.get(name)
    if values is None or values.dtype != np.uint8 or values.ndim != 1 or len(values) > 100:
        raise UserError(f"{path}: array {name!r} is missing or not ASCII text; not a predictions file of this run")
    return values.tobytes().decode("ascii", errors="replace")


def load(path: Path) -> dict[str, np.ndarray]:
    """The file's arrays, never unpickling; every failure a UserError naming ``path``."""
    try:
        info = path.stat()
    except OSError as err:
        raise UserError(f"{path}: cannot read ({err.strerror})") from None
    if not stat.S_ISREG(info.st_mode):  # a FIFO or device would block or never end
        raise UserError(f"{path}: not a regular file")
    size = info.st_size
    if size > MAX_BYTES:
        raise UserError(f"{path}: {size:,} bytes is larger than any predictions file ({MAX_BYTES:,} at most)")
    if not zipfile.is_zipfile(path):  # else np.load would take it for a pickle (and refuse it, less clearly)
        raise UserError(f"{path}: not an .npz archive; truncated or overwritten?")
    try:
        with zipfile.ZipFile(path) as archive:  # a small compressed member may claim gigabytes
            if sum(info.file_size for info in archive.infolist()) > MAX_BYTES:
                raise UserError(f"{path}: its arrays unpack to more than {MAX_BYTES:,} bytes; not a predictions file")
        with np.load(path, allow_pickle=False) as npz:
            names = set(npz.files)
            unknown = names - set(CLASS_ARRAYS) - set(TEXT_ARRAYS)
            if unknown:
                raise UserError(f"{path}: unexpected arrays {sorted(unknown)} (a predictions file holds "
                                f"{', '.join(CLASS_ARRAYS + TEXT_ARRAYS)})")
            return {name: npz[name] for name in sorted(names)}
    except UserError:
        raise
    except ValueError as err:  # an object array (would need pickle), a bad header
        what = "an array of Python objects (never unpickled)" if "allow_pickle" in str(err) else str(err)[:100]
        raise UserError(f"{path}: not a predictions file: {what}") from None
    except (OSError, EOFError, KeyError, MemoryError, zipfile.BadZipFile, zipfile.LargeZipFile) as err:
        raise UserError(f"{path}: unreadable ({err.__class__.__name__}: {str(err)[:100]}); truncated or edited?") from None


def check(path: Path, arrays: dict[str, np.ndarray], result: dict, num_classes: int | None) -> Predictions:
    """``arrays`` (from :func:`load`) against the run's result.json: names, shapes, dtypes, class
    ranges, the run and list they belong to, and both accuracies recomputed from them."""
    entry = result["predictions"]
    n = entry["n"]
    for name in ("labels", "final"):
        if name not in arrays:
            raise UserError(f"{path}: array {name!r} is missing")
    top = MAX_CLASS if num_classes is None else num_classes - 1
    for name in CLASS_ARRAYS:
        values = arrays.get(name)
        if values is None:
            continue
        if values.dtype != np.int16 or values.shape != (n,):
            raise UserError(f"{path}: array {name!r} must be int16 of shape ({n},) as result.json's "
                            f"predictions.n says, got {values.dtype} {values.shape}")
        if n and not 0 <= int(values.min()) <= int(values.max()) <= top:
            raise UserError(f"{path}: array {name!r} holds classes outside 0..{top} (the task's classes)")
    config_hash, list_hash = _text(arrays, "config_hash", path), _text(arrays, "list_sha256", path)
    if config_hash != result["config_hash"]:
        raise UserError(f"{path}: written by run {config_hash[:20]!r}, not this run ({result['config_hash']}); "
                        "copied from another run folder?")
    if list_hash != entry["list_sha256"]:
        raise UserError(f"{path}: its list_sha256 differs from result.json's: predictions of another list")
    accuracy = result["accuracy"]
    labels = arrays["labels"]
    for name, key in (("final", "final"), ("selected", "best")):
        if name not in arrays:
            continue
        recorded = accuracy.get(key)
        measured = 100.0 * int((arrays[name] == labels).sum()) / n
        if not isinstance(recorded, (int, float)) or abs(measured - recorded) > ACCURACY_TOLERANCE:
            raise UserError(f"{path}: array {name!r} gives {measured:.4f}% but result.json records "
                            f"accuracy.{key} = {recorded}; the file does not belong to this result")
    selected = arrays.get("selected")
    note = "" if selected is not None else entry.get("selected_missing") or "the selected evaluation's predictions were not kept"
    return Predictions(labels=labels, final=arrays["final"], selected=selected, list_sha256=list_hash, note=note)
