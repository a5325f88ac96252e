"""One run's analysis: per-site spectra of dW, and Lily's experts, at each evaluation."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch

from vtab_lily.adapters.lily import lily_deltas
from vtab_lily.analyze.compose import full_updates, weight_updates
from vtab_lily.analyze.load import RunRecord, build_model, load_state, trained_states
from vtab_lily.analyze.spectra import (
    RANK_FRACTION,
    expert_similarity,
    expert_wins,
    router_entropy,
    weight_stats,
)
from vtab_lily.errors import UserError


@dataclass
class Snapshot:
    epoch: int
    sites: dict[str, dict]  # site -> weight_stats + layer + kind
    experts: dict[str, dict] = field(default_factory=dict)  # Lily kind -> similarity summary


@dataclass
class RunAnalysis:
    run: RunRecord
    snapshots: list[Snapshot]
    skipped: list[str]
    routers: dict[str, dict]  # site -> {"weights", "entropy"} at the final evaluation
    wins: dict[str, list[int]]  # Lily kind -> sites won per expert
    base_known: bool
    fraction: float = RANK_FRACTION

    @property
    def final(self) -> Snapshot | None:
        return self.snapshots[-1] if self.snapshots else None


def _kind(site: str) -> str:
    return site.split(".", 2)[-1]


def _router_weights_at(run: RunRecord, epoch: int) -> dict[str, list[float]]:
    """Recorded mean expert weights at ``epoch`` (history), else the final evaluation's."""
    history = run.router_history or {}
    epochs, weights, sites = history.get("epochs"), history.get("weights"), history.get("sites")
    if isinstance(epochs, list) and epoch in epochs and isinstance(weights, list) and isinstance(sites, list):
        row = weights[epochs.index(epoch)]
        if isinstance(row, list) and len(row) == len(sites):
            return dict(zip(sites, row))
    return run.router_weights


def _experts_summary(model: torch.nn.Module) -> dict[str, dict]:
    out, seen = {}, set()
    for delta in lily_deltas(model):
        experts = delta.lily_B
        if id(experts) in seen or experts.weight.shape[0] < 2:
            continue
        seen.add(id(experts))
        sim = expert_similarity(experts.weight)
        n = sim.shape[0]
        off = sim[~torch.eye(n, dtype=torch.bool)]
        out[_kind(delta.site_name)] = {"similarity": sim.tolist(), "max_offdiag": float(off.max()),
                                       "mean_offdiag": float(off.mean())}
    return out


def analyze_run(run: RunRecord, fraction: float = RANK_FRACTION) -> RunAnalysis:
    """Spectra of every linear update at each trained state of ``run``."""
    model, base_known = build_model(run)
    initial = {k: v.clone() for k, v in model.state_dict().items()} if run.config["adapter"] == "full" else {}
    snapshots, skipped = [], []
    for epoch, state, path in trained_states(run):
        try:
            load_state(model, state, path)
        except UserError as err:
            warnings.warn(f"{err}: skipped", stacklevel=2)
            continue
        if run.config["adapter"] == "full":
            updates = full_updates(model, initial)
        else:
            updates, skipped = weight_updates(model, _router_weights_at(run, epoch))
        sites = {}
        for u in updates:
            stats = weight_stats(u.delta, u.base if base_known else None, fraction)
            sites[u.site] = dict(stats, layer=u.layer, kind=u.kind)
        snapshots.append(Snapshot(epoch, sites, _experts_summary(model)))
    routers = {site: {"weights": w, "entropy": router_entropy(w)} for site, w in run.router_weights.items()
               if len(w) > 1}
    by_kind: dict[str, dict[str, list[float]]] = {}
    for site, w in run.router_weights.items():
        by_kind.setdefault(_kind(site), {})[site] = w
    wins = {kind: expert_wins(sites) for kind, sites in by_kind.items() if any(len(w) > 1 for w in sites.values())}
    return RunAnalysis(run, snapshots, skipped, routers, wins, base_known, fraction)
