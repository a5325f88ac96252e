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
from pathlib import Path
from typing import Any, Iterable

from .errors import UserError, unknown_name

RESULT_SCHEMA = 1
RESULT_FILE = "result.json"
FAILED_FILE = "failed.json"
CONFIG_FILE = "config.json"
ROUTER_FILE = "router_weights.json"
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


@dataclass
class RunStatus:
    """What one run directory holds: ``state`` is complete, failed, incomplete or malformed."""

    run_dir: Path
    state: str
    detail: str = ""
    result: dict | None = None
    config: dict | None = field(default=None, repr=False)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


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
    best = obj["accuracy"].get("best")
    if best is not None and not _is_number(best):
        raise UserError(f"{where}: accuracy.best must be a number or null, got {best!r}")
    for section, key in (("time", "train_s"), ("memory", "peak_mb")):
        value = (obj.get(section) or {}).get(key)
        if value is not None and not _is_number(value):
            raise UserError(f"{where}: {section}.{key} must be a number, got {value!r}")
    return obj


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
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise UserError(f"{path}: cannot read ({err.strerror})") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as err:
        raise UserError(f"{path}:{err.lineno}: not valid JSON ({err.msg}); truncated or hand-edited?") from None
    result = validate_result(obj, str(path))
    result["run_dir"] = str(path.parent)
    return result


def _read_json_quietly(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
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


def read_router_weights(run_dir: str | os.PathLike) -> dict | None:
    """The run's router_weights.json when present and well formed, else None.

    Raises UserError when the file exists but does not match
    ``{"sites": [...], "experts": ne, "weights": [[ne floats] per site]}``.
    """
    path = Path(run_dir) / ROUTER_FILE
    if not path.exists():
        return None
    obj = _read_json_quietly(path)
    if not isinstance(obj, dict):
        raise UserError(f"{path}: not a JSON object (truncated?)")
    sites, experts, weights = obj.get("sites"), obj.get("experts"), obj.get("weights")
    if not isinstance(sites, list) or not isinstance(experts, int) or isinstance(experts, bool) or experts < 1:
        raise UserError(f"{path}: needs 'sites' (a list) and 'experts' (a positive int)")
    if not isinstance(weights, list) or len(weights) != len(sites):
        raise UserError(f"{path}: 'weights' must have one row per site ({len(sites)})")
    for i, row in enumerate(weights):
        if not isinstance(row, list) or len(row) != experts or not all(_is_number(v) for v in row):
            raise UserError(f"{path}: weights[{i}] must be {experts} numbers")
    return {"sites": [str(s) for s in sites], "experts": experts, "weights": weights}
