"""The sweep as a function: :func:`run_sweep` (what the CLI calls) and :func:`plan_summary`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..fsutil import atomic_write_json
from .backends import make_backend
from .driver import Locator, SweepDriver, SweepState, sweep_dir_for, write_selection
from .locate import RunLocator
from .plan import final_trials, grid_trials, method_label
from .report import write_markdown, write_tensorboard
from .spec import SweepSpec


@dataclass
class SweepOutcome:
    state: SweepState
    selection_path: Path
    markdown_path: Path
    tensorboard_path: Path
    backend: str

    @property
    def ok(self) -> bool:
        return self.state.ok()

    def summary(self) -> str:
        state = self.state
        counts = {s: list(state.status.values()).count(s) for s in ("done", "skipped", "failed")}
        lines = [f"sweep {state.spec.sweep_id()} ({self.backend}): {len(state.status)} trials, "
                 f"{counts['done']} run now, {counts['skipped']} already finished, {counts['failed']} failed, "
                 f"{state.seconds:.1f} s",
                 f"selection: {self.selection_path}",
                 f"table: {self.markdown_path}",
                 f"tensorboard: tensorboard --logdir {self.tensorboard_path}"]
        for task, selection in state.selections.items():
            if selection.chosen is not None:
                lines.append(f"  {task}: " + ", ".join(f"{k}={v}" for k, v in selection.chosen.items())
                             + f" (score {selection.chosen_score:.2f})")
            elif selection.error:
                lines.append(f"  {task}: not selected: {selection.error}")
        if state.failed:
            lines.append(f"FAILED trials ({len(state.failed)}); rerun the same command to retry them:")
            for trial in state.failed:
                lines.append(f"  {trial.name}: {state.failures.get(trial, '')}".replace("\n", "\n      "))
        return "\n".join(lines)


def run_sweep(spec: SweepSpec, out: str = "runs", backend: str = "local", address: str | None = None,
              num_cpus: int | None = None, leaderboards: str | Path = "leaderboards", progress: bool = True,
              locate: Locator | None = None) -> SweepOutcome:
    """Run (or finish) a sweep and write its selection, table and TensorBoard view.

    Runs write under ``out``; the sweep's own files under ``<out>/sweeps/<sweep-id>/``. Calling
    it again with the same spec repeats nothing that finished.
    """
    # Runs get an absolute folder: Ray workers do not share our working directory.
    run_out = str(Path(out).resolve())
    locator = RunLocator()
    check_trials(spec, run_out, locator)
    sweep_dir = sweep_dir_for(out, spec)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(sweep_dir / "sweep.json", {"sweep_id": spec.sweep_id(), "spec": spec.identity(),
                                                 "method": method_label(spec), "out": out})
    executor = make_backend(backend, address, num_cpus)
    try:
        driver = SweepDriver(spec, run_out, sweep_dir, executor, locate or locator.find, progress,
                             on_update=write_selection, shown_out=out)
        state = driver.run()
    finally:
        executor.close()
    return SweepOutcome(state, write_selection(state), write_markdown(state, leaderboards),
                        write_tensorboard(state), backend)


def check_trials(spec: SweepSpec, out: str, locator: RunLocator) -> None:
    """Resolve every grid trial's options, and a selected run's for every grid point, with the
    runner's own parser before anything starts: a typo fails the sweep now, not each trial."""
    for task in spec.tasks:
        for trial in grid_trials(spec, task):
            locator.config(trial.run_argv(spec, out))
    if spec.select != "none":
        for point in spec.points():
            locator.config(final_trials(spec, spec.tasks[0], point)[0].run_argv(spec, out))


def plan_summary(spec: SweepSpec, out: str) -> str:
    """What a sweep would run: trial counts per stage and the first stage's commands."""
    first = [t for task in spec.tasks for t in grid_trials(spec, task)]
    finals = 0 if spec.select == "none" else len(spec.tasks) * len(spec.seeds)
    lines = [f"sweep {spec.sweep_id()}: {len(spec.points())} grid points x {len(spec.tasks)} tasks; "
             f"{len(first)} grid trials + {finals} selected runs (select={spec.select})"]
    if method_label(spec):
        lines.append(f"selected runs are labelled {method_label(spec)!r}")
    lines += [t.command(spec, out) for t in first]
    return "\n".join(lines)


__all__ = ["SweepOutcome", "run_sweep", "plan_summary"]
