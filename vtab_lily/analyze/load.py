"""Finished runs as the analysis reads them: config, result, router records, trained states.

A run is rebuilt exactly as ``vtab_lily.run`` built it (same seed, so a random-init demo
backbone has the same frozen weights), then each trained state is loaded into it: the
snapshots written at every evaluation (``snapshots/epoch_NNNN.pt``), or, for runs made before
snapshots existed, the final ``checkpoint.pt``. Files are read with ``weights_only=True``.
A file that cannot be used (corrupt, empty, a pickle of Python objects, not a table of finite
tensors, an odd name, tensors of other shapes than the rebuilt model's) is skipped with one
warning naming it; the rest of the report goes on.
"""

from __future__ import annotations

import pickle
import re
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
    from vtab_lily.results import read_router_history, read_router_weights, scan_runs

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
            try:
                history = read_router_history(status.run_dir)
            except UserError as err:  # the history is skipped: every state is composed with the final weights
                warnings.warn(f"{err}: router history skipped (every epoch uses the final evaluation's weights)",
                              stacklevel=2)
                history = None
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


SNAPSHOT_NAME = re.compile(r"epoch_(\d{1,9})")


def read_state(path: Path) -> tuple[dict[str, torch.Tensor], int | None]:
    """A trained state file's ``{name: tensor}`` and the epoch a checkpoint records, or a
    UserError saying why it cannot be used."""
    try:
        with warnings.catch_warnings():  # torch's own notes on the file's pickle format: ours says it all
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # torch's own message suggests weights_only=False: never here
        raise UserError(f"{path}: not a safe tensor checkpoint (it holds Python objects; this analysis loads "
                        "tensors only)") from None
    except Exception as err:  # noqa: BLE001 - empty, truncated, not a torch file: whatever torch trips on
        raise UserError(f"{path}: unreadable ({err.__class__.__name__}: {str(err).splitlines()[0][:200] if str(err) else ''})") from None
    epoch = None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):  # a checkpoint: the model's part
        progress = state.get("progress")
        epoch = progress.get("epoch") if isinstance(progress, dict) else None
        state = state["model"]
    if not isinstance(state, dict) or not state or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise UserError(f"{path}: not a table of named tensors")
    for name, tensor in state.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise UserError(f"{path}: {name} holds NaN or infinite values")
    return state, epoch if isinstance(epoch, int) and not isinstance(epoch, bool) else None


def trained_states(run: RunRecord) -> Iterator[tuple[int, dict[str, torch.Tensor], Path]]:
    """``(epoch, trainable state, file)`` for every usable snapshot in epoch order, else the final
    checkpoint; an unusable file is skipped with a warning."""
    snaps = []
    for path in (run.run_dir / SNAPSHOTS).glob("*.pt"):
        match = SNAPSHOT_NAME.fullmatch(path.stem)
        if match is None:
            warnings.warn(f"{path}: skipped (not a snapshot name, epoch_NNNN.pt)", stacklevel=2)
        else:
            snaps.append((int(match.group(1)), path))
    if snaps:
        for epoch, path in sorted(snaps):
            try:
                yield epoch, read_state(path)[0], path
            except UserError as err:
                warnings.warn(f"{err}: skipped", stacklevel=2)
        return
    checkpoint = run.run_dir / "checkpoint.pt"
    if checkpoint.is_file():
        try:
            state, epoch = read_state(checkpoint)
        except UserError as err:
            warnings.warn(f"{err}: skipped", stacklevel=2)
            return
        yield (int(run.config.get("epochs", 0)) if epoch is None else epoch), state, checkpoint


def load_state(model: torch.nn.Module, state: dict[str, torch.Tensor], path: Path | str = "a trained state") -> None:
    own = model.state_dict()
    missing = [k for k in state if k not in own]
    if missing:
        raise UserError(f"{path}: names {len(missing)} tensors the rebuilt model lacks, e.g. {missing[0]}")
    wrong = [k for k, v in state.items() if v.shape != own[k].shape]
    if wrong:
        raise UserError(f"{path}: {wrong[0]} has shape {tuple(state[wrong[0]].shape)}, the rebuilt model's "
                        f"{tuple(own[wrong[0]].shape)}")
    model.load_state_dict(state, strict=False)
