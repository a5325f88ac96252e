"""Drive a sweep: plan trials, skip finished ones, run the rest on a backend, select per task.

Every trial is one ordinary ``python -m vtab_lily.run`` process, so stopping the sweep at any
point and starting it again repeats nothing: trials whose ``result.json`` exists are counted
as done without starting a process, and interrupted ones resume from their checkpoint. A
task's selected runs start as soon as that task's grid is finished (tasks do not wait for
each other). A failed trial never stops the sweep; it is listed at the end.
"""

from __future__ import annotations

import sys
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..fsutil import atomic_write_json
from ..results import RunStatus, run_status
from .backends import Backend
from .plan import GRID, Trial, choose_point, final_trials, grid_protocol, grid_trials, method_label
from .spec import SweepSpec

# run argv -> the run directory ``python -m vtab_lily.run`` uses for it (None: not started yet)
Locator = Callable[[list[str]], "Path | None"]
METRIC = "final"
PAPER_METRIC = "best"  # --paper: the test-selected number (best test accuracy over the evaluations)
TIE_RULE = ("highest mean final accuracy over the scoring seeds; ties (within 1e-9) go to the "
            "point listed first in grid order (first key slowest, values in the order given)")


@dataclass
class TaskSelection:
    """The grid scores of one task and, once the grid is complete, its chosen point."""

    task: str
    scores: dict[tuple, dict[int, float]] = field(default_factory=dict)  # point -> seed -> accuracy
    chosen: dict[str, str] | None = None
    chosen_score: float | None = None
    error: str | None = None


@dataclass
class SweepState:
    """Everything the sweep knows so far; the reports are written from it."""

    spec: SweepSpec
    out: str
    sweep_dir: Path
    status: dict[Trial, str] = field(default_factory=dict)  # done | skipped | failed
    results: dict[Trial, dict] = field(default_factory=dict)
    failures: dict[Trial, str] = field(default_factory=dict)
    selections: dict[str, TaskSelection] = field(default_factory=dict)
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)

    def warn(self, line: str) -> None:
        """Print a warning once (a malformed result is seen at every look-up)."""
        if line not in self.warnings:
            self.warnings.append(line)
            print(f"warning: {line}", file=sys.stderr)

    @property
    def failed(self) -> list[Trial]:
        return [t for t, s in self.status.items() if s == "failed"]

    def ok(self) -> bool:
        return not self.failed and not any(s.error for s in self.selections.values())


class Progress:
    """The live line: done / running / failed / remaining trials (tqdm), and an ETA from the rate
    at which trials that ran here finished (skipped ones take no time and would flatter it);
    none until one has finished. tqdm's own estimate is left out: it counts skips as work."""

    def __init__(self, total: int, enabled: bool):
        import time

        from tqdm import tqdm

        self.bar = tqdm(total=total, desc="sweep", unit="trial", disable=not enabled, dynamic_ncols=True,
                        file=sys.stderr, bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]")
        self.total = total
        self.done = self.failed = self.skipped = 0
        self.clock = time.monotonic
        self.start = self.clock()

    def update(self, running: int, finished: int = 0, failed: int = 0, skipped: int = 0) -> None:
        self.done += finished
        self.failed += failed
        self.skipped += skipped
        self.bar.update(finished + failed + skipped)
        left = max(0, self.total - self.done - self.failed - self.skipped)
        self.bar.set_postfix_str(f"done {self.done + self.skipped}, running {running}, failed {self.failed}, "
                                 f"remaining {max(0, left - running)}, eta {self.eta(left)}", refresh=True)

    def eta(self, left: int) -> str:
        ran = self.done + self.failed
        if not ran:
            return "?"
        seconds = int(left * (self.clock() - self.start) / ran)
        return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"

    def shrink(self, count: int) -> None:
        self.total -= count
        self.bar.total -= count
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


class WrongRun(Exception):
    """The run directory found for a trial holds a different run."""


def read_finished(run_dir: Path | None, trial: Trial, warn: Callable[[str], None] | None = None) -> dict | None:
    """The trial's complete result, or None; raises WrongRun when it is not the run asked for.

    A malformed result.json (bad UTF-8, wrong types, a number too large to parse) is never
    fatal: it counts as not finished and ``warn`` gets one line naming the file."""
    if run_dir is None:
        return None
    try:
        status = run_status(run_dir)
    except Exception as err:  # noqa: BLE001 - whatever the reader trips on, the sweep goes on
        status = RunStatus(Path(run_dir), "malformed", f"{Path(run_dir) / 'result.json'}: unreadable "
                                                     f"({err.__class__.__name__}: {err})"[:500])
    if status.state == "malformed" and warn is not None:
        warn(f"skipped {status.run_dir} (malformed result): {status.detail}")
    if status.state != "complete" or not isinstance(status.result, dict):
        return None
    result = status.result
    if result.get("protocol") != trial.protocol or result.get("seed") != trial.seed or result.get("task") != trial.task:
        raise WrongRun(f"{run_dir}: result.json is for {result.get('task')!r} protocol {result.get('protocol')!r} "
                           f"seed {result.get('seed')!r}, expected {trial.task!r} {trial.protocol!r} seed {trial.seed}")
    if trial.method_name and result.get("method") != trial.method_name:
        raise WrongRun(f"{run_dir}: result.json is labelled {result.get('method')!r}, expected "
                           f"{trial.method_name!r}; does vtab_lily.run honour --method-name?")
    return result


def grid_score(result: dict, spec: SweepSpec) -> float:
    """The number a grid point is judged by. With ``select="val"`` it must come from the
    validation split: a test accuracy here would be leakage, so it stops the sweep."""
    accuracy = result["accuracy"]
    if spec.select == "val" and (result.get("protocol") != "val" or accuracy.get("eval_split") == "test"):
        raise RuntimeError(f"{result.get('run_dir')}: val selection was handed a test-split result; refusing to use it")
    return float(accuracy[METRIC])


class SweepDriver:
    """Runs a sweep's trials on ``backend``; ``out`` is the run folder the trials get, and
    ``shown_out`` how the reports spell it in commands (default: the same)."""

    def __init__(self, spec: SweepSpec, out: str, sweep_dir: Path, backend: Backend, locate: Locator,
                 progress: bool = True, on_update: Callable[[SweepState], None] | None = None,
                 shown_out: str | None = None):
        self.spec, self.out, self.backend, self.locate = spec, out, backend, locate
        self.state = SweepState(spec, shown_out or out, sweep_dir)
        self.show_progress = progress
        self.on_update = on_update or (lambda state: None)

    def trial_dir(self, trial: Trial) -> Path | None:
        return self.locate(trial.run_argv(self.spec, self.out))

    def run(self) -> SweepState:
        import time

        start = time.monotonic()
        spec, state = self.spec, self.state
        pending: deque[Trial] = deque()
        for task in spec.tasks:
            state.selections[task] = TaskSelection(task)
            pending.extend(grid_trials(spec, task))
        finals = 0 if spec.select == "none" else len(spec.tasks) * len(spec.seeds)
        progress = Progress(len(pending) + finals, self.show_progress)
        inflight: dict[Any, Trial] = {}
        try:
            while pending or inflight:
                while pending:
                    trial = pending.popleft()
                    try:
                        result = read_finished(self.trial_dir(trial), trial, state.warn)
                    except WrongRun:
                        result = None  # start it: the runner decides, and the check below reports it
                    if result is not None:  # finished earlier: never started again
                        self._finish(trial, "skipped", result, pending, progress)
                        progress.update(self.backend.running(), skipped=1)
                        continue
                    log = state.sweep_dir / "logs" / f"{trial.name}.log"
                    inflight[self.backend.submit(trial.run_argv(spec, self.out), str(log))] = trial
                flush = getattr(self.backend, "flush", None)
                if flush is not None:  # a batching backend starts its processes now
                    flush()
                progress.update(self.backend.running())
                if not inflight:
                    continue
                for handle, outcome in self.backend.wait(list(inflight)):
                    trial = inflight.pop(handle)
                    # result.json is the truth: in a batch, the exit code is the worst of all its runs
                    why = f"exit {outcome.returncode}" + ("" if outcome.returncode else " but no result.json")
                    result = None
                    try:
                        result = read_finished(self.trial_dir(trial), trial, state.warn)
                    except WrongRun as err:
                        why = f"exit {outcome.returncode} but {err}"
                    if result is None:
                        state.failures[trial] = f"{why}; log: {outcome.log}" + (f"\n{outcome.tail}" if outcome.tail else "")
                        self._finish(trial, "failed", None, pending, progress)
                        progress.update(self.backend.running(), failed=1)
                    else:
                        self._finish(trial, "done", result, pending, progress)
                        progress.update(self.backend.running(), finished=1)
        finally:
            progress.close()
            state.seconds = time.monotonic() - start
        return state

    def _finish(self, trial: Trial, status: str, result: dict | None, pending: deque[Trial], progress: Progress) -> None:
        state, spec = self.state, self.spec
        state.status[trial] = status
        if result is not None:
            state.results[trial] = result
        if trial.stage == GRID:
            selection = state.selections[trial.task]
            if result is not None:
                selection.scores.setdefault(trial.point, {})[trial.seed] = grid_score(result, spec)
            if spec.select != "none":
                self._maybe_select(trial.task, pending, progress)
        self.on_update(state)

    def _maybe_select(self, task: str, pending: deque[Trial], progress: Progress) -> None:
        """Once every grid trial of ``task`` has ended, choose its point and queue the finals."""
        spec, selection = self.spec, self.state.selections[task]
        grid = grid_trials(spec, task)
        if selection.chosen is not None or selection.error or any(t not in self.state.status for t in grid):
            return
        failed = [t for t in grid if self.state.status[t] == "failed"]
        if failed:
            selection.error = f"{len(failed)} of {len(grid)} grid trials failed; rerun the sweep to retry them"
            progress.shrink(len(spec.seeds))
            return
        scores = {point: list(seeds.values()) for point, seeds in selection.scores.items()}
        selection.chosen, selection.chosen_score = choose_point(spec.points(), scores)
        pending.extend(final_trials(spec, task, selection.chosen))


def grid_scored_on(spec: SweepSpec) -> str:
    return "val200 (trained on train800)" if grid_protocol(spec) == "val" else "test (trained on train800val200)"


def selection_record(state: SweepState) -> dict:
    """The machine-readable selection (``selection.json``)."""
    spec = state.spec
    tasks: dict[str, Any] = {}
    for task, selection in state.selections.items():
        entry: dict[str, Any] = {
            "grid": [{"point": point, "scores": {str(s): a for s, a in sorted(selection.scores.get(tuple(point.items()), {}).items())}}
                     for point in spec.points()],
        }
        for row in entry["grid"]:
            values = list(row["scores"].values())
            row["mean"] = sum(values) / len(values) if values else None
        if spec.select != "none":
            entry["chosen"] = selection.chosen
            entry["chosen_score"] = selection.chosen_score
            entry["error"] = selection.error
            if selection.chosen is not None:
                finals = final_trials(spec, task, selection.chosen)
                entry["commands"] = [t.command(spec, state.out) for t in finals]
                entry["test"] = {str(t.seed): state.results[t]["accuracy"][METRIC] for t in finals if t in state.results}
                if spec.paper:
                    entry["test_selected"] = {str(t.seed): state.results[t]["accuracy"].get(PAPER_METRIC)
                                              for t in finals if t in state.results}
                entry["run_dirs"] = {str(t.seed): state.results[t]["run_dir"] for t in finals if t in state.results}
        else:
            entry["commands"] = [t.command(spec, state.out) for t in grid_trials(spec, task)]
            if spec.paper:
                for row in entry["grid"]:
                    trials = [t for t in grid_trials(spec, task) if t.params == row["point"] and t in state.results]
                    best = {str(t.seed): state.results[t]["accuracy"].get(PAPER_METRIC) for t in trials}
                    row["test_selected"] = best
                    numbers = [v for v in best.values() if v is not None]
                    row["test_selected_mean"] = sum(numbers) / len(numbers) if numbers else None
        tasks[task] = entry
    return {
        "schema": 1,
        "sweep_id": spec.sweep_id(),
        "select": spec.select,
        "method": method_label(spec),
        "backbone": spec.backbone,
        "adapter": spec.adapter,
        "suite": spec.suite,
        "grid": spec.grid,
        "seeds": spec.seeds,
        "select_seeds": spec.seeds[: spec.select_seeds] if spec.select != "none" else None,
        "scored_on": grid_scored_on(spec) if spec.select != "none" else None,
        "metric": METRIC,
        "paper": spec.paper,
        "test_selected_metric": ("accuracy.best: best test accuracy over the evaluations (the paper's rule)"
                                 if spec.paper else None),
        "rule": TIE_RULE if spec.select != "none" else None,
        "run_args": spec.run_args,
        "tasks": tasks,
        "failed": {t.name: state.failures.get(t, "") for t in state.failed},
        "warnings": state.warnings,
        "complete": state.ok() and all(s in ("done", "skipped") for s in state.status.values()),
    }


def write_selection(state: SweepState) -> Path:
    path = state.sweep_dir / "selection.json"
    atomic_write_json(path, selection_record(state))
    return path


def sweep_dir_for(out: str, spec: SweepSpec) -> Path:
    return Path(out) / "sweeps" / spec.sweep_id()

