"""``python -m vtab_lily.data prepare --from PATH --root data/vtab-1k``: lay out VTAB-1K from what users have.

PATH is a NOAH-layout archive (zip or tar, one task or all of them, possibly under one folder
such as ``vtab-1k/``), a NOAH-layout folder, or a built TFDS data folder (recognised by its
``dataset_info.json``; read by :mod:`vtab_lily.data.tfds`, no TensorFlow). Each task is written
into ``<root>/.staging/<task>/``, checked as ``verify`` does, given its ``manifest.json``
(fingerprint) and only then renamed to ``<root>/<task>`` in one step: a killed prepare leaves
no task that anything reads, and a rerun skips the tasks already in place.
"""

from __future__ import annotations

import importlib
import os
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from tabulate import tabulate
from tqdm import tqdm

from ..errors import UserError
from ..tasks import VTAB_TASKS, get_task, split_task_list
from . import archive
from .cache import default_cache_dir
from .manifest import MANIFEST, PIXELS_PX, compute_manifest, read_manifest, write_manifest
from .parallel import default_workers, folder_lock, positive_int
from .verify import verify_task
from .write_tfds import TFDS_SPLITS, WriteFailed, write_tfds_task

STAGING = ".staging"


@dataclass
class TaskRow:
    task: str
    source: str = "-"
    counts: dict[str, int] = field(default_factory=dict)
    encoding: str = "-"
    fingerprint: str = "-"
    status: str = ""
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class Preparer:
    root: Path
    wanted: list[str] | None = None  # registry names; None = every task found
    encoding: str = "png"  # for TFDS sources; archives keep their files as they are
    workers: int | None = None
    progress: bool = True
    pixels_px: int = PIXELS_PX
    build_cache: bool = False
    drop_undecodable: bool = False  # drop undecodable *test* images (SUN397 has one), recorded in the manifest
    rows: dict[str, TaskRow] = field(default_factory=dict)
    claimed: dict[str, tuple[str, str]] = field(default_factory=dict)  # task -> (source, folder as named)
    tfds_dropped: dict[str, list[str]] = field(default_factory=dict)  # task -> test records left out of a TFDS source

    def wants(self, task: str) -> bool:
        return self.wanted is None or task in self.wanted

    def finished(self, task: str) -> bool:
        """The task is in place with its manifest (a finished task is not redone)."""
        try:
            manifest = read_manifest(self.root, task) if (self.root / task / MANIFEST).is_file() else None
        except UserError:  # damaged: the task is checked against the source again and its manifest rewritten
            manifest = None
        if manifest is None:
            return False
        row = self.rows.setdefault(task, TaskRow(task, manifest.get("source", "-")))
        row.counts = {s: v["n"] for s, v in manifest["splits"].items()}
        row.encoding, row.fingerprint, row.status = manifest["encoding"], manifest["fingerprint"], "already prepared"
        return True

    def claim(self, task: str, source: str, folder: str) -> bool:
        """Whether this source should write ``task``; refuses a task found twice."""
        if task in self.claimed:
            if self.claimed[task] != (source, folder):
                first = self.claimed[task]
                raise UserError(f"task {task} is in two places: {first[0]} ({first[1]}/) and {source} ({folder}/); "
                                "prepare one of them (--tasks, or fewer --from)")
            return True
        if not self.wants(task) or self.finished(task):
            return False
        self.claimed[task] = (source, folder)
        staged = self.root / STAGING / task
        shutil.rmtree(staged, ignore_errors=True)  # a half-written earlier attempt is started over
        staged.mkdir(parents=True)
        return True

    # --- sources ------------------------------------------------------------------------------
    def from_archive(self, source: Path, kind: str) -> list[str]:
        """Copy every wanted task of a zip, tar or folder into staging; the tasks it held."""
        tasks: list[str] = []
        skipped: set[str] = set()
        bar = tqdm(desc=f"reading {source.name}", unit="file", disable=None if self.progress else True, leave=False)
        with bar:
            for entry in archive.entries(source, kind):
                if entry.task not in tasks:
                    tasks.append(entry.task)
                if entry.task in skipped:
                    continue
                if not self.claim(entry.task, str(source), entry.folder):
                    skipped.add(entry.task)
                    continue
                try:
                    archive.write_entry(entry, self.root / STAGING / entry.task, source)
                except OSError as err:
                    raise WriteFailed(f"cannot write {err.filename or self.root}: {err.strerror or err}") from None
                bar.update()
        return tasks

    def refuse_tasks_in_two_places(self, paths: list[Path], kinds: list[str]) -> None:
        """Before anything is written: a wanted task (not in place yet) found in two sources, or
        twice in one, is refused. Reads every source's names (``claim`` would otherwise notice
        only after the first copy was installed)."""
        places: dict[str, list[tuple[str, str]]] = {}
        for path, kind in zip(paths, kinds):
            found = {t: {"tfds"} for t in _tfds_builders(path)} if kind == "tfds" else archive.task_folders(path, kind)
            for task, folders in found.items():
                places.setdefault(task, []).extend((str(path), folder) for folder in sorted(folders))
        for task in VTAB_TASKS:
            where = places.get(task, [])
            if len(where) > 1 and self.wants(task) and not self.finished(task):
                (first, first_folder), (second, second_folder) = where[:2]
                raise UserError(f"task {task} is in two places: {first} ({first_folder}/) and {second} "
                                f"({second_folder}/); prepare one of them (--tasks, or fewer --from); nothing "
                                "was written")

    def from_tfds(self, source: Path) -> list[str]:
        tfds = _tfds_module(source)
        builders = _tfds_builders(source)  # version notes come again per task, below
        tasks = [t for t in VTAB_TASKS if t in builders and self.claim(t, str(source), "tfds")]
        for task in tasks:
            row = self.rows.setdefault(task, TaskRow(task, f"tfds {source}"))
            try:  # one broken builder (bad CRC, missing shard) keeps that task out, not the others
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    self.write_tfds_task(task, tfds.vtab_task_splits(source, task))
            except WriteFailed:
                raise
            except UserError as err:
                row.problems.append(str(err))
                row.status = "NOT prepared (source error)"
                shutil.rmtree(self.root / STAGING / task, ignore_errors=True)  # half-written: never reused
                continue
            finally:
                row.notes += [str(w.message) for w in caught]  # e.g. a kitti version other than the pinned one
            self.finish(task, f"tfds {source}", self.encoding)
        return [t for t in VTAB_TASKS if t in builders]

    def write_tfds_task(self, task: str, splits: dict) -> None:
        dropped = write_tfds_task(self.root / STAGING / task, VTAB_TASKS[task], splits, self.encoding, self.workers,
                                  self.progress, self.drop_undecodable)
        if dropped:
            self.tfds_dropped[task] = dropped

    def discard_unfinished(self) -> None:
        """Remove the staging folders of this run's claimed tasks that are not in place (a source
        failed mid-way): they are ours, and a rerun starts them over anyway."""
        for task in self.claimed:
            shutil.rmtree(self.root / STAGING / task, ignore_errors=True)

    # --- checking and moving into place ---------------------------------------------------------
    def finish(self, task: str, source_label: str, encoding: str | None) -> None:
        """Verify the staged task; give it a manifest; move it into place (or match an existing one)."""
        row = self.rows.setdefault(task, TaskRow(task, source_label))
        staged, final = self.root / STAGING / task, self.root / task
        # the pixel hashes come from verify's own decoding (each image decoded once), except when
        # the cache is built: that decodes anyway, and hashes on the way
        pixels_px = None if self.build_cache else self.pixels_px
        notes_dir = default_cache_dir(self.root)  # the pixel hashes, noted for the first run's data check
        report = verify_task(self.root / STAGING, VTAB_TASKS[task], workers=self.workers,
                             show_progress=self.progress, pixels_px=pixels_px, notes_dir=notes_dir)
        dropped = self._drop_undecodable(task, report) if self.drop_undecodable and report.unreadable else []
        if dropped:
            report = verify_task(self.root / STAGING, VTAB_TASKS[task], workers=self.workers,
                                 show_progress=self.progress, pixels_px=pixels_px, notes_dir=notes_dir)
            row.notes.append(f"dropped {len(dropped)} undecodable test image(s): {', '.join(dropped[:5])}")
        if task in self.tfds_dropped:  # left out while reading the TFDS records
            dropped = self.tfds_dropped.pop(task) + dropped
            row.notes.append(f"dropped {len(dropped)} undecodable test record(s): {', '.join(dropped[:5])}")
        row.counts = {s: len(v) for s, v in report.split_lists.items()}
        row.notes += report.warnings
        if not report.ok:
            row.problems += report.problems or [f"{staged}: incomplete"]
            row.status = "NOT prepared (bad data)"
            return
        cache_dir = default_cache_dir(self.root) if self.build_cache else None
        manifest = compute_manifest(task, report.split_lists, source_label, encoding, size=self.pixels_px,
                                    cache_dir=cache_dir, build_cache=self.build_cache, workers=self.workers,
                                    progress=self.progress, pixels=report.pixels_sha256)
        if dropped:
            manifest["dropped"] = dropped
        row.encoding, row.fingerprint = manifest["encoding"], manifest["fingerprint"]
        if final.exists():
            differing = _differences(staged, final)
            if differing:
                row.problems.append(f"{final} exists and differs from the source ({differing}); it was left as it "
                                    f"is: move it away to prepare {task} afresh")
                row.status = "NOT prepared (exists, differs)"
                return
            write_manifest(final, manifest)
            shutil.rmtree(staged)
            row.notes = [note.replace(str(staged), str(final)) for note in row.notes]
            row.status = "existing folder matches; manifest written"
            return
        write_manifest(staged, manifest)  # last file in: a staged task with a manifest is complete
        os.rename(staged, final)  # one step: the task appears whole or not at all
        row.notes = [note.replace(str(staged), str(final)) for note in row.notes]
        row.status = "prepared"

    def _drop_undecodable(self, task: str, report) -> list[str]:
        """Remove undecodable images from the staged test list (only there: the 800/200 training
        splits must stay whole); the dropped paths, or [] when a training image is also bad."""
        test = report.split_lists.get("test")
        bad = {path for path in report.unreadable}
        if test is None or any(test.image_path(e) in bad for s, v in report.split_lists.items() if s != "test"
                               for e in v.entries):
            return []
        drop = {e.line for e in test.entries if test.image_path(e) in bad}
        lines = test.file.read_text(encoding="utf-8-sig").split("\n")
        test.file.write_text("\n".join(line for number, line in enumerate(lines, 1) if number not in drop))
        return [e.path for e in test.entries if e.line in drop]


def _tfds_module(source: Path):
    try:
        return importlib.import_module("vtab_lily.data.tfds")
    except ImportError as err:
        raise UserError(f"--from {source}: a TFDS folder, but TFDS reading is not available ({err})") from None


def _tfds_builders(source: Path) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # version notes come with the task
        return _tfds_module(source).find_builders(source)


def _differences(staged: Path, final: Path) -> str | None:
    """The first file of ``staged`` missing from ``final`` or different there, or None."""
    import filecmp

    for path in sorted(staged.rglob("*")):
        if path.is_file() and path.name != MANIFEST:
            theirs = final / path.relative_to(staged)
            if not theirs.is_file():
                return f"{theirs} is missing"
            if not filecmp.cmp(path, theirs, shallow=False):
                return f"{theirs} differs"
    return None


def prepare(sources: list[str | Path], root: str | Path, tasks: list[str] | None = None, encoding: str = "png",
            workers: int | None = None, progress: bool = True, pixels_px: int = PIXELS_PX,
            build_cache: bool = False, drop_undecodable: bool = False) -> dict[str, TaskRow]:
    """Prepare every wanted task found in ``sources`` under ``root``; one :class:`TaskRow` per task.

    Unsafe or damaged sources raise :class:`UserError` at once (nothing written outside
    ``<root>/.staging``); bad data in a task is reported in its row and the task is not moved in.
    Wanted tasks found in no source get a row with a problem.
    """
    if encoding not in ("png", "jpeg"):
        raise UserError(f"--encoding {encoding!r}: choose png (lossless) or jpeg (as the common archive)")
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise UserError(f"--root {root}: exists and is not a folder")
    if tasks is not None and not tasks:
        raise UserError("--tasks names no task; leave it out (None) for every task found")
    wanted = [get_task(name).name for name in tasks] if tasks is not None else None
    paths = list({Path(s).resolve(): Path(s) for s in sources}.values())  # each source once
    kinds = [archive.source_kind(p) for p in paths]  # every source checked before any work
    for path in paths:
        if path.is_dir() and path.resolve() in (root.resolve(), *root.resolve().parents):
            raise UserError(f"--from {path}: is the target root (or holds it); for a tree already laid out run "
                            f"`python -m vtab_lily.data verify --root {root} --write-manifest`")
    created = _missing_folders(root)  # what mkdir makes (root, parents), removed again if left empty
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"--root {root}: cannot create it ({err.strerror or err})") from None
    prep = Preparer(root, wanted, encoding, workers, progress, pixels_px, build_cache, drop_undecodable)
    found: dict[Path, list[str]] = {}
    try:
        with folder_lock(root):
            try:
                if len(paths) > 1:  # one source is checked as it is read, before any of its tasks is installed
                    prep.refuse_tasks_in_two_places(paths, kinds)
                _run_sources(prep, paths, kinds, found)
            except Exception:  # a source failed: its half-staged task is never reused (claim starts it over).
                prep.discard_unfinished()  # (Ctrl-C keeps it, as a kill would)
                raise
            finally:
                _remove_if_empty([root / STAGING, *created])  # under the lock: nobody is writing there
    except OSError as err:  # disk full, a read-only root, a source that fails to read mid-way
        raise WriteFailed(f"{err.filename or root}: {err.strerror or err} (finished tasks are kept; rerun to "
                          "continue)") from None
    finally:
        _remove_if_empty(created)  # the fallback lock file (no flock on this file system) is gone only now
    if not any(found.values()):
        raise UserError(f"no VTAB-1K task folders in {', '.join(map(str, paths))} (expected <task>/train800.txt ... "
                        "or one folder above, e.g. vtab-1k/<task>/...; task names as in python -m vtab_lily.tasks)")
    for task in wanted or VTAB_TASKS:
        if task not in prep.rows and not prep.finished(task):
            row = prep.rows[task] = TaskRow(task, status="not in the sources")
            if wanted:
                row.problems.append(f"task {task} is in none of: {', '.join(map(str, paths))}")
    return {t: prep.rows[t] for t in VTAB_TASKS if t in prep.rows}


def _run_sources(prep: Preparer, paths: list[Path], kinds: list[str], found: dict[Path, list[str]]) -> None:
    """Each source in turn (the caller holds the lock on the root); ``found`` gets the tasks each one held."""
    for path, kind in zip(paths, kinds):
        if kind == "tfds":
            found[path] = prep.from_tfds(path)
            continue
        found[path] = prep.from_archive(path, kind)
        for task in found[path]:
            if prep.claimed.get(task, ("",))[0] == str(path):
                prep.finish(task, f"{kind} {path.name}", None)


def _missing_folders(path: Path) -> list[Path]:
    """``path`` and those of its parents that do not exist yet, deepest first."""
    missing = []
    while not path.exists() and not path.is_symlink() and path != path.parent:
        missing.append(path)
        path = path.parent
    return missing


def _remove_if_empty(folders: list[Path]) -> None:
    """Remove each folder (deepest first) while it is empty; stop at the first that is not (or is
    gone, or cannot be removed): a folder holding anything, ours or the user's, is never touched."""
    for folder in folders:
        try:
            folder.rmdir()  # fails on a folder that holds anything
        except FileNotFoundError:
            continue
        except OSError:
            return


def format_summary(rows: dict[str, TaskRow]) -> str:
    table = [[r.task, r.source, *(r.counts.get(s, "-") for s in TFDS_SPLITS), r.encoding, r.fingerprint,
              r.status + (f" ({len(r.problems)} problems)" if r.problems else "")] for r in rows.values()]
    lines = [tabulate(table, headers=["task", "source", *TFDS_SPLITS, "encoding", "fingerprint", "status"],
                      tablefmt="github")]
    for row in rows.values():
        lines += [f"  {row.task}: warning: {note}" for note in row.notes]
        lines += [f"  {row.task}: problem: {problem}" for problem in row.problems[:20]]
        if len(row.problems) > 20:
            lines.append(f"  {row.task}: ... and {len(row.problems) - 20} more problems")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m vtab_lily.data prepare", allow_abbrev=False,
        description="Lay out VTAB-1K (NOAH layout, with a manifest.json fingerprint per task) from pre-converted "
                    "archives or folders, or from a built TFDS data folder (no TensorFlow needed).")
    parser.add_argument("--from", dest="sources", action="append", required=True, metavar="PATH",
                        help="zip/tar archive, NOAH-layout folder or TFDS data folder (repeatable)")
    parser.add_argument("--root", required=True, help="where the tasks go, e.g. data/vtab-1k")
    parser.add_argument("--tasks", default=None, help="comma-separated task names (default: every task found)")
    parser.add_argument("--encoding", choices=("png", "jpeg"), default="png",
                        help="image files written from TFDS: png (lossless, default) or jpeg (PIL's default "
                             "quality, as the common archive; for comparison with published numbers)")
    parser.add_argument("--workers", type=positive_int, default=default_workers(), help="threads (>= 1)")
    parser.add_argument("--drop-undecodable", action="store_true",
                        help="drop test images that cannot be decoded (one SUN397 image) from test.txt instead of "
                             "keeping the task out; recorded in the manifest and the summary")
    parser.add_argument("--cache", action="store_true",
                        help="keep the 224 px decoded cache built while fingerprinting (training reuses it)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    args = parser.parse_args(argv)
    tasks = split_task_list(args.tasks) if args.tasks is not None else None  # '' is refused, never "every task"
    rows = prepare(args.sources, args.root, tasks, args.encoding, args.workers, build_cache=args.cache,
                   drop_undecodable=args.drop_undecodable)
    print(format_summary(rows))
    bad = [r.task for r in rows.values() if r.problems]
    absent = [r.task for r in rows.values() if r.status == "not in the sources" and not r.problems]
    if absent:
        print(f"\nnot in the sources (public uploads often hold 12 of the 19 tasks): {', '.join(absent)}")
    if bad:
        print(f"\nnot prepared, see the problems above: {', '.join(bad)}")
        return 2
    print(f"\nready in {args.root}: {sum(r.status != 'not in the sources' for r in rows.values())} tasks")
    return 0
