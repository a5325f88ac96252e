"""Published VTAB-1K rows (not run here), from ``reference.json`` beside this file.

Each row names its backbone (as in the backbone registry), a method label, the adapter,
its printed params (M) and average, the per-task accuracies when the source prints them,
and a ``source`` key into the file's ``sources`` (where the numbers come from).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from ..errors import UserError

REFERENCE_FILE = Path(__file__).with_name("reference.json")


@dataclass(frozen=True)
class ReferenceRow:
    backbone: str
    method: str
    adapter: str
    params_m: float | None
    average: float  # as printed in the source
    average_kind: str  # "group_means" or "tasks"
    per_task: dict[str, float] | None
    source: str  # key into sources
    citation: str  # the source's description
    note: str = ""
    average_mismatch: bool = False  # the printed average disagrees with the printed per-task numbers


@lru_cache(maxsize=4)
def load_reference(path: str | None = None) -> tuple[ReferenceRow, ...]:
    """All reference rows of the data file (the packaged one by default)."""
    file = Path(path) if path else REFERENCE_FILE
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise UserError(f"{file}: cannot read the reference rows ({err})") from None
    sources = data.get("sources", {})
    rows = []
    for i, raw in enumerate(data.get("rows", [])):
        if raw.get("source") not in sources:
            raise UserError(f"{file}: rows[{i}] cites unknown source {raw.get('source')!r}")
        rows.append(
            ReferenceRow(
                backbone=raw["backbone"],
                method=raw["method"],
                adapter=raw["adapter"],
                params_m=raw.get("params_m"),
                average=float(raw["average"]),
                average_kind=raw.get("average_kind", "group_means"),
                per_task=dict(raw["per_task"]) if raw.get("per_task") else None,
                source=raw["source"],
                citation=sources[raw["source"]],
                note=raw.get("note", ""),
                average_mismatch=bool(raw.get("average_mismatch", False)),
            )
        )
    return tuple(rows)


def reference_rows(backbone: str, suite: str = "vtab") -> list[ReferenceRow]:
    """The published rows for ``backbone``; only VTAB-1K tables get any."""
    if suite != "vtab":
        return []
    return [row for row in load_reference() if row.backbone == backbone]
