"""Device check: ``python -m vtab_lily.bench.device_check [--out DIR] [--budget 400] [--cpu-smoke]``.

On one CUDA GPU with torch, timm and triton (nothing to install, no weights, no data), within
``--budget`` seconds of wall time counted from the process's start (imports, start-up and every
compilation included; default 400, under the 7-minute target), measure and write
``<out>/bench-cuda.md``, then print it: ViT-B/16 + Lily training and evaluation rates side by
side (the code before issue 21, strict fp32, TF32, bf16; eager, compiled, reduce-overhead),
training memory with the data excluded, Dynamo's counters, Vim-S + Lily per scan path, the
Triton scan against the reference (forward and reverse), host syncs per step of the real loop,
a kill -9 / resume, the projected 19-task times and one MET / NOT MET line per target. A part
or row that would not fit the time left is skipped and listed; one that fails writes its error
and the rest go on; the report is rewritten after every part. At the hard deadline a watchdog
writes and prints what was measured and ends the process (exit 3).
``--cpu-smoke`` runs every part on the CPU at toy sizes (under a minute on an idle machine; CI
runs it), writing ``bench-cpu-smoke.md``, so the first GPU call can only fail for GPU reasons.
Without CUDA (and without ``--cpu-smoke``) it exits 2 with one line.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Callable

from ..errors import UserError, run_cli
from ..fsutil import atomic_write_bytes
from . import device_parts
from .device_parts import GPU, SMOKE, Skip, new_context
from .device_report import Budget, render

DEFAULT_BUDGET_S = 400.0  # the 7-minute target less the time to write and print the report
WATCHDOG_GRACE_S = 15.0  # past the budget a running part is abandoned: report written, process ended
EXIT_DEADLINE = 3


def process_age_s() -> float:
    """Seconds since this process started (imports included), from /proc; 0 where unknown."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


class Report:
    """The measurements and sections so far, written atomically (after each part, or by the watchdog)."""

    def __init__(self, path: Path, title: str, argv: str, start: float):
        self.path, self.title, self.start = path, title, start
        self.m: dict = {"errors": {}, "skipped": {}, "argv": argv}
        self.sections: list[tuple[str, list[str]]] = []
        self.started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        self.lock = threading.Lock()

    def wall_s(self) -> float:
        return time.monotonic() - self.start

    def write(self, done: bool) -> str:
        with self.lock:
            text = render(self.m, self.sections, self.started, self.wall_s(), done, self.title)
            atomic_write_bytes(self.path, text.encode())
            return text


def run_check(out_dir: str | Path, budget_s: float, *, smoke: bool = False, log: Callable[[str], None] = print,
              already_s: float = 0.0, holder: dict | None = None) -> tuple[Path, dict, str]:
    """Run every part within ``budget_s`` seconds of wall time (``already_s`` of it already spent
    before this call: process start); return (report path, measurements, report text).
    ``holder["report"]`` gets the :class:`Report` being filled (for the watchdog)."""
    scale = SMOKE if smoke else GPU
    name = "bench-cpu-smoke.md" if smoke else "bench-cuda.md"
    title = "vtab-lily device check: CPU smoke run (toy sizes)" if smoke else "vtab-lily device check (cuda)"
    path = Path(out_dir) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    report = Report(path, title, " --cpu-smoke" if smoke else "", time.monotonic() - already_s)
    if holder is not None:
        holder["report"] = report
    total = Budget(budget_s - already_s)
    ctx = new_context(scale, log)
    for title_, part in device_parts.PARTS:
        log(f"== {title_} ({total.left():.0f} s left)")
        p0 = time.monotonic()
        try:
            body = part(ctx, report.m, total)
        except Skip as why:
            report.m["skipped"][title_] = str(why)
            body = [f"Skipped: {why}"]
        except Exception as err:  # recorded in the report; the other parts still run
            log(traceback.format_exc())
            report.m["errors"][title_] = f"{type(err).__name__}: {err}".replace("\n", " ")[:500]
            body = [f"ERROR: {report.m['errors'][title_]}"]
        with report.lock:
            report.sections.append((title_, body + [f"_(took {time.monotonic() - p0:.0f} s)_"]))
        report.write(False)
    return path, report.m, report.write(True)


def _watchdog(seconds: float, report_getter: Callable[[], Report | None]) -> threading.Timer:
    """At the hard deadline: write and print what was measured, then end the process."""

    def fire() -> None:
        report = report_getter()
        if report is not None:
            report.m["errors"]["deadline"] = (f"the check passed its {seconds:.0f} s hard deadline; the part then "
                                             "running was abandoned")
            print(report.write(False), flush=True)
        os._exit(EXIT_DEADLINE)

    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()
    return timer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vtab_lily.bench.device_check", allow_abbrev=False,
                                     description=__doc__.split("\n\n")[1].replace("\n", " "))
    parser.add_argument("--out", default="leaderboards", help="folder for the report (default: leaderboards)")
    parser.add_argument("--budget", type=float, default=None, help=f"seconds of wall time from process start "
                        f"(default {DEFAULT_BUDGET_S:.0f}; with --cpu-smoke 600, a safety net)")
    parser.add_argument("--cpu-smoke", action="store_true", help="every part on the CPU at toy sizes (CI)")
    parser.add_argument("--debug", action="store_true", help="tracebacks for user errors")
    args = parser.parse_args(argv)
    budget = args.budget if args.budget is not None else (600.0 if args.cpu_smoke else DEFAULT_BUDGET_S)
    if not 30 <= budget <= 3600:  # also refuses nan
        raise UserError(f"--budget must be between 30 and 3600 seconds, got {args.budget}")
    import torch

    if not args.cpu_smoke and not torch.cuda.is_available():
        raise UserError("device check: no CUDA device is available (it measures the GPU paths; "
                        "--cpu-smoke runs its code on the CPU at toy sizes)")
    try:
        Path(args.out).mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"--out {args.out}: cannot create the folder ({err.strerror})") from None
    started_s = process_age_s()
    holder: dict = {}  # the watchdog prints the report the check is filling
    timer = _watchdog(max(1.0, budget - started_s + WATCHDOG_GRACE_S), lambda: holder.get("report"))
    try:
        path, m, text = run_check(args.out, budget, smoke=args.cpu_smoke, holder=holder,
                                  log=lambda s: print(s, file=sys.stderr, flush=True), already_s=started_s)
    finally:
        timer.cancel()
    print(text)
    print(f"wrote {path}", file=sys.stderr)
    for title, error in m["errors"].items():
        print(f"  {title}: ERROR {error}", file=sys.stderr)
    return 1 if m["errors"] else 0


if __name__ == "__main__":
    run_cli(main)
