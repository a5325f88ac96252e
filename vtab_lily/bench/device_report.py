"""The device check's budget, projections, targets and report text (no torch, no measuring).

``device_parts`` measures into one dict ``m``; this module turns ``m`` into the report:
side-by-side rates, the projected 19-task times and one MET / NOT MET / NOT MEASURED line per
target of the issue the check was written for (one H100 or H200; projected from measured rates).
"""

from __future__ import annotations

import time
from typing import Callable

from ..tasks import VTAB_TASKS

# The official recipe per task: 100 epochs of 15 steps of 64 images (1,000 images, drop_last),
# an evaluation of the whole test split every 10 epochs (the 100th included).
EPOCHS, STEPS_PER_EPOCH, BATCH, EVAL_EVERY = 100, 15, 64, 10
WALL_TARGET_S = 7 * 60  # the whole check, process start and compilation included


class Budget:
    """A time allowance: ``left()`` seconds remain; ``over()`` once they are spent."""

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


def table(headers: list[str], rows: list[list]) -> list[str]:
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return out + [""]


def best(records: dict, precision: str) -> tuple[str, dict] | None:
    """The fastest measured training setting of ``precision`` that also has an evaluation rate."""
    found = [(k, r) for k, r in records.items() if r.get("precision") == precision and r.get("eval_images_per_s")]
    return max(found, key=lambda kr: kr[1]["images_per_s"], default=None)


def _verdict(value: float | None, target: float, at_least: bool) -> str:
    if value is None:
        return "NOT MEASURED"
    return "MET" if (value >= target if at_least else value <= target) else "NOT MET"


def target_lines(m: dict, wall_s: float) -> list[str]:
    """One line per target, MET / NOT MET from the measured figures, NOT MEASURED with the reason."""
    vit, vim = m.get("vit", {}), m.get("vim", {})
    default = m.get("vit_default", "tf32")
    lines = []

    def rate(precision: str, what: str, target: float, label: str) -> None:
        pick = best(vit, precision)
        value = pick[1][what] if pick else None
        where = f" ({pick[0]})" if pick else f" (no {precision} measurement)"
        shown = "-" if value is None else f"{value:,.0f} images/s"
        lines.append(f"- {label} >= {target:,.0f} images/s: {shown}{where}: **{_verdict(value, target, True)}**")

    def suite(records: dict, precision: str, target: float, label: str, what: str = "") -> None:
        pick = best(records, precision)
        minutes = project_suite_minutes(pick[1]["images_per_s"], pick[1]["eval_images_per_s"]) if pick else None
        where = f" ({pick[0]})" if pick else f" (no {what}{precision} measurement)"
        shown = "-" if minutes is None else f"{minutes:.1f} min"
        lines.append(f"- {label} <= {target:.0f} min: {shown}{where}: **{_verdict(minutes, target, False)}**")

    rate("bf16", "images_per_s", 5000, "ViT-B/16 + Lily training, bf16, batch 64")
    rate(default, "images_per_s", 2500, f"ViT-B/16 + Lily training at the faithful default ({default}), batch 64")
    rate("bf16", "eval_images_per_s", 12000, "ViT-B/16 + Lily evaluation, bf16")
    rate(default, "eval_images_per_s", 12000, f"ViT-B/16 + Lily evaluation at the faithful default ({default})")
    suite(vit, "bf16", 15, "ViT-B/16 + Lily, 19 tasks in bf16")
    suite(vit, default, 25, f"ViT-B/16 + Lily, 19 tasks at the faithful default ({default})")
    vim_triton = {k: r for k, r in vim.items() if r.get("scan") == "triton"}
    suite(vim_triton, m.get("vim_default", "tf32-conv"), 40, "Vim-S + Lily on the Triton scan, 19 tasks", "Triton ")
    lines.append(f"- This check <= {WALL_TARGET_S // 60} min wall, process start and compilation included: "
                 f"{wall_s:.0f} s: **{_verdict(wall_s, WALL_TARGET_S, False)}**")
    lines.append("- CPU: nothing slower than `leaderboards/bench-cpu.md`: **NOT MEASURED** here (a GPU check; "
                 "`python -m vtab_lily.bench` on a CPU measures it)")
    return lines


def rate_rows(records: dict) -> list[list[str]]:
    rows = []
    for key, r in records.items():
        evals = r.get("eval_by_batch", {})
        rows.append([key, r.get("note", ""), f"{r['images_per_s']:,.0f}", f"{r['step_ms']:.1f}",
                     "-" if r.get("train_mib") is None else f"{r['train_mib']:,.0f}",
                     ", ".join(f"{v:,.0f} @{b}" for b, v in evals.items()) or "-",
                     "-" if r.get("compile_s") is None else f"{r['compile_s']:.0f}"])
    return rows


RATE_HEADERS = ["setting", "what it is", "train img/s", "step ms", "train MiB", "eval img/s @batch", "compile s"]


def projection_rows(m: dict) -> list[list[str]]:
    rows = []
    for name, records in (("ViT-B/16 + Lily", m.get("vit", {})), ("Vim-S + Lily", m.get("vim", {}))):
        for key, r in records.items():
            if r.get("eval_images_per_s"):
                minutes = project_suite_minutes(r["images_per_s"], r["eval_images_per_s"])
                rows.append([name, key, f"{r['images_per_s']:,.0f}", f"{r['eval_images_per_s']:,.0f}", f"{minutes:.1f}"])
    return rows


def render(m: dict, sections: list[tuple[str, list[str]]], started: str, wall_s: float, done: bool,
           title: str = "vtab-lily device check (cuda)") -> str:
    """The report: header, targets, measured sections (each part's own lines), then the projection."""
    state = "the whole check took" if done else "INCOMPLETE: stopped after"
    lines = [f"# {title}", "",
             f"Produced by `python -m vtab_lily.bench.device_check{m.get('argv', '')}` on {started}; {state} "
             f"{wall_s:.0f} s from process start.",
             "Random weights everywhere (no checkpoint needed); ViT batch 64 at 224 px unless stated.", ""]
    lines += [f"- {k}: {v}" for k, v in m.get("machine", {}).items()] + [""]
    lines += ["## Targets", "", *target_lines(m, wall_s), ""]
    errors, skipped = m.get("errors", {}), m.get("skipped", {})
    if errors:
        lines += ["## Parts that failed", ""] + [f"- **{k}**: {v}" for k, v in errors.items()] + [""]
    if skipped:
        lines += ["## Skipped (would not fit the time budget, or cannot run here)", ""]
        lines += [f"- {k}: {v}" for k, v in skipped.items()] + [""]
    for heading, body in sections:
        lines += [f"## {heading}", "", *body, ""]
    rows = projection_rows(m)
    lines += ["## Projected time of the 19-task runs", "",
              f"Per task: {EPOCHS} epochs x {STEPS_PER_EPOCH} steps x {BATCH} images of training at the measured "
              f"training rate, plus an evaluation of the task's whole test split ("
              f"{sum(t.test_size for t in VTAB_TASKS.values()):,} images over the 19 tasks) every {EVAL_EVERY} "
              "epochs at the setting's measured evaluation rate (batch 256, Lily's official batch). Process "
              "start, data loading and checkpoint writes are not included.", ""]
    lines += table(["backbone", "setting", "train img/s", "eval img/s", "19 tasks (min)"], rows) \
        if rows else ["Nothing measured to project from.", ""]
    return "\n".join(lines)
