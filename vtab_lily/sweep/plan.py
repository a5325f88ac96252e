"""Trials (one ordinary run each), the label of selected runs, and per-task selection.

Stages of a sweep, for every task:

- ``select="val"``: each grid point trains on train800 and is scored on val200 (``--protocol
  val``) with the first ``select_seeds`` seeds; the best point is retrained on train800val200
  and tested (``--protocol test``) with every seed, under one method label.
- ``select="test-best"``: the same, but grid points are scored on the test split (the common
  practice, which leaks test labels into the choice); the label says so.
- ``select="none"``: every grid point on the test protocol with every seed; no selection.

Selection rule: the highest mean *final* accuracy over the scoring seeds; ties (equal to
1e-9) go to the point that comes first in grid order (first key varies slowest, values in the
order given).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

from .spec import SweepSpec, option_flag

GRID, FINAL = "grid", "final"
# Run options that say where or how a run executes, not what it computes: left out of labels.
_NOT_IN_LABEL = ("data-root", "device", "checkpoint", "tensorboard", "no-tensorboard", "eval-every", "debug")


@dataclass(frozen=True)
class Trial:
    """One run of ``python -m vtab_lily.run``."""

    task: str
    seed: int
    protocol: str  # "val" or "test"
    point: tuple[tuple[str, str], ...]  # (grid key, value) pairs in grid order
    stage: str  # GRID or FINAL
    method_name: str | None = None

    @property
    def params(self) -> dict[str, str]:
        return dict(self.point)

    def run_argv(self, spec: SweepSpec, out: str) -> list[str]:
        """Arguments of ``python -m vtab_lily.run`` for this trial."""
        argv = ["--backbone", spec.backbone, "--adapter", spec.adapter, "--task", self.task,
                "--protocol", self.protocol, "--seed", str(self.seed), "--out", out]
        for key, value in self.point:
            argv += [option_flag(key), value]
        if spec.demo:
            argv.append("--demo")
        if self.method_name:
            argv += ["--method-name", self.method_name]
        return argv + list(spec.run_args)

    def command(self, spec: SweepSpec, out: str) -> str:
        """The one-line shell command that repeats this run."""
        return shlex.join(["python", "-m", "vtab_lily.run", *self.run_argv(spec, out)])

    @property
    def name(self) -> str:
        """Readable, file-name-safe id, e.g. ``grid-dtd-val-scale=0.1-ne=2-s0``."""
        point = "-".join(f"{k}={v}" for k, v in self.point)
        text = f"{self.stage}-{self.task}-{self.protocol}-{point}-s{self.seed}"
        return re.sub(r"[^A-Za-z0-9_.=+-]", "_", text)


def point_key(point: dict[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(point.items())


def method_label(spec: SweepSpec) -> str | None:
    """Method name of the tuned runs, the same for every task so they form one leaderboard row:
    e.g. ``lily (val-selected: scale x ne)``; fixed recipe options are appended."""
    if spec.select == "none":
        return None
    how = "val-selected" if spec.select == "val" else "test-best"
    label = f"{spec.adapter} ({how}: {' x '.join(spec.grid)}"
    fixed = _label_args(spec.run_args)
    return label + (f"; {fixed})" if fixed else ")")


def _label_args(run_args: list[str]) -> str:
    kept: list[str] = []
    skip_value = False
    for arg in run_args:
        if skip_value:
            skip_value = False
            if not arg.startswith("--"):
                continue
        if arg.startswith("--") and arg[2:].split("=", 1)[0] in _NOT_IN_LABEL:
            skip_value = "=" not in arg
            continue
        kept.append(arg)
    return " ".join(kept)


def grid_protocol(spec: SweepSpec) -> str:
    return "val" if spec.select == "val" else "test"


def grid_trials(spec: SweepSpec, task: str) -> list[Trial]:
    """The first stage for one task (the whole sweep when ``select="none"``)."""
    seeds = spec.seeds if spec.select == "none" else spec.seeds[: spec.select_seeds]
    return [Trial(task, seed, grid_protocol(spec), point_key(point), GRID)
            for point in spec.points() for seed in seeds]


def final_trials(spec: SweepSpec, task: str, point: dict[str, str]) -> list[Trial]:
    """The selected point of one task, retrained on the test protocol with every seed."""
    return [Trial(task, seed, "test", point_key(point), FINAL, method_label(spec)) for seed in spec.seeds]


def choose_point(points: list[dict[str, str]], scores: dict[tuple, list[float]]) -> tuple[dict[str, str], float]:
    """The best grid point by mean score; ties go to the earliest point in ``points``.

    ``scores`` maps :func:`point_key` to the scores (accuracies) of that point's seeds; every
    point needs at least one. Returns the point and its mean score.
    """
    best: tuple[dict[str, str], float] | None = None
    for point in points:
        values = scores[point_key(point)]
        mean = sum(values) / len(values)
        if best is None or mean > best[1] + 1e-9:
            best = (point, mean)
    if best is None:
        raise ValueError("no grid points to choose from")
    return best
