"""The results store: find run directories and read their complete results.

A run directory (``runs/<backbone>/<adapter>/<task>/<config hash>/``, see ARCHITECTURE.md)
counts as a result only when its ``result.json`` exists, parses, and passes the schema
check below. Everything else (a failed run with ``failed.json``, a run still in progress or
killed before it finished, a truncated or malformed ``result.json``, a leftover
``.result.json.tmp-*`` from a killed writer) is skipped and described in a warning, so a
leaderboard never counts a run that did not finish.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

from . import predictions as _predictions
from .errors import UserError, unknown_name
from .predictions import Predictions
from .tasks import get_task

RESULT_SCHEMA = 1
RESULT_FILE = "result.json"
FAILED_FILE = "failed.json"
CONFIG_FILE = "config.json"
ROUTER_FILE = "router_weights.json"
ROUTER_HISTORY_FILE = "router_history.json"
METRICS = ("final", "best")
# Sub-folders of a run directory that never hold other runs (skipped while walking).
_RUN_SUBDIRS = {"tb"}

# field -> expected type(s); nested dicts are checked by _check_fields.
_REQUIRED: dict[str, Any] = {
    "backbone": str,
    "adapter": str,
    "task": str,
    "suite": str,
    "protocol": str,
    "seed": int,
    "method": str,
    "method_hash": str,
    "config_hash": str,
    "accuracy": dict,
    "params": dict,
}
_REQUIRED_ACCURACY = {"final": (int, float)}
_REQUIRED_PARAMS = {"total": int}
# Bounds that keep a hand-edited or corrupted file from reaching arithmetic or paths:
# identifiers are short one-line strings; counts and times are non-negative and finite.
MAX_RESULT_BYTES = 16 * 2**20
MAX_NAME_CHARS = 200
MAX_LABEL_CHARS = 1000
MAX_COUNT = 10**13  # parameters: far above any model here, far below float trouble
MAX_SEED = 2**32
MAX_EXPERTS, MAX_SITES = 256, 4096  # router_weights.json: bounds the heat map's size
_NAME_FIELDS = ("backbone", "adapter", "task", "suite", "protocol", "method_hash", "config_hash")
# Optional sections: when present (and not null) they must be objects of these numbers/strings.
_OPTIONAL_NUMBERS = {"time": ("train_s", "eval_s", "train_images_per_s", "trials_per_gpu"),
                     "memory": ("peak_mb", "train_peak_mb", "data_mb")}


@dataclass
class RunStatus:
    """What one run directory holds: ``state`` is complete, failed, incomplete or malformed."""

    run_dir: Path
    state: str
    detail: str = ""
    result: dict | None = None
    config: dict | None = field(default=None, repr=False)


def _is_number(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if isinstance(value, int):  # math.isfinite overflows on huge integers
        return abs(value) < 10**300
    return math.isfinite(value)


def _type_ok(value: Any, expected: Any) -> bool:
    if isinstance(value, bool):  # bool is an int subclass; never a valid count or accuracy
        return False
    if expected in ((int, float), float):
        return _is_number(value)
    return isinstance(value, expected)


def validate_result(obj: Any, where: str) -> dict:
    """Check a parsed result.json against the schema; raise UserError naming ``where``."""
    if not isinstance(obj, dict):
        raise UserError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    if obj.get("schema") != RESULT_SCHEMA:
        raise UserError(f"{where}: unsupported schema {obj.get('schema')!r} (this version reads schema {RESULT_SCHEMA})")
    if obj.get("status") != "complete":
        raise UserError(f"{where}: status is {obj.get('status')!r}, not 'complete'")
    _check_fields(obj, _REQUIRED, where, "")
    _check_fields(obj["accuracy"], _REQUIRED_ACCURACY, where, "accuracy.")
    _check_fields(obj["params"], _REQUIRED_PARAMS, where, "params.")
    _check_ranges(obj, where)
    _check_optional(obj, where)
    return obj


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_ranges(obj: dict, where: str) -> None:
    """Identifiers are short one-line strings; accuracies percentages; counts sane integers."""
    for key in _NAME_FIELDS:
        value = obj[key]
        if not value or len(value) > MAX_NAME_CHARS or any(c in value for c in "\n\r\0"):
            raise UserError(f"{where}: field {key!r} must be a non-empty one-line string, got {_short(value)}")
    if not obj["method"].strip() or len(obj["method"]) > MAX_LABEL_CHARS:
        raise UserError(f"{where}: field 'method' must be a non-empty label of at most {MAX_LABEL_CHARS} characters")
    if not 0 <= obj["seed"] < MAX_SEED:
        raise UserError(f"{where}: field 'seed' must be in [0, 2**32), got {_short(obj['seed'])}")
    acc = obj["accuracy"]
    for key in ("final", "best"):
        value = acc.get(key)
        if value is None and key == "best":
            continue
        if not _is_number(value) or not 0 <= value <= 100:
            raise UserError(f"{where}: accuracy.{key} must be a percentage in [0, 100], got {_short(value)}")
    epoch = acc.get("best_epoch")
    if epoch is not None and not (_type_ok(epoch, int) and 0 <= epoch < MAX_SEED):
        raise UserError(f"{where}: accuracy.best_epoch must be a non-negative integer or null, got {_short(epoch)}")
    reported = acc.get("reported")
    if reported is not None and reported not in ("final", "test-selected"):
        raise UserError(f"{where}: accuracy.reported must be 'final' or 'test-selected', got {_short(reported)}")
    for key, value in obj["params"].items():
        if key in ("total", "adapter", "head", "backbone") and not (_type_ok(value, int) and 0 <= value < MAX_COUNT):
            raise UserError(f"{where}: params.{key} must be a non-negative integer count, got {_short(value)}")


def _check_optional(obj: dict, where: str) -> None:
    """The sections older results may lack; present ones must have the right shape."""
    for section, keys in _OPTIONAL_NUMBERS.items():
        value = obj.get(section)
        if value is None:
            continue
        if not isinstance(value, dict):
            raise UserError(f"{where}: field {section!r} must be an object, got {_short(value)}")
        for key in keys:
            number = value.get(key)
            if number is not None and not (_is_number(number) and 0 <= number < 1e12):
                raise UserError(f"{where}: {section}.{key} must be a non-negative number, got {_short(number)}")
    for key in ("kind",):
        memory_kind = (obj.get("memory") or {}).get(key)
        if memory_kind is not None and not isinstance(memory_kind, str):
            raise UserError(f"{where}: memory.kind must be a string, got {_short(memory_kind)}")
    deviations = obj.get("deviations")
    if deviations is not None and not (isinstance(deviations, list) and all(isinstance(d, str) and d.strip() for d in deviations)):
        raise UserError(f"{where}: field 'deviations' must be a list of non-empty strings, got {_short(deviations)}")
    for key in ("precision", "finished_at"):
        if obj.get(key) is not None and not isinstance(obj[key], str):
            raise UserError(f"{where}: field {key!r} must be a string, got {_short(obj[key])}")
    for key in ("data", "kernels", "config"):
        if obj.get(key) is not None and not isinstance(obj[key], dict):
            raise UserError(f"{where}: field {key!r} must be an object, got {_short(obj[key])}")
    for key, value in (obj.get("data") or {}).items():
        if key in ("fingerprint", "encoding", "source") and value is not None and not isinstance(value, str):
            raise UserError(f"{where}: data.{key} must be a string or null, got {_short(value)}")
    if obj.get("predictions") is not None:
        _predictions.check_record(obj["predictions"], where)


def _check_fields(obj: dict, spec: dict[str, Any], where: str, prefix: str) -> None:
    for key, expected in spec.items():
        if key not in obj:
            raise UserError(f"{where}: missing field {prefix}{key!r}")
        if not _type_ok(obj[key], expected):
            raise UserError(f"{where}: field {prefix}{key!r} has a bad value {obj[key]!r}")


def load_result(path: str | os.PathLike) -> dict:
    """Read and validate one result.json; the returned dict gains ``run_dir`` (a str)."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_RESULT_BYTES:
            raise UserError(f"{path}: larger than {MAX_RESULT_BYTES // 2**20} MiB; not a result.json")
        text = path.read_bytes().decode("utf-8")
    except OSError as err:
        raise UserError(f"{path}: cannot read ({err.strerror})") from None
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not valid UTF-8 (byte {err.start}); corrupted?") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as err:
        raise UserError(f"{path}:{err.lineno}: not valid JSON ({err.msg}); truncated or hand-edited?") from None
    except (ValueError, RecursionError) as err:  # e.g. an integer of thousands of digits, deep nesting
        raise UserError(f"{path}: not a usable JSON document ({str(err)[:80]})") from None
    result = validate_result(obj, str(path))
    result["run_dir"] = str(path.parent)
    return result


def _read_json_quietly(path: Path) -> Any:
    try:
        if path.stat().st_size > MAX_RESULT_BYTES:
            return None
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None


def find_run_dirs(runs_dir: str | os.PathLike) -> list[Path]:
    """Every directory under ``runs_dir`` that looks like a run (has a config, result or failure file)."""
    root = check_runs_dir(runs_dir)
    marker_files = {RESULT_FILE, FAILED_FILE, CONFIG_FILE}
    found = []
    for folder, subdirs, files in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if d not in _RUN_SUBDIRS and not d.startswith("."))
        if marker_files & set(files):
            found.append(Path(folder))
    return sorted(found)


def check_runs_dir(runs_dir: str | os.PathLike) -> Path:
    root = Path(runs_dir)
    if not root.exists():
        raise UserError(f"--runs {root}: no such directory (nothing has been run yet, or a wrong path?)")
    if not root.is_dir():
        raise UserError(f"--runs {root}: not a directory")
    return root


def run_status(run_dir: str | os.PathLike) -> RunStatus:
    """Classify one run directory; only a valid result.json makes it ``complete``."""
    run_dir = Path(run_dir)
    result_path, failed_path = run_dir / RESULT_FILE, run_dir / FAILED_FILE
    config = _read_json_quietly(run_dir / CONFIG_FILE)
    config = config if isinstance(config, dict) else None
    if failed_path.exists():
        failure = _read_json_quietly(failed_path)
        reason = failure.get("reason", "?") if isinstance(failure, dict) else "unreadable failed.json"
        detail = f"failed: {reason}"
        if result_path.exists():  # the contract forbids both; trust neither
            return RunStatus(run_dir, "malformed", f"has both {RESULT_FILE} and {FAILED_FILE} ({detail})", config=config)
        return RunStatus(run_dir, "failed", detail, config=config)
    if not result_path.exists():
        return RunStatus(run_dir, "incomplete", f"no {RESULT_FILE} (still running or interrupted)", config=config)
    try:
        result = load_result(result_path)
    except UserError as err:
        return RunStatus(run_dir, "malformed", str(err), config=config)
    return RunStatus(run_dir, "complete", "", result=result, config=config)


def scan_runs(runs_dir: str | os.PathLike) -> list[RunStatus]:
    """The status of every run directory under ``runs_dir``, in path order."""
    return [run_status(d) for d in find_run_dirs(runs_dir)]


def iter_results(runs_dir: str | os.PathLike, warnings: list[str] | None = None) -> list[dict]:
    """All complete, valid results under ``runs_dir`` (each with a ``run_dir`` key).

    Skipped run directories (failed, incomplete, malformed) are described, one line each,
    in ``warnings`` when a list is given. A missing ``runs_dir`` raises UserError.
    """
    results = []
    for status in scan_runs(runs_dir):
        if status.state == "complete":
            results.append(status.result)
        elif warnings is not None:
            warnings.append(f"skipped {status.run_dir} ({status.state}): {status.detail}")
    return results


def accuracy(result: dict, metric: str = "final") -> float | None:
    """The result's accuracy (percent) under ``metric`` ('final' or 'best'); None if not recorded."""
    if metric not in METRICS:
        raise unknown_name("metric", metric, METRICS)
    value = result["accuracy"].get(metric)
    return float(value) if _is_number(value) else None


def group_results(results: Iterable[dict], *keys: str) -> dict[tuple, list[dict]]:
    """Results grouped by the values of ``keys`` (insertion order kept)."""
    groups: dict[tuple, list[dict]] = {}
    for result in results:
        groups.setdefault(tuple(result.get(k) for k in keys), []).append(result)
    return groups


def _router_rows(path: Path, sites: Any, experts: Any, weights: Any, what: str) -> list[list[float]]:
    """``weights`` as one row of 1..``experts`` finite numbers per site, else a UserError naming ``path``."""
    if not isinstance(sites, list) or not isinstance(experts, int) or isinstance(experts, bool) or experts < 1:
        raise UserError(f"{path}: needs 'sites' (a list) and 'experts' (a positive int)")
    if experts > MAX_EXPERTS or len(sites) > MAX_SITES:
        raise UserError(f"{path}: {experts} experts x {len(sites)} sites is beyond any Lily model here "
                        f"(at most {MAX_EXPERTS} x {MAX_SITES})")
    if not isinstance(weights, list) or len(weights) != len(sites):
        raise UserError(f"{path}: {what} must have one row per site ({len(sites)})")
    for i, row in enumerate(weights):
        # a site may have fewer experts than the widest one (Vim Lily's dt_proj sites have one)
        if not isinstance(row, list) or not 1 <= len(row) <= experts or not all(_is_number(v) for v in row):
            raise UserError(f"{path}: {what}[{i}] must be 1 to {experts} numbers")
    if weights and max(len(row) for row in weights) != experts:
        raise UserError(f"{path}: 'experts' is {experts} but the widest site has {max(len(row) for row in weights)}")
    return [[float(v) for v in row] for row in weights]


def _router_object(path: Path) -> dict | None:
    """A router file's JSON object; None when the file is absent."""
    if not path.exists():
        return None
    obj = _read_json_quietly(path)
    if not isinstance(obj, dict):
        raise UserError(f"{path}: not a JSON object (truncated?)")
    return obj


def read_router_weights(run_dir: str | os.PathLike) -> dict | None:
    """The run's router_weights.json when present and well formed, else None.

    Raises UserError when the file exists but does not match
    ``{"sites": [...], "experts": ne, "weights": [[ne floats] per site]}``.
    """
    path = Path(run_dir) / ROUTER_FILE
    obj = _router_object(path)
    if obj is None:
        return None
    sites, experts = obj.get("sites"), obj.get("experts")
    weights = _router_rows(path, sites, experts, obj.get("weights"), "weights")
    return {"sites": [str(s) for s in sites], "experts": experts, "weights": weights}


def read_router_history(run_dir: str | os.PathLike) -> dict | None:
    """The run's router_history.json when present and well formed, else None; a UserError
    naming the file when it does not match ``{"sites", "experts", "epochs": [int, ...],
    "weights": [one router_weights-like table per epoch]}``."""
    path = Path(run_dir) / ROUTER_HISTORY_FILE
    obj = _router_object(path)
    if obj is None:
        return None
    sites, experts, epochs, tables = obj.get("sites"), obj.get("experts"), obj.get("epochs"), obj.get("weights")
    if not isinstance(epochs, list) or not all(isinstance(e, int) and not isinstance(e, bool) and e >= 0 for e in epochs):
        raise UserError(f"{path}: 'epochs' must be a list of epoch numbers")
    if len(set(epochs)) != len(epochs):
        raise UserError(f"{path}: an epoch is listed twice")
    if not isinstance(tables, list) or len(tables) != len(epochs):
        raise UserError(f"{path}: 'weights' must have one table per epoch ({len(epochs)})")
    weights = [_router_rows(path, sites, experts, table, f"weights[{i}]") for i, table in enumerate(tables)]
    return {"sites": [str(s) for s in sites], "experts": experts, "epochs": epochs, "weights": weights}


def read_predictions(run_dir: str | os.PathLike) -> Predictions | None:
    """The run's per-example predictions (``predictions.npz``), checked against its result.json
    (n, classes, run, list, both accuracies); None for a run made before they were kept (neither
    the file nor result.json's ``predictions``). Anything else wrong is a UserError naming the file."""
    run_dir = Path(run_dir)
    result = load_result(run_dir / RESULT_FILE)
    path = run_dir / _predictions.FILE
    if result.get("predictions") is None:
        if path.exists():
            raise UserError(f"{path}: result.json records no predictions, so this file is not the run's "
                            "(copied in?); remove it")
        return None
    if not path.exists():
        raise UserError(f"{path}: missing, though {run_dir / RESULT_FILE} records it")
    return _predictions.check(path, _predictions.load(path), result, _num_classes(result))


def _num_classes(result: dict) -> int | None:
    """The task's class count: the run's config, else the task registry; None when unknown."""
    config = result.get("config") if isinstance(result.get("config"), dict) else {}
    count = config.get("num_classes")
    if isinstance(count, int) and not isinstance(count, bool) and count > 0:
        return count
    try:
        return get_task(result["task"], result["suite"]).num_classes
    except UserError:
        return None


# ---- Fields added in round 2 (older results lack them): read them in one place ----

def finished_utc(result: dict) -> datetime:
    """``finished_at`` as an aware UTC datetime. Strings with an offset or ``Z`` are converted;
    older local-time strings without an offset are taken as UTC; missing or unparseable
    values sort first (datetime.min)."""
    text = result.get("finished_at")
    oldest = datetime.min.replace(tzinfo=timezone.utc)
    try:
        when = datetime.fromisoformat(text) if isinstance(text, str) else None
        if when is None:
            return oldest
        return when.replace(tzinfo=timezone.utc) if when.tzinfo is None else when.astimezone(timezone.utc)
    except (ValueError, OverflowError):  # unparseable, or out of range once converted to UTC
        return oldest


def deviations_of(result: dict) -> tuple[str, ...] | None:
    """The settings that differ from the official setup (sorted); () = official; None = not recorded."""
    value = result.get("deviations")
    return tuple(sorted(value)) if isinstance(value, list) else None


def precision_of(result: dict) -> str | None:
    value = result.get("precision")
    if value is None and isinstance(result.get("config"), dict):
        value = result["config"].get("precision")
    return value if isinstance(value, str) else None


def data_of(result: dict) -> dict[str, str | None]:
    """``{"fingerprint", "encoding", "source"}`` of the data the run used (None when not recorded)."""
    data = result.get("data") if isinstance(result.get("data"), dict) else {}
    return {k: data.get(k) if isinstance(data.get(k), str) else None for k in ("fingerprint", "encoding", "source")}


def adapter_config_of(result: dict) -> dict:
    config = result.get("config") if isinstance(result.get("config"), dict) else {}
    adapter_config = config.get("adapter_config")
    return adapter_config if isinstance(adapter_config, dict) else {}


def params_without_head(result: dict) -> int | None:
    """Trainable parameters without the classification head, as papers print them."""
    params = result["params"]
    head, adapter = params.get("head"), params.get("adapter")
    if isinstance(head, int) and not isinstance(head, bool):
        return max(params["total"] - head, 0)
    return adapter if isinstance(adapter, int) and not isinstance(adapter, bool) else None


def row_key(result: dict) -> tuple:
    """What must be equal for two results to share a leaderboard row: the method hash plus the
    settings older run.py versions left out of it (deviations, precision). Data is compared
    per task by the leaderboard (each task has its own fingerprint)."""
    return (result["method_hash"], deviations_of(result), precision_of(result))
