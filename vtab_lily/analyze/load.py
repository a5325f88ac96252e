"""Finished runs as the analysis reads them: config, result, router records, trained states.

A run is rebuilt exactly as ``vtab_lily.run`` built it (same seed, so a random-init demo
backbone has the same frozen weights), then each trained state is loaded into it: the
snapshots written at every evaluation (``snapshots/epoch_NNNN.pt``), or, for runs made before
snapshots existed, the final ``checkpoint.pt``. Files are read with ``weights_only=True``.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch

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


def _read_json(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return value if isinstance(value, dict) else None


def find_runs(paths: list[str | Path]) -> list[RunRecord]:
    """Complete runs (``result.json`` with ``status == "complete"`` and a ``config.json``) under ``paths``."""
    runs = []
    for given in paths:
        root = Path(given)
        if not root.exists():
            raise UserError(f"{root}: no such run folder")
        found = [root / "result.json"] if (root / "result.json").is_file() else sorted(root.rglob("result.json"))
        for result_file in found:
            run_dir = result_file.parent
            result, config = _read_json(result_file), _read_json(run_dir / "config.json")
            if not result or result.get("status") != "complete" or not config or "adapter_config" not in config:
                warnings.warn(f"{run_dir}: skipped (no complete result.json with its config.json)", stacklevel=2)
                continue
            routers = _read_json(run_dir / "router_weights.json") or {}
            sites, weights = routers.get("sites"), routers.get("weights")
            final = dict(zip(sites, weights)) if isinstance(sites, list) and isinstance(weights, list) else {}
            runs.append(RunRecord(run_dir, config, result, final, _read_json(run_dir / "router_history.json")))
    return runs


def build_model(run: RunRecord) -> tuple[torch.nn.Module, bool]:
    """The run's backbone + adapter at initialisation, on the CPU, with the run's own seed, and
    whether its frozen weights are the run's (False: the checkpoint file is not on this machine)."""
    from vtab_lily.run import build_model as build_run_model
    from vtab_lily.run import resolve_checkpoint

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
