"""``fetch data vtab-1k``: the archive, then ``prepare`` on it, then what the archive lacks.

The archive lands beside the data root (``data/vtab-1k.zip`` for ``data/vtab-1k``); ``prepare``
checks every image, writes each task's ``manifest.json`` fingerprint and moves it into place.
The common public copies are known to fall short in two ways, both reported here: images
re-encoded as JPEG (lossy: the manifests say ``encoding: jpeg`` and results carry it) and uploads
that hold only some of the 19 tasks.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from ..tasks import VTAB_TASKS
from .core import fetch
from .sources import data_source


def fetch_data(name: str, root: Path, tasks: list[str] | None = None, progress: bool = True) -> dict:
    """Fetch data set ``name``'s archive and prepare ``tasks`` (None: all it holds) under ``root``;
    returns prepare's rows. UserError when a wanted task is not in the archive."""
    from ..data.prepare import format_summary, prepare

    source = data_source(name)
    root = Path(root)
    record = fetch(source, root.parent, progress=progress)
    archive = root.parent / source.file
    print(f"preparing {archive} -> {root} (every image decoded and checked; fingerprints written)", flush=True)
    rows = prepare([archive], root, tasks or None, progress=progress)
    print(format_summary(rows))
    print(gaps_report(rows))
    bad = [r.task for r in rows.values() if r.problems]
    if bad:
        raise UserError(f"{archive} (sha256 {record['sha256'][:16]}...): not prepared: {', '.join(bad)} (see the "
                        "problems above)")
    return rows


def gaps_report(rows: dict) -> str:
    """What the prepared data lacks, as a user should read it before comparing numbers."""
    ready = {t: r for t, r in rows.items() if r.status != "not in the sources" and not r.problems}
    absent = [t for t in VTAB_TASKS if t in rows and rows[t].status == "not in the sources"]
    lines = []
    lossy = sorted(t for t, r in ready.items() if r.encoding in ("jpeg", "mixed"))
    if lossy:
        lines.append(f"note: {len(lossy)} tasks are JPEG copies (lossy re-encoding, encoding=jpeg in their "
                     "manifests and results): accuracy differs from lossless data (CIFAR-100 by points); compare "
                     "only rows with the same data fingerprint")
    if absent:
        lines.append(f"note: this archive lacks {len(absent)} of the 19 tasks: {', '.join(absent)} (a partial upload; "
                     "get them elsewhere, e.g. python -m vtab_lily.data prepare --from ~/tensorflow_datasets)")
    if not lines and ready:
        lines.append(f"no known gaps: {len(ready)} tasks prepared, none lossy")
    return "\n".join(lines)
