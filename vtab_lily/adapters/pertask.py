"""Settings a method's authors chose per task, shipped as data (VPT's prompt length, FacT's rank
and scale, RepAdapter's scale).

A config field set to ``"paper"`` (the default of those fields) takes its value from the
method's published per-task table when the adapter is applied to a run of a VTAB-1K task.
The resolved config keeps ``"paper"`` (so all 19 runs of the official setup are one method
and one leaderboard row, and ``rank=16`` is one deviation on every task); the values a run
actually used are ``model.adapter_task_settings`` and ``adapter_task_settings`` in
config.json / result.json. Tasks outside VTAB-1K (the demo suite, or no task) use the
table's ``fallback``, named as such in the same record.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from vtab_lily.errors import UserError

PAPER = "paper"


@dataclass(frozen=True)
class PerTaskTable:
    """``values[task][field]`` as published; ``fallback[field]`` for any other task."""

    source: str
    values: dict[str, dict[str, Any]]
    fallback: dict[str, Any]

    def lookup(self, task: str | None) -> tuple[dict[str, Any], bool]:
        """(the settings for ``task``, whether they come from the published table)."""
        if task in self.values:
            return dict(self.values[task]), True
        return dict(self.fallback), False


def is_paper(value: Any) -> bool:
    return isinstance(value, str) and value == PAPER


def paper_fields(config_class: Any) -> tuple[str, ...]:
    """The fields of an adapter config class that take ``paper`` (those of its per-task table)."""
    table: PerTaskTable | None = getattr(config_class, "PAPER_TABLE", None)
    return tuple(table.fallback) if table is not None else ()


def check_paper_or(method: str, key: str, value: Any) -> None:
    """A string option of a per-task field must be exactly ``paper``."""
    if isinstance(value, str) and not is_paper(value):
        raise UserError(f"{method}: {key} must be a number or {PAPER!r} (the published per-task value), got {value!r}")


def for_task(config: Any, task: str | None) -> tuple[Any, dict[str, Any]]:
    """(``config`` with its ``paper`` fields filled in for ``task``, the record of what was used).

    Configs without a ``PAPER_TABLE`` (or with no field left at ``paper``) come back unchanged
    with an empty record.
    """
    table: PerTaskTable | None = getattr(config, "PAPER_TABLE", None)
    if table is None:
        return config, {}
    wanted = [f.name for f in dataclasses.fields(config) if is_paper(getattr(config, f.name))]
    if not wanted:
        return config, {}
    values, published = table.lookup(task)
    concrete = dataclasses.replace(config, **{k: values[k] for k in wanted})
    record = {k: values[k] for k in wanted}
    if published:
        record["from"] = f"{table.source}, {task}"
    else:
        record["from"] = "fallback: no task given" if task is None else f"fallback: no published value for task {task!r}"
    return concrete, record


def describe(record: dict[str, Any]) -> str:
    """``length=100 (VPT-deep prompt lengths ..., dmlab)`` for a ``for_task`` record."""
    values = " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items() if k != "from")
    return f"{values} ({record.get('from', '?')})"
