"""Published VTAB-1K rows (not run here), from ``reference.json`` beside this file.

Each row names its backbone (as in the backbone registry), a label, the adapter key and
adapter settings of the runs it is compared with (``match``), its printed params in millions
without the classification head, the printed average and which average that is, the per-task
accuracies where the source prints them, the setting it was made with (in words and as
``deviations`` from the official Lily setup) and a ``source`` key into the file's ``sources``.
Both averages are recomputed from the per-task cells; ``average_mismatch`` flags a printed
average that the cells do not give back (after rounding to the printed decimals).
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from ..errors import UserError
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

    def recomputed(self, groups: dict[str, list[str]]) -> tuple[float | None, float | None]:
        """(mean of group means, mean over tasks) of the per-task cells; None unless complete."""
        tasks = [t for members in groups.values() for t in members]
        if not self.per_task or any(t not in self.per_task for t in tasks):
            return None, None
        group_means = [statistics.fmean(self.per_task[t] for t in members) for members in groups.values()]
        return statistics.fmean(group_means), statistics.fmean(self.per_task[t] for t in tasks)

    def average_mismatch(self, groups: dict[str, list[str]]) -> bool:
        """The printed average is not what its own cells give, rounded to the printed decimals."""
        by_groups, by_tasks = self.recomputed(groups)
        value = by_groups if self.average_kind == "group_means" else by_tasks
        if value is None:
            return False
        decimals = len(self.average_text.partition(".")[2])
        return round_half_up(value, decimals) != self.average_text


def _number(raw: dict, key: str, where: str, optional: bool = False) -> float | None:
    value = raw.get(key)
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UserError(f"{where}: {key!r} must be a number, got {value!r}")
    return float(value)


def _row(raw: dict, sources: dict, where: str) -> ReferenceRow:
    if raw.get("source") not in sources:
        raise UserError(f"{where}: cites unknown source {raw.get('source')!r}")
    if raw.get("average_kind") not in AVERAGE_KINDS:
        raise UserError(f"{where}: average_kind must be one of {AVERAGE_KINDS}")
    per_task = raw.get("per_task")
    if per_task is not None:
        per_task = {str(t): _number(per_task, t, f"{where}.per_task") for t in per_task}
    deviations = raw.get("deviations")
    return ReferenceRow(
        id=str(raw["id"]),
        backbone=str(raw["backbone"]),
        method=str(raw["method"]),
        adapter=str(raw["adapter"]),
        params_m=_number(raw, "params_m", where, optional=True),
        average=_number(raw, "average", where),
        average_kind=raw["average_kind"],
        average_text=json.dumps(raw["average"]),
        per_task=per_task,
        source=raw["source"],
        citation=str(sources[raw["source"]]),
        setting=str(raw.get("setting", "")),
        deviations=None if deviations is None else tuple(sorted(map(str, deviations))),
        match=dict(raw.get("match") or {}),
        note=str(raw.get("note", "")),
    )


@lru_cache(maxsize=4)
def load_reference(path: str | None = None) -> tuple[ReferenceRow, ...]:
    """All reference rows of the data file (the packaged one by default)."""
    file = Path(path) if path else REFERENCE_FILE
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
        sources = data["sources"]
        rows = tuple(_row(raw, sources, f"{file}: rows[{i}]") for i, raw in enumerate(data["rows"]))
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserError(f"{file}: cannot read the reference rows ({err!r})") from None
    ids = [row.id for row in rows]
    if len(set(ids)) != len(ids):
        raise UserError(f"{file}: duplicate row ids")
    return rows


def reference_rows(backbone: str, suite: str = "vtab") -> list[ReferenceRow]:
    """The published rows for ``backbone``; only VTAB-1K tables get any."""
    if suite != "vtab":
        return []
    return [row for row in load_reference() if row.backbone == backbone]


def matching_reference(refs: list[ReferenceRow], adapter: str, adapter_config: dict,
                       params_m: float | None) -> ReferenceRow | None:
    """The published row a run row is compared with: same adapter, every ``match`` value equal
    to the run's adapter setting; among several, the one with the most ``match`` keys, then the
    nearest parameter count (Lily-S vs Lily-L)."""
    candidates = [r for r in refs if r.adapter == adapter and all(adapter_config.get(k) == v for k, v in r.match.items())]
    if not candidates:
        return None

    def distance(ref: ReferenceRow) -> float:
        if not params_m or not ref.params_m:
            return math.inf
        return abs(math.log(params_m / ref.params_m))

    return min(candidates, key=lambda r: (-len(r.match), distance(r)))
