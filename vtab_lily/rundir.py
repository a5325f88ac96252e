"""One run's directory: layout, config hashing, checkpoints, metrics, result and failure files.

Layout (see ARCHITECTURE.md): ``<out>/<backbone>/<adapter>/<task>/<config hash>/`` holding
``config.json``, ``metrics.jsonl``, ``tb/<label>_seed<seed>/`` (TensorBoard events), ``checkpoint.pt``, ``router_weights.json`` (Lily: the
final evaluation's mean expert weights), ``router_history.json`` (Lily: one entry per evaluation),
``snapshots/epoch_XXXX.pt`` (trainable tensors at each evaluation), ``predictions.npz`` (the
predicted class of every evaluated example, written just before the result), and
either ``result.json`` (success, written last) or ``failed.json``. Every file except the
append-only ``metrics.jsonl`` is written atomically (``vtab_lily.fsutil``), so a process killed
at any point leaves the previous version or the new one, never a torn file.

Crash-test hooks: ``VTAB_LILY_FAULT=<point>:<n>[:<SIGNAL>]`` makes the process SIGKILL itself
(or send SIGNAL, e.g. INT) the n-th time it reaches the named point (``train_step``,
``checkpoint_write``, ``result_write``), and
``VTAB_LILY_FAULT=nan_loss:<n>`` turns the n-th training loss into NaN. Tests use them to
inject faults at exact places; they cost one dictionary lookup when unset.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

from . import options
from .fsutil import atomic_write, atomic_write_bytes, atomic_write_json, dir_lock, read_json
from .predictions import FILE as PREDICTIONS  # that module holds the file's format

# Options that say where things are or how to run, not what is computed: they never change a
# run's identity, so moving the data or resuming on another device finds the same directory.
# ``adapter_options`` (what the user typed) is hashed through ``adapter_config`` (resolved), so
# ``--rank 32`` and the default rank 32 are the same run.
# ``report`` only says which accuracy the CLI prints and the leaderboard exports.
# The local options are declared as such in ``options``. ``checkpoint_sha256`` is the weights
# file's hash (provenance: which bytes were loaded), recorded per run; the method is the same
# whichever copy of the published file was read.
LOCAL_KEYS = (*options.names("local"), "adapter_options", "report", "checkpoint_sha256")
# Setup switches (the ``setup`` options, and the weights file's name) that a named method's row must not mix.
SETUP_KEYS = (*options.names("setup"), "pretrained")
# method_hash also drops what varies inside one method's group of runs (``adapter_task_settings``:
# the values a ``paper`` setting took for this task, which the task determines).
PER_RUN_KEYS = ("task", "seed", "num_classes", "adapter_task_settings")

# Set by the sweep on runs that share one GPU (``--trials-per-gpu N``): their times are contended.
SHARED_GPU_ENV = "VTAB_LILY_TRIALS_PER_GPU"


def trials_per_gpu() -> int:
    """How many trials share this run's GPU (1: alone; an unreadable value counts as alone, with a warning)."""
    text = os.environ.get(SHARED_GPU_ENV, "").strip()
    if not text:
        return 1
    if text.isdigit() and 1 <= int(text) <= 64:
        return int(text)
    print(f"warning: {SHARED_GPU_ENV}={text!r} is not a count from 1 to 64; recording this run as alone on its GPU",
          file=sys.stderr)
    return 1


CONFIG, METRICS, TB, CHECKPOINT = "config.json", "metrics.jsonl", "tb", "checkpoint.pt"
RESULT, FAILED, ROUTER = "result.json", "failed.json", "router_weights.json"
ROUTER_HISTORY, SNAPSHOTS = "router_history.json", "snapshots"


def _short_hash(obj: Any) -> str:
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def json_normal(obj: Any) -> Any:
    """``obj`` as config.json stores it (tuples -> lists, non-JSON values -> str), so a config
    hashes and compares the same before and after a round trip through the file."""
    return json.loads(json.dumps(obj, default=str))  # key order kept: method labels follow it


def config_hash(config: dict) -> str:
    """8 hex digits naming the run directory: the config without machine-local options."""
    return _short_hash({k: v for k, v in config.items() if k not in LOCAL_KEYS})


def method_hash(config: dict) -> str:
    """8 hex digits shared by all tasks and seeds of one method (backbone, adapter, recipe).

    A named method (``--method-name``, e.g. a sweep's per-task tuned settings) is one group
    whatever its per-task hyperparameters: only the name, backbone, adapter, protocol and suite count.
    """
    if config.get("method_name"):
        # Plus the setup switches no sweep tunes per task: a named row never mixes fp32 and bf16
        # runs, or runs from before and after a default changed (absent keys hash as before).
        named = {k: config.get(k) for k in ("method_name", "backbone", "adapter", "protocol", "suite")}
        named.update({k: config[k] for k in SETUP_KEYS if k in config})
        return _short_hash(named)
    return _short_hash({k: v for k, v in config.items() if k not in LOCAL_KEYS + PER_RUN_KEYS})


_fault_counts: Counter[str] = Counter()


def fault_point(name: str) -> bool:
    """Crash-test hook, set by ``VTAB_LILY_FAULT=<name>:<n>[:<SIGNAL>]``: the n-th time ``name``
    is reached, this process sends itself SIGNAL (default KILL; e.g. INT to test Ctrl-C).
    For ``nan_loss`` it returns True instead (the caller poisons the loss)."""
    spec = os.environ.get("VTAB_LILY_FAULT")
    if not spec:
        return False
    point, _, rest = spec.partition(":")
    if point != name:
        return False
    count, _, sig = rest.partition(":")
    _fault_counts[name] += 1
    if _fault_counts[name] != int(count or 1):
        return False
    if name == "nan_loss":
        return True
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), getattr(signal, f"SIG{sig or 'KILL'}"))
    return True


class RunDir:
    """Paths and file operations of one run directory."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    @classmethod
    def for_config(cls, out: str | os.PathLike, config: dict) -> "RunDir":
        return cls(Path(out) / config["backbone"] / config["adapter"] / config["task"] / config_hash(config))

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def __str__(self) -> str:
        return str(self.path)

    # --- state queries -------------------------------------------------------------------
    def read_result(self) -> dict | None:
        """The complete result, or None (missing, unreadable or not complete)."""
        try:
            result = read_json(self / RESULT)
        except (OSError, ValueError):
            return None
        return result if isinstance(result, dict) and result.get("status") == "complete" else None

    def read_failed(self) -> dict | None:
        try:
            return read_json(self / FAILED)
        except (OSError, ValueError):
            return None

    def lock(self) -> Any:
        """Exclusive flock on the directory (raises fsutil.LockBusy while another process runs it)."""
        return dir_lock(self.path)

    # --- writing -------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget everything of a previous attempt (``--force``); keeps the lock file."""
        for name in (RESULT, FAILED, CHECKPOINT, METRICS, ROUTER, ROUTER_HISTORY, PREDICTIONS, CONFIG):
            (self / name).unlink(missing_ok=True)
        shutil.rmtree(self / TB, ignore_errors=True)
        shutil.rmtree(self / SNAPSHOTS, ignore_errors=True)

    def remove_stale_temp_files(self) -> list[Path]:
        """Delete ``.<name>.tmp-*`` files of writers killed mid-write (call under the lock)."""
        stale = list(self.path.glob(".*.tmp-*")) + list((self / SNAPSHOTS).glob(".*.tmp-*"))
        for path in stale:
            path.unlink(missing_ok=True)
        return stale

    def write_config(self, config: dict) -> None:
        atomic_write_json(self / CONFIG, config)

    def save_checkpoint(self, state: dict) -> None:
        """Atomic ``torch.save``; a kill mid-write leaves the previous checkpoint in place."""

        def write(f: Any) -> None:
            import torch

            torch.save(state, f)
            fault_point("checkpoint_write")  # killed here: temp file written, not renamed

        atomic_write(self / CHECKPOINT, write)

    def load_checkpoint(self) -> dict | None:
        """The last checkpoint (tensors and plain containers only: ``weights_only=True``), or
        None when there is none. An unreadable one is moved aside with a warning, not loaded."""
        import torch

        path = self / CHECKPOINT
        if not path.exists():
            return None
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - any unreadable file: set aside, start over
            aside = path.with_name(CHECKPOINT + ".unreadable")
            os.replace(path, aside)
            print(f"warning: {path} is unreadable ({err.__class__.__name__}); moved to {aside.name}, "
                  "starting this run from scratch", file=sys.stderr)
            return None

    def append_metrics(self, record: dict) -> None:
        with open(self / METRICS, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()

    def read_metrics(self) -> list[dict]:
        """Parsed metric lines; a torn last line (killed mid-append) is skipped."""
        return list(_parse_lines(self / METRICS))

    def truncate_metrics(self, last_step: int) -> None:
        """Drop metric lines written after the checkpoint we resume from (and torn lines)."""
        if not (self / METRICS).exists():
            return
        kept = [r for r in _parse_lines(self / METRICS) if r.get("step", 0) <= last_step]
        text = "".join(json.dumps(r) + "\n" for r in kept)
        atomic_write(self / METRICS, lambda f: f.write(text), mode="w")

    def write_failed(self, reason: str, epoch: int | None) -> None:
        atomic_write_json(self / FAILED, {"reason": reason, "epoch": epoch})

    def clear_failed(self) -> None:
        (self / FAILED).unlink(missing_ok=True)

    def write_router_weights(self, weights: dict) -> None:
        atomic_write_json(self / ROUTER, weights)

    def write_router_history(self, history: dict) -> None:
        atomic_write_json(self / ROUTER_HISTORY, history)

    def read_router_history(self) -> dict | None:
        try:
            history = read_json(self / ROUTER_HISTORY)
        except (OSError, ValueError):
            return None
        return history if isinstance(history, dict) else None

    def save_snapshot(self, epoch: int, state: dict) -> Path:
        """``snapshots/epoch_XXXX.pt``: the trainable tensors at one evaluation (atomic)."""
        import torch

        path = self / SNAPSHOTS / f"epoch_{epoch:04d}.pt"
        atomic_write(path, lambda f: torch.save(state, f))
        return path

    def write_predictions(self, data: bytes) -> None:
        """``predictions.npz`` (bytes from ``predictions.encode``), atomically, before result.json."""
        atomic_write_bytes(self / PREDICTIONS, data)

    def tensorboard_dir(self, label: str, seed: int) -> Path:
        """Where the run's TensorBoard events go: ``tb/<label>_seed<seed>/``, so that
        ``tensorboard --logdir runs`` names each run by its method and seed (TensorBoard names a
        run by its folder), and a resumed run writes to the same one. A run whose events already
        lie in ``tb/`` itself (started before runs were named) keeps writing there."""
        folder = self / TB
        if any(folder.glob("events.out.tfevents.*")):
            return folder
        return folder / tensorboard_name(label, seed)

    def write_result(self, result: dict) -> None:
        """Atomic, and always the last file a successful run writes."""
        text = json.dumps(result, indent=2, sort_keys=True, default=str) + "\n"

        def write(f: Any) -> None:
            f.write(text)
            fault_point("result_write")

        atomic_write(self / RESULT, write, mode="w")


_TB_NAME_CHARS = 120  # a folder name: well under the 255 bytes file systems allow


def tensorboard_name(label: str, seed: int) -> str:
    """``"lily r=32 ne=4 s=1 k,v,mlp"``, seed 0 -> ``"lily_r=32_ne=4_s=1_k,v,mlp_seed0"``: characters
    other than letters, digits and ``.,=+-`` become ``_``; a long label is cut and keeps a hash of
    itself, so two labels never share a name."""
    name = re.sub(r"[^A-Za-z0-9.,=+-]+", "_", label).strip("._") or "run"
    if len(name) > _TB_NAME_CHARS:
        name = f"{name[:_TB_NAME_CHARS - 9]}_{hashlib.sha256(label.encode()).hexdigest()[:8]}"
    return f"{name}_seed{seed}"


def _parse_lines(path: Path) -> Iterator[dict]:
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                yield record

