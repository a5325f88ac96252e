"""Run one trial: ``python -m vtab_lily.run ARGS`` in a subprocess, its output to a log file.

The same function runs in a local worker thread and inside a Ray task on any node, so every
trial gets the runner's own run directory, skip, resume and lock rules.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Outcome:
    """How a trial's process ended; ``tail`` is the end of its log when it failed."""

    returncode: int
    seconds: float
    log: str
    tail: str = ""


def run_trial_process(argv: list[str], log_path: str, env: dict[str, str] | None = None,
                      package_root: str | None = None) -> Outcome:
    """Run one trial to completion and return its exit status.

    ``env`` adds variables (e.g. ``CUDA_VISIBLE_DEVICES``). ``package_root`` (the folder
    holding ``vtab_lily/`` on the submitting machine) is put on ``PYTHONPATH`` when it exists
    here, so an uninstalled checkout works too; on a cluster, install the package on each node.
    """
    child_env = dict(os.environ)
    child_env.update(env or {})
    if package_root and (Path(package_root) / "vtab_lily").is_dir():
        parts = [package_root] + [p for p in child_env.get("PYTHONPATH", "").split(os.pathsep) if p]
        child_env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(parts))
    command = [sys.executable, "-m", "vtab_lily.run", *argv]
    log = Path(log_path)
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    with open(log, "ab") as f:
        f.write(f"\n$ {' '.join(command)}\n".encode())
        f.flush()
        code = subprocess.run(command, stdout=f, stderr=subprocess.STDOUT, env=child_env,
                              stdin=subprocess.DEVNULL).returncode
    seconds = time.monotonic() - start
    tail = ""
    if code != 0:
        lines = log.read_text(errors="replace").strip().splitlines()
        tail = "\n".join(lines[-5:])
    return Outcome(code, seconds, str(log), tail)


def package_root() -> str:
    """The folder that holds this ``vtab_lily`` package."""
    return str(Path(__file__).resolve().parents[2])
