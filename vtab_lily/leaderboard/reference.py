"""Published VTAB-1K rows (not run here), from ``reference.json`` beside this file.

Each row names its backbone (as in the backbone registry), a label, the adapter key and
adapter settings of the runs it is compared with (``match``), its printed params in millions
without the classification head, the printed average and which average that is, the per-task
accuracies where the source prints them, else its printed ``group_means`` (Natural,
Specialized, Structured) where it prints those, the setting it was made with (in words and as
``deviations`` from the official Lily setup) and a ``source`` key into the file's ``sources``.
Both averages are recomputed from the per-task cells, or without cells from the group means
(mean of group means; mean over tasks = the group means weighted by the groups' task counts,
(7 N + 4 S + 8 St) / 19 on VTAB-1K). ``average_mismatch`` flags a printed average that the cells
do not give back after rounding to the printed decimals, or that the (themselves rounded) group
means miss by more than one unit of the printed decimals.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from ..errors import UserError
from ..tasks import GROUPS
from .text import round_half_up

REFERENCE_FILE = Path(__file__).with_name("reference.json")
AVERAGE_KINDS = ("group_means", "tasks")


@dataclass(frozen=True)
class ReferenceRow:
    id: str
    backbone: str
    method: str
    adapter: str
    params_m: float | None  # WITHOUT the head, as printed
    average: float  # as printed in the source
    average_kind: str  # "group_means" or "tasks"
    average_text: str  # the printed average with its printed decimals
    per_task: dict[str, float] | None
    source: str  # key into sources
    citation: str  # the source's description
    setting: str = ""
    deviations: tuple[str, ...] | None = None  # None: not known
    match: dict = field(default_factory=dict)
    note: str = ""
    group_means: dict[str, float] | None = None  # printed group means (used when there are no per-task cells)

    def has_cells(self, groups: dict[str, list[str]]) -> bool:
        return bool(self.per_task) and all(t in self.per_task for members in groups.values() for t in members)

    def recomputed(self, groups: dict[str, list[str]]) -> tuple[float | None, float | None]:
        """(mean of group means, mean over tasks) of the per-task cells, else of the printed group
        means (each weighted by its group's task count for the mean over tasks); None unless complete."""
        if self.has_cells(groups):
            tasks = [t for members in groups.values() for t in members]
            means = [statistics.fmean(self.per_task[t] for t in members) for members in groups.values()]
            return statistics.fmean(means), statistics.fmean(self.per_task[t] for t in tasks)
        if self.group_means and all(g in self.group_means for g in groups):
            means = [self.group_means[g] for g in groups]
            sizes = [len(members) for members in groups.values()]
            return statistics.fmean(means), sum(m * n for m, n in zip(means, sizes)) / sum(sizes)
        return None, None

    def average_mismatch(self, groups: dict[str, list[str]]) -> bool:
        """The printed average is not what its own cells give, rounded to the printed decimals; or,
        from printed group means (rounded themselves), it is off by more than one printed unit."""
        by_groups, by_tasks = self.recomputed(groups)
        value = by_groups if self.average_kind == "group_means" else by_tasks
        if value is None:
            return False
        decimals = len(self.average_text.partition(".")[2])
        if self.has_cells(groups):
            return round_half_up(value, decimals) != self.average_text
        # A row's numbers share their printed decimals; JSON drops trailing zeros (64.40 -> 64.4).
        decimals = max([decimals] + [len(json.dumps(v).partition(".")[2]) for v in self.group_means.values()])
        return abs(value - self.average) > 10.0**-decimals + 1e-9


def _number(raw: dict, key: str, where: str, optional: bool = False) -> float | None:
    value = raw.get(key)
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UserError(f"{where}: {key!r} must be a number, got {value!r}")
    return float(value)


def _accuracy(raw: dict, key: str, where: str) -> float:
    """A printed accuracy: a number in [0, 100] (percent)."""
    value = _number(raw, key, where)
    if not 0 <= value <= 100:
        raise UserError(f"{where}: {key!r} must be an accuracy in percent (0 to 100), got {value:g}")
    return value


def _object(raw: dict, key: str, where: str) -> dict | None:
    value = raw.get(key)
    if value is not None and not isinstance(value, dict):
        raise UserError(f"{where}: {key!r} must be an object ({{\"name\": value, ...}}), got {value!r}")
    return value


def _row(raw: dict, sources: dict, where: str) -> ReferenceRow:
    if not isinstance(raw, dict):
        raise UserError(f"{where}: a row must be an object, got {raw!r}")
    if raw.get("source") not in sources:
        raise UserError(f"{where}: cites unknown source {raw.get('source')!r}")
    if raw.get("average_kind") not in AVERAGE_KINDS:
        raise UserError(f"{where}: average_kind must be one of {AVERAGE_KINDS}")
    per_task = _object(raw, "per_task", where)
    if per_task is not None:
        per_task = {str(t): _accuracy(per_task, t, f"{where}.per_task") for t in per_task}
    group_means = raw.get("group_means")
    if group_means is not None:
        if not isinstance(group_means, dict) or set(group_means) != set(GROUPS):
            raise UserError(f"{where}: 'group_means' must give exactly {', '.join(GROUPS)}, got {group_means!r}")
        group_means = {g: _accuracy(group_means, g, f"{where}.group_means") for g in GROUPS}
    _object(raw, "match", where)
    deviations = raw.get("deviations")
    return ReferenceRow(
        id=str(raw["id"]),
        backbone=str(raw["backbone"]),
        method=str(raw["method"]),
        adapter=str(raw["adapter"]),
        params_m=_number(raw, "params_m", where, optional=True),
        average=_accuracy(raw, "average", where),
        average_kind=raw["average_kind"],
        average_text=json.dumps(raw["average"]),
        per_task=per_task,
        source=raw["source"],
        citation=str(sources[raw["source"]]),
        setting=str(raw.get("setting", "")),
        deviations=None if deviations is None else tuple(sorted(map(str, deviations))),
        match=dict(raw.get("match") or {}),
        note=str(raw.get("note", "")),
        group_means=group_means,
    )


@lru_cache(maxsize=4)
def load_reference(path: str | None = None) -> tuple[ReferenceRow, ...]:
    """All reference rows of the data file (the packaged one by default)."""
    file = Path(path) if path else REFERENCE_FILE
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
        sources, raw_rows = data["sources"], data["rows"]
        if not isinstance(sources, dict) or not isinstance(raw_rows, list):
            raise UserError(f"{file}: 'sources' must be an object and 'rows' a list")
        rows = tuple(_row(raw, sources, f"{file}: rows[{i}]") for i, raw in enumerate(raw_rows))
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserError(f"{file}: cannot read the reference rows ({err!r})") from None
    ids = [row.id for row in rows]
    if len(set(ids)) != len(ids):
        raise UserError(f"{file}: duplicate row ids")
    return rows


def reference_rows(backbone: str, suite: str = "vtab") -> list[ReferenceRow]:
    """The published rows for ``backbone`` (its full registry name, as result.json records it:
    rows are never shared across backbones, not even between a backbone and its alias or tiny
    test config); only VTAB-1K tables get any."""
    if suite != "vtab":
        return []
    return [row for row in load_reference() if row.backbone == backbone]


def reference_backbones() -> tuple[str, ...]:
    """The backbones that have published rows, sorted. A backbone without runs gets no table, so
    its rows stay out of the leaderboard until it has runs; this lists them for an index."""
    return tuple(sorted({row.backbone for row in load_reference()}))


def matching_reference(refs: list[ReferenceRow], adapter: str, adapter_config: dict,
                       params_m: float | None, deviations: tuple[str, ...] | None = None) -> ReferenceRow | None:
    """The published row a run row is compared with: same adapter, every ``match`` value equal
    to the run's adapter setting; among several, the one with the most ``match`` keys, then one
    made with the run's ``deviations`` (two papers' rows of one method), then the nearest
    parameter count (Lily-S vs Lily-L)."""
    candidates = [r for r in refs if r.adapter == adapter and all(adapter_config.get(k) == v for k, v in r.match.items())]
    if not candidates:
        return None

    def distance(ref: ReferenceRow) -> float:
        if not params_m or not ref.params_m:
            return math.inf
        return abs(math.log(params_m / ref.params_m))

    return min(candidates, key=lambda r: (-len(r.match), deviations is None or r.deviations != deviations, distance(r)))
