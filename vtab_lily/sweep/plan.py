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

import hashlib
import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from . import runopts
from .spec import SweepSpec, canonical_fixed, canonical_grid

GRID, FINAL = "grid", "final"
# Machine settings: where or how a run executes, not what it computes. Left out of labels
# (the weights file stays in, by its file name: other weights are another method).
_NOT_IN_LABEL = tuple(n for n in runopts.MACHINE if n != "checkpoint")
_LABEL_MAX = 150  # with the hash appended, a label has at most 161 characters
# values that read unambiguously inside a label (a comma would, inside a grid's braces)
_PLAIN, _PLAIN_FIXED = re.compile(r"^[A-Za-z0-9_.+\-]*$"), re.compile(r"^[A-Za-z0-9_.,+/=\-]*$")


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
            argv += runopts.option_args(key, value)
        if spec.demo:
            argv.append("--demo")
        if spec.paper and self.protocol == "test":  # the test-selected number exists on test only (val grid
            argv.append("--paper")                 # trials of --select val would be refused by the runner)
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
        text = re.sub(r"[^A-Za-z0-9_.=+-]", "_", f"{self.stage}-{self.task}-{self.protocol}-{point}-s{self.seed}")
        if len(text) > 120:  # file names stay well under the 255-byte limit, and distinct
            digest = hashlib.sha256(text.encode()).hexdigest()[:8]
            text = f"{text[:100]}-{digest}-s{self.seed}"
        return text


def point_key(point: dict[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(point.items())


def method_label(spec: SweepSpec) -> str | None:
    """Method name of the tuned runs, the same for every task so they form one leaderboard row,
    and different for any two sweeps whose numbers could differ: the selection rule, the grid's
    keys and values, the seeds (and the scoring ones) and every fixed run option that changes a
    number are in it; machine settings (threads, device, data paths) are not. E.g.
    ``lily (val-selected: scale={0.1,1} x ne={2,4}; seeds 0,1 scored on 0; --epochs 50)``.
    Values that could make two labels read alike get an 8-digit hash of it all appended."""
    if spec.select == "none":
        return None
    how = "val-selected" if spec.select == "val" else "test-best"
    grid = canonical_grid(spec.grid)
    scored = spec.seeds[: spec.select_seeds]
    fixed = [(n, v) for n, v in canonical_fixed(spec.run_args) if n not in _NOT_IN_LABEL]
    fixed = [(n, Path(v).name if n == "checkpoint" and v else v) for n, v in fixed]
    parts = [" x ".join(f"{k}={{{','.join(vs)}}}" for k, vs in grid.items()),
             f"seeds {','.join(map(str, spec.seeds))} scored on {','.join(map(str, scored))}"]
    if fixed:
        parts.append(" ".join(f"--{n}" + ("" if v is None else f" {v}") for n, v in fixed))
    label = f"{spec.adapter} ({how}: {'; '.join(parts)})"
    plain = all(_PLAIN.match(v) for vs in grid.values() for v in vs) and all(
        v is None or _PLAIN_FIXED.match(v) for _, v in fixed)
    if plain and len(label) <= _LABEL_MAX:
        return label
    identity = {"how": how, "grid": grid, "seeds": spec.seeds, "scored": scored, "fixed": fixed}
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:8]
    readable = re.sub(r"[|`\s]+", " ", label)  # never a table separator or a line break
    if len(readable) > _LABEL_MAX:
        readable = readable[: _LABEL_MAX - 4] + " ...)"
    return f"{readable} #{digest}"


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
