"""Run one trial: ``python -m vtab_lily.run ARGS`` in a subprocess, its output to a log file.

The same function runs in a local worker thread and inside a Ray task on any node, so every
trial gets the runner's own run directory, skip, resume and lock rules.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable


@dataclass(frozen=True)
class Outcome:
    """How a trial's process ended; ``tail`` is the end of its log when it failed."""

    returncode: int
    seconds: float
    log: str
    tail: str = ""


def run_trial_process(argv: list[str], log_path: str, env: dict[str, str] | None = None,
                      package_root: str | None = None, module: str = "vtab_lily.run") -> Outcome:
    """Run one trial to completion and return its exit status.

    ``env`` adds variables (e.g. ``CUDA_VISIBLE_DEVICES``). ``package_root`` (the folder
    holding ``vtab_lily/`` on the submitting machine) is put on ``PYTHONPATH`` when it exists
    here, so an uninstalled checkout works too; on a cluster, install the package on each node.
    """
    child_env = _child_env(env, package_root)
    command = [sys.executable, "-m", module, *argv]
    log = Path(log_path)
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    with open(log, "ab") as f:
        f.write(f"\n$ {' '.join(command)}\n".encode())
        f.flush()
        code = subprocess.run(command, stdout=f, stderr=subprocess.STDOUT, env=child_env,
                              stdin=subprocess.DEVNULL).returncode
    seconds = time.monotonic() - start
    return Outcome(code, seconds, str(log), _tail(log) if code != 0 else "")


def run_batch_process(trials: list[tuple[list[str], str]], batch_log: str, env: dict[str, str] | None = None,
                      package_root: str | None = None, module: str = "vtab_lily.run",
                      on_done: Callable[[int, int], None] | None = None) -> int:
    """Run several trials in one process: ``python -m vtab_lily.run --batch FILE`` (FILE: one
    JSON list of arguments per line), so imports, the CUDA context and the backbone weights are
    paid once. Each trial's own log gets a line pointing at the batch log. Returns the exit code
    (the worst of its runs: the caller reads each trial's result.json to know which finished).
    ``on_done(index, code)`` is called as each line of the batch ends (read from the batch's
    report file, ``VTAB_LILY_BATCH_REPORT``), so progress moves while the process runs."""
    log = Path(batch_log)
    log.parent.mkdir(parents=True, exist_ok=True)
    jobs = log.with_suffix(".jsonl")
    jobs.write_text("".join(json.dumps(argv) + "\n" for argv, _ in trials), encoding="utf-8")
    command = [sys.executable, "-m", module, "--batch", str(jobs)]
    for i, (argv, trial_log) in enumerate(trials, 1):
        Path(trial_log).parent.mkdir(parents=True, exist_ok=True)
        with open(trial_log, "a", encoding="utf-8") as f:
            f.write(f"\n$ {' '.join(command)}  # line {i} of {len(trials)}: {' '.join(argv)}\n"
                    f"(its output is in {log})\n")
    report = log.with_suffix(".report")
    report.write_text("", encoding="utf-8")
    child_env = _child_env({**(env or {}), "VTAB_LILY_BATCH_REPORT": str(report)}, package_root)
    seen = 0

    def poll() -> None:
        nonlocal seen
        lines = report.read_text(encoding="utf-8", errors="replace").splitlines()
        for line in lines[seen:]:
            code = line.split("\t", 1)[0]
            if on_done is not None and code.lstrip("-").isdigit() and seen < len(trials):
                on_done(seen, int(code))
            seen += 1

    with open(log, "ab") as f:
        f.write(f"\n$ {' '.join(command)}\n".encode())
        f.flush()
        process = subprocess.Popen(command, stdout=f, stderr=subprocess.STDOUT, env=child_env,
                                   stdin=subprocess.DEVNULL)
        while True:
            try:
                code = process.wait(timeout=1.0)
                break
            except subprocess.TimeoutExpired:
                poll()
        poll()
        return code


def tail_of(log_path: str) -> str:
    return _tail(Path(log_path))


def _tail(log: Path, lines: int = 5) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return ""


def _child_env(env: dict[str, str] | None, package_root: str | None) -> dict[str, str]:
    child_env = dict(os.environ)
    child_env.update(env or {})
    if package_root and (Path(package_root) / "vtab_lily").is_dir():
        parts = [package_root] + [p for p in child_env.get("PYTHONPATH", "").split(os.pathsep) if p]
        child_env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(parts))
    return child_env


def package_root() -> str:
    """The folder that holds this ``vtab_lily`` package."""
    return str(Path(__file__).resolve().parents[2])
