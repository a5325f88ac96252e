"""``--task NAME``: every run of one task, complete or not, one line each."""

from __future__ import annotations

from typing import Any

from ..results import data_of, deviations_of, finished_utc, params_without_head
from .render import MISSING, format_duration, format_params
from .text import round_half_up, setup_text


def task_view(results: list[dict], task: str, failed: list[Any] | None = None) -> tuple[list[str], list[list[Any]]]:
    """Every run of one task: config, seed, final/best accuracy, params, time, run dir."""
    headers = ["backbone", "suite", "protocol", "adapter", "method", "setup", "seed", "final", "best (epoch)", "params (M, no head)",
               "data", "train time", "finished (UTC)", "status", "run dir"]
    body = []
    for r in sorted(results, key=lambda r: (r["backbone"], r["protocol"], r["method"], r["seed"])):
        acc = r["accuracy"]
        best = MISSING if acc.get("best") is None else f"{round_half_up(acc['best'], 2)} ({acc.get('best_epoch', '?')})"
        setup = setup_text(r["adapter"], deviations_of(r))
        no_head = params_without_head(r)
        data = data_of(r)
        finished = finished_utc(r)
        body.append(
            [r["backbone"], r["suite"], r["protocol"], r["adapter"], r["method"], setup, r["seed"], round_half_up(acc["final"], 2), best,
             format_params(None if no_head is None else no_head / 1e6),
             f"{data['encoding'] or '?'} {(data['fingerprint'] or '?')[:8]}", format_duration((r.get("time") or {}).get("train_s")),
             finished.strftime("%Y-%m-%d %H:%M:%S") if finished.year > 1 else MISSING, "complete", r["run_dir"]]
        )
    for status in failed or []:
        config = status.config or {}
        body.append(
            [str(config.get("backbone", MISSING)), str(config.get("suite", MISSING)), str(config.get("protocol", MISSING)),
             str(config.get("adapter", MISSING)), MISSING, MISSING, str(config.get("seed", MISSING)), MISSING, MISSING, MISSING,
             MISSING, MISSING, MISSING, f"{status.state}: {status.detail}", str(status.run_dir)]
        )
    return headers, body
