"""Which data each leaderboard row was built on, from result.json's ``data`` section.

Every task has its own fingerprint (``<root>/<task>/manifest.json``: list files and decoded
pixels), so a row carries one fingerprint per task. Rules:

- runs of one method on one task with different fingerprints never share a row: the
  most used fingerprint of each task forms the main row, the others "data 2", "data 3" rows;
- a row's *digest* is its one fingerprint (first 8 hex) when all its tasks share it, else a
  short hash over its (task, fingerprint) pairs; ``?`` when no run recorded one (older
  results), ``mixed`` when only some did;
- a cell whose fingerprint differs from the one most rows of the table use for that task is
  marked (``DIFFERS_MARK``), and so is its row's digest; when rows disagree with no majority,
  all of them are marked on that task;
- ``--data-fingerprint FP`` keeps the cells built on data with that fingerprint (a hex prefix)
  and whole rows whose digest matches.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..errors import UserError
from ..results import data_of, finished_utc

DIFFERS_MARK = "†"
UNKNOWN = "?"
MIXED = "mixed"
_HEX = re.compile(r"^[0-9a-f]{4,64}$")
_ENCODINGS = {"png": "png", "lossless": "png", "jpeg": "jpeg", "jpg": "jpeg", "mixed": "mixed"}


@dataclass
class RowData:
    fingerprints: dict[str, str | None] = field(default_factory=dict)  # task -> fingerprint
    encodings: dict[str, str | None] = field(default_factory=dict)  # task -> png | jpeg | mixed | None
    variant: int = 0  # 0: the most used data of each task; 1, 2...: other copies
    differs: set[str] = field(default_factory=set)  # tasks whose data differs from the table's usual

    @property
    def digest(self) -> str:
        known = {t: fp for t, fp in self.fingerprints.items() if fp}
        if not known:
            return UNKNOWN
        if len(known) < len(self.fingerprints):
            return MIXED
        distinct = set(known.values())
        if len(distinct) == 1:
            return next(iter(distinct))[:8]
        text = "\n".join(f"{t}:{fp}" for t, fp in sorted(known.items()))
        return hashlib.sha256(text.encode()).hexdigest()[:8]

    @property
    def encoding(self) -> str:
        values = {_ENCODINGS.get((e or "").lower(), e) if e else None for e in self.encodings.values()}
        if not values or values == {None}:
            return UNKNOWN
        if None in values:
            values.discard(None)
            values.add(UNKNOWN)
        return values.pop() if len(values) == 1 else MIXED

    @property
    def label(self) -> str:
        """``<encoding> <digest>`` with the mark when some task's data differs from the usual."""
        text = UNKNOWN if self.encoding == self.digest == UNKNOWN else f"{self.encoding} {self.digest}"
        return text + (DIFFERS_MARK if self.differs else "")


def row_data(per_task: dict[str, dict]) -> RowData:
    """From ``{task: results.data_of(result)}`` of a row's runs (one data copy per task)."""
    return RowData({t: d["fingerprint"] for t, d in per_task.items()}, {t: d["encoding"] for t, d in per_task.items()})


def split_by_data(results: list[dict]) -> list[list[dict]]:
    """Results of one method -> one list per data variant: on each task the most used
    fingerprint (then the most recent) goes to variant 0, the next one to variant 1, ..."""
    by_task: dict[str, Counter] = {}
    latest: dict[tuple, object] = {}
    for result in results:
        key = (result["task"], data_of(result)["fingerprint"])
        by_task.setdefault(result["task"], Counter())[key[1]] += 1
        latest[key] = max(latest.get(key, finished_utc(result)), finished_utc(result))
    rank = {}
    for task, counts in by_task.items():
        order = sorted(counts, key=lambda fp: (-counts[fp], -latest[(task, fp)].timestamp(), str(fp)))
        rank.update({(task, fp): i for i, fp in enumerate(order)})
    variants: dict[int, list[dict]] = {}
    for result in results:
        variants.setdefault(rank[(result["task"], data_of(result)["fingerprint"])], []).append(result)
    return [variants[i] for i in sorted(variants)]


def _matches(fingerprint: str | None, wanted: list[str]) -> bool:
    return bool(fingerprint) and any(fingerprint.lower().startswith(w) for w in wanted)


def select(row, wanted: list[str], resummarise: Callable) -> object:
    """Keep the cells of ``row`` built on one of the ``wanted`` fingerprints (all of them when
    the row's digest matches); returns the row (with no cells when nothing matched)."""
    if any(row.data.digest.startswith(w) for w in wanted):
        return row
    keep = {t for t, fp in row.data.fingerprints.items() if _matches(fp, wanted)}
    row.cells = {t: c for t, c in row.cells.items() if t in keep}
    row.best_cells = {t: c for t, c in row.best_cells.items() if t in keep}
    row.data.fingerprints = {t: fp for t, fp in row.data.fingerprints.items() if t in keep}
    row.data.encodings = {t: e for t, e in row.data.encodings.items() if t in keep}
    return resummarise(row)


def mark_against_majority(rows: list, wanted: list[str] | None = None) -> None:
    """Mark each row's tasks whose fingerprint differs from the ones given, or else from the
    one most rows of the table use on that task; on a tie (no single most used fingerprint)
    every row with a known fingerprint on that task is marked. Unknown fingerprints never are."""
    usual: dict[str, str | None] = {}
    if not wanted:
        counts: dict[str, Counter] = {}
        for row in rows:
            for task, fp in row.data.fingerprints.items():
                if fp:
                    counts.setdefault(task, Counter())[fp] += 1
        for task, counter in counts.items():
            ranked = counter.most_common()
            usual[task] = ranked[0][0] if len(ranked) == 1 or ranked[0][1] > ranked[1][1] else None
    for row in rows:
        row.data.differs = {t for t, fp in row.data.fingerprints.items()
                            if fp and ((wanted and not _matches(fp, wanted)) or (t in usual and fp != usual[t]))}


def parse_fingerprints(values: list[str] | None) -> list[str] | None:
    """``--data-fingerprint`` values: hex prefixes (4+ digits, comma-separated) or a prepared
    data root, whose tasks' ``manifest.json`` fingerprints are used."""
    if not values:
        return None
    wanted = []
    for value in values:
        if not value.strip():  # Path("") is the current folder: an empty value must not mean "."
            raise UserError(f"--data-fingerprint {value!r}: empty; give a hex fingerprint or a data folder "
                            "(`.` for the current one)")
        path = Path(value)
        if path.is_dir():
            wanted += _root_fingerprints(path)
            continue
        for part in filter(None, (p.strip().lower() for p in value.split(","))):
            if not _HEX.match(part):
                raise UserError(f"--data-fingerprint {value!r}: {part!r} is neither a hex fingerprint "
                                "(4 to 64 hex digits) nor a data folder")
            wanted.append(part)
    if not wanted:
        raise UserError(f"--data-fingerprint {' '.join(values)}: no fingerprint given")
    return wanted


def _root_fingerprints(root: Path) -> list[str]:
    found = []
    for manifest in sorted(root.glob("*/manifest.json")):
        try:
            fingerprint = json.loads(manifest.read_text(encoding="utf-8")).get("fingerprint")
        except (OSError, ValueError, AttributeError):
            raise UserError(f"{manifest}: not a readable manifest (run `python -m vtab_lily.data verify`)") from None
        if isinstance(fingerprint, str) and _HEX.match(fingerprint.lower()):
            found.append(fingerprint.lower())
    if not found:
        raise UserError(f"--data-fingerprint {root}: no <task>/manifest.json with a fingerprint under this folder")
    return found
