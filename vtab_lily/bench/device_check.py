"""Device check (issue 13): ``python -m vtab_lily.bench.device_check [--out leaderboards] [--budget 420]``.

On one CUDA GPU with torch, timm and triton (nothing to install), in at most ``--budget``
seconds of measuring (default 420: with start-up and the one step a part may
run past its budget, under 8 minutes), measure and write ``<out>/bench-cuda.md``:
ViT-B/16 + Lily (paper setting, random weights) training images/s in fp32 and bf16, eager and
compiled, with peak memory; evaluation images/s; host syncs per training step of the real
loop; a kill -9 / resume of a tiny run on CUDA; the Triton scan against the reference on the
GPU (max abs error, forward and every gradient) and its speed; Vim-S + Lily step time on each
scan path that runs; and the projected time of the 19-task ViT and Vim runs from the measured
rates. Each part has its own time budget; a part that fails writes its error into the report
and the rest goes on. The report is rewritten after every part, so even a killed check leaves
what it measured. Without CUDA it exits 2 with one line.
"""

from __future__ import annotations

import argparse
import time
import traceback
from pathlib import Path
from typing import Callable

from ..errors import UserError, run_cli
from ..fsutil import atomic_write_bytes
from ..tasks import VTAB_TASKS

# The official recipe per task: 100 epochs of 15 steps of 64 images (1,000 images, drop_last),
# an evaluation of the whole test split every 10 epochs (the 100th included).
EPOCHS, STEPS_PER_EPOCH, BATCH, EVAL_EVERY = 100, 15, 64, 10
TARGETS_MIN = {"vit bf16": 15.0, "vit fp32": 25.0, "vim triton": 40.0}  # issue 13, one H200


class Budget:
    """A part's time allowance: ``left()`` seconds remain; ``over()`` once they are spent."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic):
        self.clock, self.end = clock, clock() + seconds

    def left(self) -> float:
        return max(0.0, self.end - self.clock())

    def over(self) -> bool:
        return self.left() <= 0.0


def project_task_seconds(train_ips: float, eval_ips: float, test_size: int, epochs: int = EPOCHS,
                         steps: int = STEPS_PER_EPOCH, batch: int = BATCH, eval_every: int = EVAL_EVERY) -> float:
    """Seconds for one task's run at the measured rates (training and evaluation compute only)."""
    if train_ips <= 0 or eval_ips <= 0:
        raise ValueError(f"rates must be positive, got train {train_ips}, eval {eval_ips} images/s")
    evaluations = epochs // eval_every + (1 if epochs % eval_every else 0)
    return epochs * steps * batch / train_ips + evaluations * test_size / eval_ips


def project_suite_minutes(train_ips: float, eval_ips: float, tasks=None) -> float:
    """Minutes for the 19 VTAB-1K tasks (or ``tasks``: name -> Task) run one after the other."""
    tasks = VTAB_TASKS if tasks is None else tasks
    return sum(project_task_seconds(train_ips, eval_ips, t.test_size) for t in tasks.values()) / 60.0


def projection_rows(m: dict) -> list[list[str]]:
    """One row per measured configuration: [backbone, setting, train img/s, eval img/s, minutes, target]."""
    rows = []
    for setting, rec in m.get("vit_train", {}).items():
        precision = setting.split()[0]
        ev = m.get("eval", {}).get(f"vit {precision}")
        if "images_per_s" in rec and ev:
            minutes = project_suite_minutes(rec["images_per_s"], ev)
            rows.append(_row("ViT-B/16 + Lily", setting, rec["images_per_s"], ev, minutes, f"vit {precision}"))
    for setting, rec in m.get("vim", {}).items():
        if "images_per_s" in rec and rec.get("eval_images_per_s"):
            minutes = project_suite_minutes(rec["images_per_s"], rec["eval_images_per_s"])
            path = setting.split()[0]
            rows.append(_row("Vim-S + Lily", setting, rec["images_per_s"], rec["eval_images_per_s"], minutes,
                             f"vim {path}"))
    return rows


def _row(backbone, setting, train, ev, minutes, key) -> list[str]:
    target = TARGETS_MIN.get(key)
    verdict = "-" if target is None else f"<= {target:.0f} min: {'MET' if minutes <= target else 'NOT MET'}"
    return [backbone, setting, f"{train:,.0f}", f"{ev:,.0f}", f"{minutes:.1f}", verdict]


def table(headers: list[str], rows: list[list]) -> list[str]:
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return out + [""]


def render(m: dict, sections: list[tuple[str, list[str]]], started: str, total_s: float, done: bool) -> str:
    """The report: header, measured sections (each part's own lines), then the projection."""
    lines = ["# vtab-lily device check (cuda)", "",
             f"Produced by `python -m vtab_lily.bench.device_check` on {started}; "
             f"{'the whole check took' if done else 'INCOMPLETE: stopped or still running after'} {total_s:.0f} s.",
             "Random weights everywhere (no checkpoint needed); batch 64, 224px unless stated.", ""]
    lines += [f"- {k}: {v}" for k, v in m.get("machine", {}).items()] + [""]
    errors = m.get("errors", {})
    if errors:
        lines += ["## Parts that failed", ""] + [f"- **{k}**: {v}" for k, v in errors.items()] + [""]
    for title, body in sections:
        lines += [f"## {title}", "", *body, ""]
    rows = projection_rows(m)
    lines += ["## Projected time of the 19-task runs", "",
              f"Per task: {EPOCHS} epochs x {STEPS_PER_EPOCH} steps x {BATCH} images of training at the measured "
              f"training rate, plus an evaluation of the task's whole test split (sizes in `vtab_lily/tasks.py`, "
              f"{sum(t.test_size for t in VTAB_TASKS.values()):,} images over the 19 tasks) every {EVAL_EVERY} "
              "epochs at the measured evaluation rate of the same precision. Process start, data loading and "
              "checkpoint writes are not included.", ""]
    lines += table(["backbone", "setting", "train img/s", "eval img/s", "19 tasks (min)", "target"], rows) \
        if rows else ["Nothing measured to project from.", ""]
    return "\n".join(lines)


def run_check(out_dir: str | Path, budget_s: float, log: Callable[[str], None] = print) -> tuple[Path, dict]:
    """Run every part within ``budget_s`` seconds; write the report after each; return (path, measurements)."""
    from . import device_parts

    path = Path(out_dir) / "bench-cuda.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    m: dict = {"errors": {}}
    sections: list[tuple[str, list[str]]] = []
    started, t0 = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), time.monotonic()
    total = Budget(budget_s)
    parts = device_parts.PARTS
    for i, (title, part, share) in enumerate(parts):
        remaining_share = sum(s for _, _, s in parts[i:])
        seconds = total.left() * share / remaining_share  # unused time flows to the later parts
        log(f"== {title} ({seconds:.0f} s of {total.left():.0f} s left)")
        p0 = time.monotonic()
        try:
            body = part(m, Budget(seconds), log)
        except Exception as err:  # recorded in the report; the other parts still run
            log(traceback.format_exc())
            m["errors"][title] = f"{type(err).__name__}: {err}".replace("\n", " ")[:500]
            body = [f"ERROR: {m['errors'][title]}"]
        sections.append((title, body + [f"_(took {time.monotonic() - p0:.0f} s of its {seconds:.0f} s)_"]))
        atomic_write_bytes(path, render(m, sections, started, time.monotonic() - t0, False).encode())
    atomic_write_bytes(path, render(m, sections, started, time.monotonic() - t0, True).encode())
    return path, m


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vtab_lily.bench.device_check", allow_abbrev=False,
                                     description=__doc__.split("\n\n")[1].replace("\n", " "))
    parser.add_argument("--out", default="leaderboards", help="folder for bench-cuda.md (default: leaderboards)")
    parser.add_argument("--budget", type=float, default=420.0, help="seconds of measuring (default 420; the whole "
                        "check stays under 8 minutes)")
    parser.add_argument("--debug", action="store_true", help="tracebacks for user errors")
    args = parser.parse_args(argv)
    if not 60 <= args.budget <= 3600:
        raise UserError(f"--budget must be between 60 and 3600 seconds, got {args.budget}")
    import torch

    if not torch.cuda.is_available():
        raise UserError("device check: no CUDA device is available (it measures the GPU paths only)")
    try:
        Path(args.out).mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"--out {args.out}: cannot create the folder ({err.strerror})") from None
    path, m = run_check(args.out, args.budget)
    print(f"wrote {path}")
    for title, error in m["errors"].items():
        print(f"  {title}: ERROR {error}")
    return 1 if m["errors"] else 0


if __name__ == "__main__":
    run_cli(main)
