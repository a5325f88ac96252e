"""Finished runs as the analysis reads them: config, result, router records, trained states.

A run is rebuilt exactly as ``vtab_lily.run`` built it (same seed, so a random-init demo
backbone has the same frozen weights), then each trained state is loaded into it: the
snapshots written at every evaluation (``snapshots/epoch_NNNN.pt``), or, for runs made before
snapshots existed, the final ``checkpoint.pt``. Files are read with ``weights_only=True``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch

from vtab_lily.build import build_model as build_run_model
from vtab_lily.build import resolve_checkpoint
from vtab_lily.errors import UserError

SNAPSHOTS = "snapshots"


@dataclass
class RunRecord:
    run_dir: Path
    config: dict
    result: dict
    router_weights: dict[str, list[float]] = field(default_factory=dict)  # final evaluation
    router_history: dict | None = None

    @property
    def label(self) -> str:
        return str(self.result.get("method") or self.config.get("adapter"))

    @property
    def adapter_params(self) -> int | None:
        value = (self.result.get("params") or {}).get("adapter")
        return value if isinstance(value, int) else None


def find_runs(paths: list[str | Path]) -> list[RunRecord]:
    """Complete runs under ``paths``, read through the results store (``results.scan_runs``: the
    same validation as the leaderboard); a malformed result or router file is skipped with a warning."""
    from vtab_lily.results import read_router_weights, scan_runs
    from vtab_lily.rundir import RunDir

    runs = []
    for given in paths:
        root = Path(given)
        if not root.exists():
            raise UserError(f"{root}: no such run folder")
        for status in scan_runs(root):
            if status.state == "malformed":
                warnings.warn(f"{status.run_dir}: skipped ({status.detail})", stacklevel=2)
            config = status.config
            if status.state != "complete" or not config or "adapter_config" not in config:
                continue
            try:
                routers = read_router_weights(status.run_dir) or {"sites": [], "weights": []}
            except UserError as err:
                warnings.warn(f"{status.run_dir}: skipped ({err})", stacklevel=2)
                continue
            final = dict(zip(routers["sites"], routers["weights"]))
            history = RunDir(status.run_dir).read_router_history()
            runs.append(RunRecord(status.run_dir, config, status.result, final, history))
    return runs


def build_model(run: RunRecord) -> tuple[torch.nn.Module, bool]:
    """The run's backbone + adapter at initialisation, on the CPU, with the run's own seed, and
    whether its frozen weights are the run's (False: the checkpoint file is not on this machine)."""
    config = dict(run.config, adapter_options=run.config["adapter_config"])
    try:
        weights, known = resolve_checkpoint(config), True
    except UserError:
        weights, known = None, False  # relative norms are then not reported
    return build_run_model(config, weights).eval(), known


def trained_states(run: RunRecord) -> Iterator[tuple[int, dict[str, torch.Tensor]]]:
    """``(epoch, trainable state)`` for every snapshot in epoch order, else the final checkpoint."""
    snaps = sorted((run.run_dir / SNAPSHOTS).glob("epoch_*.pt"))
    if snaps:
        for path in snaps:
            state = torch.load(path, map_location="cpu", weights_only=True)
            yield int(path.stem.split("_")[1]), state.get("model", state)
        return
    checkpoint = run.run_dir / "checkpoint.pt"
    if checkpoint.is_file():
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        yield int(state.get("progress", {}).get("epoch", run.config.get("epochs", 0))), state["model"]


def load_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    missing = [k for k in state if k not in model.state_dict()]
    if missing:
        raise UserError(f"a trained state names {len(missing)} tensors the rebuilt model lacks, e.g. {missing[0]}")
    model.load_state_dict(state, strict=False)
