"""The sweep's human outputs: a markdown table of the choices and a TensorBoard hparams view."""

from __future__ import annotations

import shutil
from pathlib import Path

from tabulate import tabulate

from ..fsutil import atomic_write
from .driver import METRIC, TIE_RULE, SweepState, grid_scored_on, selection_record
from .plan import GRID, final_trials, grid_trials, method_label


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def selection_markdown(state: SweepState) -> str:
    """A markdown page: per task the chosen point, its scores and the command to repeat it."""
    spec, record = state.spec, selection_record(state)
    keys = list(spec.grid)
    lines = [f"# Sweep `{spec.sweep_id()}`", "",
             f"{spec.adapter} on {spec.backbone}, suite {spec.suite}, grid "
             + ", ".join(f"{k} in {{{', '.join(v)}}}" for k, v in spec.grid.items())
             + f", seeds {', '.join(map(str, spec.seeds))}."
             + (f" Fixed run options: `{' '.join(spec.run_args)}`." if spec.run_args else ""), ""]
    if spec.select == "none":
        lines += [f"No selection: every grid point on the test protocol; {METRIC} test accuracy, mean over seeds.", ""]
        if spec.paper:
            lines += [f"`--paper`: test-selected = {record['test_selected_metric']}.", ""]
        rows = []
        for task, entry in record["tasks"].items():
            for row in entry["grid"]:
                paper = [_fmt(row.get("test_selected_mean"))] if spec.paper else []
                rows.append([task, *(row["point"][k] for k in keys), _fmt(row["mean"]), *paper, len(row["scores"])])
        extra = ["test-selected acc"] if spec.paper else []
        lines.append(tabulate(rows, headers=["task", *keys, "test acc", *extra, "seeds"], tablefmt="github",
                              disable_numparse=True))
        return "\n".join(lines) + "\n"

    scored = "val" if spec.select == "val" else "test (selection)"
    caution = ("" if spec.select == "val" else
               " **The choice looked at test accuracy (common practice, optimistic): it is not a clean estimate.**")
    lines += [f"Selection `{spec.select}`: each grid point scored on {grid_scored_on(spec)} with seed(s) "
              f"{', '.join(map(str, record['select_seeds']))}; rule: {TIE_RULE}. The chosen point is "
              f"retrained on train800val200 and tested with every seed.{caution}", "",
              f"Leaderboard row: `{method_label(spec)}`.", ""]
    if spec.paper:
        lines += [f"`--paper`: test-selected = {record['test_selected_metric']}; the final-epoch number "
                  "is beside it.", ""]
    rows = []
    extra = [""] if spec.paper else []
    for task, entry in record["tasks"].items():
        chosen = entry.get("chosen")
        if chosen is None:
            rows.append([task, *([""] * len(keys)), "", "", *extra, entry.get("error") or "pending", ""])
            continue
        tests = list(entry.get("test", {}).values())
        test = f"{_fmt(_mean(tests))} ({len(tests)}/{len(spec.seeds)} seeds)" if tests else "pending"
        if spec.paper:
            best = [v for v in entry.get("test_selected", {}).values() if v is not None]
            extra = [_fmt(_mean(best)) if best else "pending"]
        rows.append([task, *(chosen[k] for k in keys), _fmt(entry["chosen_score"]), test, *extra, "",
                     f"`{entry['commands'][0]}`"])
    headers = ["task", *keys, f"{scored} acc", "test acc (final)" if spec.paper else "test acc"]
    headers += ["test acc (test-selected)"] if spec.paper else []
    lines.append(tabulate(rows, headers=[*headers, "note", "command (first seed)"],
                          tablefmt="github", disable_numparse=True))
    lines += ["", "The other seeds: the same command with `--seed N`; all commands are in "
              f"`{state.sweep_dir / 'selection.json'}`."]
    return "\n".join(lines) + "\n"


def write_markdown(state: SweepState, leaderboards: str | Path) -> Path:
    path = Path(leaderboards) / "sweeps" / f"{state.spec.sweep_id()}.md"
    text = selection_markdown(state)
    atomic_write(path, lambda f: f.write(text), mode="w")
    return path


def _hparam(value: str) -> float | str:
    try:
        return float(value)
    except ValueError:
        return value


def write_tensorboard(state: SweepState) -> Path:
    """One hparams entry per finished trial: grid values, task, stage, seed -> final and best accuracy.

    The folder is rewritten from scratch each time, so a restarted sweep shows each trial once.
    """
    from torch.utils.tensorboard import SummaryWriter

    logdir = state.sweep_dir / "tb"
    shutil.rmtree(logdir, ignore_errors=True)
    spec = state.spec
    trials = [t for task in spec.tasks for t in grid_trials(spec, task)]
    for task, selection in state.selections.items():
        if selection.chosen is not None:
            trials += final_trials(spec, task, selection.chosen)
    with SummaryWriter(str(logdir)) as writer:
        for trial in trials:
            result = state.results.get(trial)
            if result is None:
                continue
            hparams = {k: _hparam(v) for k, v in trial.point}
            hparams.update(task=trial.task, seed=trial.seed, protocol=trial.protocol,
                           stage="grid" if trial.stage == GRID else "selected")
            accuracy = result["accuracy"]
            metrics = {"hparam/accuracy_final": float(accuracy["final"])}
            if accuracy.get("best") is not None:
                metrics["hparam/accuracy_best"] = float(accuracy["best"])
            writer.add_hparams(hparams, metrics, run_name=trial.name)
    return logdir
