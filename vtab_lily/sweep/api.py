"""The sweep as a function: :func:`run_sweep` (what the CLI calls) and :func:`plan_summary`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ..fsutil import atomic_write_json
from .backends import make_backend
from .driver import Locator, SweepDriver, SweepState, sweep_dir_for, write_selection
from .locate import RunLocator
from .plan import Trial, final_trials, grid_trials, method_label
from .report import write_markdown, write_tensorboard
from .runopts import flag_name, has_run_option, run_option_hint
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
              locate: Locator | None = None, trials_per_gpu: int = 1, batch: bool = True,
              fetch: bool = False) -> SweepOutcome:
    """Run (or finish) a sweep and write its selection, table and TensorBoard view.

    Runs write under ``out``; the sweep's own files under ``<out>/sweeps/<sweep-id>/``. Calling
    it again with the same spec repeats nothing that finished. ``trials_per_gpu`` trials share
    each GPU; ``batch`` (local backend): one ``vtab_lily.run --batch`` process per worker
    (False: one process per trial). Missing weights or data stop it before any trial (``fetch``:
    fetched first).
    """
    # Runs get an absolute folder: Ray workers do not share our working directory.
    run_out = str(Path(out).resolve())
    locator = RunLocator()
    check_trials(spec, run_out, locator)
    check_pieces(spec, run_out, locator, fetch)
    sweep_dir = sweep_dir_for(out, spec)
    for folder, flag in ((sweep_dir, "--out"), (Path(leaderboards) / "sweeps", "--leaderboards")):
        try:  # before any trial: a folder we cannot write is one line now, not a traceback later
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UserError(f"{flag}: cannot create {folder} ({err.strerror or err})") from None
    atomic_write_json(sweep_dir / "sweep.json", {"sweep_id": spec.sweep_id(), "spec": spec.identity(),
                                                 "method": method_label(spec), "out": out})
    executor = make_backend(backend, address, num_cpus, trials_per_gpu, batch)
    try:
        driver = SweepDriver(spec, run_out, sweep_dir, executor, locate or locator.find, progress,
                             on_update=write_selection, shown_out=out)
        state = driver.run()
    finally:
        executor.close()
    return SweepOutcome(state, write_selection(state), write_markdown(state, leaderboards),
                        write_tensorboard(state), backend)


def check_trials(spec: SweepSpec, out: str, locator: RunLocator) -> None:
    """Resolve every grid value, every grid trial's options and a selected run's for every grid
    point with the runner's own parser and checks before anything starts (nan, inf, negative or
    out-of-range numbers, typos): a bad value fails the sweep now, naming its grid key, not
    each trial later. Raises UserError (exit 2)."""
    task = spec.tasks[0]
    base = spec.points()[0]
    first = grid_trials(spec, task)[0]
    try:  # what every trial shares (names, adapter, fixed options), with the first grid values
        locator.config(first.run_argv(spec, out))
    except UserError as err:
        if len(spec.points()) == 1 or not any(f"{k}" in str(err) for k in spec.grid):
            raise UserError(f"{err} (in every trial of this sweep)") from None
    for key, values in spec.grid.items():  # one value at a time: the message names it
        for value in values:
            trial = first
            point = tuple((k, value if k == key else base[k]) for k in spec.grid)
            argv = Trial(task, trial.seed, trial.protocol, point, trial.stage).run_argv(spec, out)
            try:
                locator.config(argv)
            except UserError as err:
                hint = ""
                if "has no option" in str(err) and not has_run_option(flag_name(key)):  # sent as --adapter-opt
                    hint = f"; nor is it a run option{run_option_hint(flag_name(key))}"
                raise UserError(f"grid {key}={value}: {err}{hint}") from None
    for task in spec.tasks:
        for trial in grid_trials(spec, task):
            _check(locator, trial.run_argv(spec, out), trial)
    if spec.select != "none":
        for point in spec.points():
            trial = final_trials(spec, spec.tasks[0], point)[0]
            _check(locator, trial.run_argv(spec, out), trial)


def check_pieces(spec: SweepSpec, out: str, locator: RunLocator, fetch: bool = False) -> None:
    """The weights and data every trial needs, checked once (vtab_lily.fetch's pre-flight): one
    message for all of them, not one failing trial each. Trials already finished need nothing."""
    from ..fetch import ensure_ready

    argvs = [t.run_argv(spec, out) for task in spec.tasks for t in grid_trials(spec, task)]
    if spec.select != "none":  # the selected runs' splits (test protocol), whichever point wins
        argvs += [t.run_argv(spec, out) for task in spec.tasks for t in final_trials(spec, task, spec.points()[0])]
    by_config = {id(locator.config(argv)): argv for argv in argvs}

    def finished(config: dict) -> bool:
        found = locator.find(by_config[id(config)])
        return found is not None and (found / "result.json").is_file()

    ensure_ready([locator.config(argv) for argv in argvs], fetch=fetch, skip=finished,
                 fetch_flag="python -m vtab_lily.sweep ... --fetch")


def _check(locator: RunLocator, argv: list[str], trial: Trial) -> None:
    try:
        locator.config(argv)
    except UserError as err:
        point = ", ".join(f"{k}={v}" for k, v in trial.point)
        raise UserError(f"grid point {point} (task {trial.task}): {err}") from None


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
