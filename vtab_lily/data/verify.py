"""``python -m vtab_lily.data verify``: check a data root before spending hours training.

For every task: each split's size against the registry, the label range against the
task's class count, list-file problems (malformed lines, bad paths, duplicates) and
unreadable images (missing, empty, truncated, corrupt; fully decoded unless ``--quick``).
A task with a ``manifest.json`` is checked against it: the lists always; the pixels (decoded at
the manifest's ``pixels_px`` and hashed) and the encoding unless ``--quick`` (which compares the
pixels only where the cache holds a pixel note for the data as it is now).
``--write-manifest`` (re)writes the manifest of every task whose data checks clean, a stale or
damaged manifest included: that is the way to record data changed on purpose.
Prints a table per task, then every problem, and returns 2 when anything is off (as every
command does for bad data).
A test split of an unexpected size is a warning only (kitti releases differ).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

from tabulate import tabulate

from ..errors import UserError
from ..tasks import SPLITS, Task, suite
from . import cache
from .cache import default_cache_dir
from .images import check_image
from .lists import check_root, entry_limit, parse_list, size_problem
from .manifest import (MANIFEST, PIXELS_PX, compute_manifest, detect_encoding, list_sha256, read_manifest,
                       write_manifest)
from .parallel import default_workers, map_with_progress, positive_int

BAD_DATA = 2  # exit status for bad or missing data (as a run refusing bad data; README's table)
MAX_LISTED = 20  # problems printed per task; the rest are counted


@dataclass
class TaskReport:
    task: Task
    rows: list[list] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    missing: bool = False
    manifest: dict | None = None
    split_lists: dict = field(default_factory=dict)
    unreadable: dict = field(default_factory=dict)  # image path -> why it cannot be decoded
    pixels_sha256: dict = field(default_factory=dict)  # split -> pixel hash at pixels_px
    pixels_px: int | None = None  # the size pixels_sha256 was taken at
    manifest_problems: list[str] = field(default_factory=list)  # the manifest does not describe the data
    pixels_checked: list[str] = field(default_factory=list)  # splits whose pixels matched the manifest

    @property
    def data_ok(self) -> bool:
        """The data itself is fine (a stale manifest aside: ``--write-manifest`` rewrites it)."""
        return not self.problems and not self.missing

    @property
    def ok(self) -> bool:
        return self.data_ok and not self.manifest_problems


def _image_problems(paths: list[Path], quick: bool, workers: int | None, progress: bool) -> dict[Path, str]:
    """Path -> why unreadable, for every unreadable one of ``paths``."""
    check = functools.partial(check_image, quick=quick)
    results = map_with_progress(check, paths, workers, "checking images", progress)
    return {path: why for path, why in zip(paths, results) if why}


def _decode_and_hash(parsed: dict, size: int, workers: int | None,
                     progress: bool) -> tuple[dict[Path, str], dict[str, str]]:
    """Decode every image of ``parsed`` at ``size`` in list order, as the manifest's pixel hash
    does: (path -> why unreadable, split -> pixel hash of each split whose images all decoded).

    A split listing exactly the splits decoded before it, in order (``train800val200`` =
    ``train800`` + ``val200``), is hashed from their images as they pass: each image is decoded
    once. Other splits are decoded on their own (an image listed twice is decoded twice).
    """
    from .cache import decode_chunks
    from .manifest import pixels_digest

    decoded: list[str] = []  # splits decoded, in order
    targets: dict[str, list[str]] = {}  # decoded split -> the splits its images are hashed into
    for split, split_list in parsed.items():
        paths = [e.path for e in split_list.entries]
        if decoded and paths == [e.path for s in decoded for e in parsed[s].entries]:
            for part in decoded:
                targets[part].append(split)
        else:
            decoded.append(split)
            targets[split] = [split]
    digests = {split: pixels_digest(len(split_list), size) for split, split_list in parsed.items()}
    unreadable: dict[Path, str] = {}
    broken: set[str] = set()
    for split in decoded:
        split_list = parsed[split]

        def bad(entry, why: str, split_list=split_list, split=split) -> None:
            unreadable.setdefault(split_list.image_path(entry), why)
            broken.update(targets[split])

        for chunk in decode_chunks(split_list, size, workers, progress, desc=f"checking {split_list.file.name}",
                                   on_unreadable=bad):
            for target in targets[split]:
                digests[target].update(memoryview(chunk))
    return unreadable, {s: d.hexdigest() for s, d in digests.items() if s not in broken}


def verify_task(root: Path, task: Task, quick: bool = False, workers: int | None = None,
                show_progress: bool = True, pixels_px: int | None = None,
                notes_dir: Path | None = None, hash_pixels: bool = True) -> TaskReport:
    """Check all four splits of one task; never raises for bad data, only reports it.

    Unless ``quick``, the images are decoded at ``pixels_px`` (default: the manifest's, when
    there is one), in list order, and each split's pixel hash (``report.pixels_sha256``) is taken
    on the way: ``prepare`` writes the manifest from it, and a manifest is checked against it
    (each image decoded once). ``notes_dir``: the cache folder whose pixel notes are written
    for the hashes taken (and read where no hash was taken). ``hash_pixels=False``: images are
    only decoded, as ``--write-manifest`` does (the new manifest's pixels come from the cache, as
    the loader's own).
    """
    report = TaskReport(task)
    folder = root / task.name
    if not folder.is_dir():
        report.missing = True
        report.problems.append(f"{folder}: task folder is missing")
        return report
    parsed, list_problems = {}, {}
    for split in SPLITS:
        file = folder / f"{split}.txt"
        if not file.is_file():
            report.problems.append(f"{file}: list file is missing")
            report.rows.append([split, "-", task.expected_size(split), "-", "-", "-", "MISSING"])
            continue
        parsed[split], list_problems[split] = parse_list(file, folder, task.num_classes,
                                                         max_entries=entry_limit(task, split))
        report.problems.extend(list_problems[split])
    try:
        report.manifest = read_manifest(root, task.name)
    except UserError as err:
        report.manifest_problems.append(str(err))
    if pixels_px is None and report.manifest is not None:
        pixels_px = report.manifest.get("pixels_px", PIXELS_PX)
    # the images' size/mtime before decoding: the key the pixel notes are kept under
    digests = {split: cache.images_digest(sl) for split, sl in parsed.items()} if notes_dir is not None else {}
    # Each image once, even when several splits list it (train800val200 repeats train800 + val200).
    first_listed: dict[Path, str] = {}
    for split_list in parsed.values():
        for entry in split_list.entries:
            first_listed.setdefault(split_list.image_path(entry), split_list.where(entry))
    if pixels_px is not None and not quick and hash_pixels:
        unreadable, report.pixels_sha256 = _decode_and_hash(parsed, pixels_px, workers, show_progress)
        report.pixels_px = pixels_px
        unreadable = {path: unreadable[path] for path in first_listed if path in unreadable}  # listed order
        for split, digest in report.pixels_sha256.items():
            if notes_dir is not None:
                cache.write_pixels_note(_note_path(notes_dir, task, split, parsed[split], digests[split], pixels_px),
                                        digest)
    else:
        unreadable = _image_problems(list(first_listed), quick, workers, show_progress)
    report.unreadable = unreadable
    for path, why in unreadable.items():
        report.problems.append(f"{first_listed[path]}: {path.relative_to(folder)}: {why}")
    for split, split_list in parsed.items():
        labels = split_list.labels
        n_bad = sum(split_list.image_path(e) in unreadable for e in split_list.entries)
        flags = ["BAD LINES"] if list_problems[split] else []
        mismatch = size_problem(task, split, len(split_list), split_list.file)
        if mismatch and split == "test":
            report.warnings.append(mismatch)
            flags.append("size differs (warning)")
        elif mismatch:
            report.problems.append(mismatch)
            flags.append("WRONG SIZE")
        if n_bad:
            flags.append("UNREADABLE")
        status = ", ".join(flags) or "ok"
        label_range = f"{min(labels)}..{max(labels)} of {task.num_classes}" if labels else "-"
        report.rows.append([split, len(split_list), task.expected_size(split), label_range,
                            len(set(labels)), n_bad, status])
    order = {s: i for i, s in enumerate(SPLITS)}
    report.rows.sort(key=lambda row: order[row[0]])
    report.split_lists = parsed
    if report.manifest is not None:
        report.manifest_problems += _manifest_problems(report, folder / MANIFEST, quick, notes_dir, digests)
    return report


def _note_path(notes_dir: Path, task: Task, split: str, split_list, images_sha256: str, size: int) -> Path:
    return cache.cache_path(notes_dir, task.name, split, size, split_list.sha256, images_sha256)


def _manifest_problems(report: TaskReport, path: Path, quick: bool, notes_dir: Path | None,
                       digests: dict[str, str]) -> list[str]:
    """Where the manifest no longer describes the data: lists, pixels, encoding."""
    manifest = report.manifest
    size = manifest.get("pixels_px", PIXELS_PX)
    problems = []
    for split, split_list in report.split_lists.items():
        recorded = manifest["splits"].get(split)
        if recorded is None:
            problems.append(f"{path}: has no entry for {split}")
            continue
        if recorded["n"] != len(split_list) or recorded["list_sha256"] != list_sha256(split_list):
            problems.append(f"{path}: does not match {split_list.file} (changed after the manifest was written; "
                            f"`verify --write-manifest` records the data as it is now)")
            continue
        actual = report.pixels_sha256.get(split) if report.pixels_px == size else None
        if actual is None and notes_dir is not None:
            actual = cache.read_pixels_note(_note_path(notes_dir, report.task, split, split_list, digests[split], size))
        if actual is None:
            continue  # not hashed and no note (--quick, --write-manifest), or unreadable images (reported)
        if actual != recorded["pixels_sha256"]:
            problems.append(f"{path}: the images listed in {split_list.file} decode to other pixels at {size} px "
                            f"than it records (an image was replaced or edited, or pixels_px changed; "
                            f"`verify --write-manifest` records the data as it is now)")
        else:
            report.pixels_checked.append(split)
    if not quick and not report.unreadable:
        found = detect_encoding(list(report.split_lists.values()))
        if found != manifest["encoding"]:
            problems.append(f"{path}: encoding {manifest['encoding']!r}, but the listed images are {found!r} "
                            f"(`verify --write-manifest` records the data as it is now)")
    return problems


def write_task_manifest(root: Path, report: TaskReport, workers: int | None, progress: bool = True,
                        cache_dir: Path | None = None, size: int = PIXELS_PX) -> dict:
    """Compute and write the manifest of a task whose data verified clean (reusing the pixel
    hashes verify took, else the cache); a stale manifest's source is kept, marked as edited."""
    source = report.manifest.get("source") if report.manifest else None
    if source and report.manifest_problems and not source.endswith(", changed after"):
        source += ", changed after"
    pixels = report.pixels_sha256 if report.pixels_px == size else None
    manifest = compute_manifest(report.task.name, report.split_lists, source or "laid out by hand", size=size,
                                cache_dir=cache_dir or default_cache_dir(root), workers=workers, progress=progress,
                                pixels=pixels)
    write_manifest(root / report.task.name, manifest)
    report.manifest = manifest
    return manifest


def fingerprint_line(report: TaskReport) -> str:
    manifest = report.manifest
    if manifest is None:
        return "  fingerprint: none (no manifest.json; `verify --write-manifest` computes it)"
    checked = len(report.pixels_checked)
    pixels = "pixels match" if checked and checked == len(report.split_lists) else \
        f"pixels match for {checked} of {len(report.split_lists)} splits" if checked else "pixels not checked"
    return (f"  fingerprint: {manifest['fingerprint']} ({manifest['encoding']}, {manifest.get('pixels_px', 224)} px, "
            f"source {manifest.get('source')}; {pixels})")


def format_report(report: TaskReport) -> str:
    task = report.task
    title = f"{task.name} ({task.group}, {task.num_classes} classes)"
    if report.missing:
        return f"{title}: MISSING"
    table = tabulate(report.rows, headers=["split", "images", "expected", "labels", "classes seen",
                                           "unreadable", "status"], tablefmt="github")
    lines = [title, table, fingerprint_line(report)]
    lines += [f"  warning: {w}" for w in report.warnings]
    problems = report.problems + report.manifest_problems
    lines += [f"  problem: {p}" for p in problems[:MAX_LISTED]]
    if len(problems) > MAX_LISTED:
        lines.append(f"  ... and {len(problems) - MAX_LISTED} more problems")
    return "\n".join(lines)


def detect_suite(root: Path) -> str:
    """"demo" for a root written by the demo generator, else "vtab"."""
    from .demo import MARKER

    return "demo" if (root / MARKER).is_file() else "vtab"


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m vtab_lily.data verify", allow_abbrev=False,
        description="Check a VTAB-1K data root (NOAH layout): split sizes, labels, images.")
    parser.add_argument("--root", required=True, help="suite root, e.g. data/vtab-1k")
    parser.add_argument("--tasks", default=None, help="comma-separated task names (default: all of the suite)")
    parser.add_argument("--suite", default=None, help="vtab or demo (default: demo if the root is a demo suite)")
    parser.add_argument("--quick", action="store_true", help="only check that images exist and are non-empty")
    parser.add_argument("--workers", type=positive_int, default=default_workers(), help="decoding threads (>= 1)")
    parser.add_argument("--write-manifest", action="store_true",
                        help="compute each clean task's manifest.json (fingerprint) and write it; uses the "
                             "decoded cache when there is one")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    args = parser.parse_args(argv)
    root = check_root(args.root)
    suite_name = args.suite or detect_suite(root)
    registry = suite(suite_name)
    if args.tasks is not None:  # an empty --tasks is refused, never "every task"
        from ..tasks import get_task, split_task_list

        tasks = [get_task(name, suite_name) for name in split_task_list(args.tasks)]
    else:
        tasks = list(registry.values())
    pixels_px = PIXELS_PX
    if suite_name == "demo":  # the demo's fingerprints are taken at its own size, as its generator writes them
        from .demo import SIZE as pixels_px
    reports = []
    notes_dir = default_cache_dir(root)
    for task in tasks:
        # --write-manifest decodes to check the images and takes the new pixel hashes from the
        # cache (or its notes) where it can, as a run's loader does, rather than hashing twice
        report = verify_task(root, task, quick=args.quick, workers=args.workers, notes_dir=notes_dir,
                             hash_pixels=not args.write_manifest)
        if args.write_manifest and report.data_ok:
            stale = report.manifest_problems
            old_px = (report.manifest or {}).get("pixels_px", pixels_px)
            if old_px != pixels_px:
                stale.append(f"pixels_px {old_px}, but this suite's manifests hash pixels at {pixels_px} px")
            write_task_manifest(root, report, args.workers, cache_dir=notes_dir, size=pixels_px)
            report.manifest_problems = []
            report.pixels_checked = list(report.split_lists)
            if stale:
                report.warnings.append(f"{root / task.name / MANIFEST}: rewritten; it no longer described the "
                                       f"data ({len(stale)} difference(s), e.g. {stale[0]})")
        print(format_report(report) + "\n")
        reports.append(report)
    missing = [r.task.name for r in reports if r.missing]
    bad = [r.task.name for r in reports if not r.ok and not r.missing]
    if missing:
        print(f"missing from {root}: {', '.join(missing)}")
    if bad:
        print(f"problems in: {', '.join(bad)}")
    if missing or bad:
        return BAD_DATA
    print(f"all {len(reports)} tasks ok in {root} ({suite_name} suite)")
    return 0
