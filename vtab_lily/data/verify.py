"""``python -m vtab_lily.data verify``: check a data root before spending hours training.

For every task: each split's size against the registry, the label range against the
task's class count, list-file problems (malformed lines, bad paths, duplicates) and
unreadable images (missing, empty, truncated, corrupt; fully decoded unless ``--quick``).
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
from .cache import default_cache_dir
from .images import check_image
from .lists import check_root, parse_list, size_problem
from .manifest import MANIFEST, PIXELS_PX, compute_manifest, read_manifest, stale_problems, write_manifest
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
    pixels_sha256: dict = field(default_factory=dict)  # split -> pixel hash (verify_task's pixels_px)

    @property
    def ok(self) -> bool:
        return not self.problems and not self.missing


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
                show_progress: bool = True, pixels_px: int | None = None) -> TaskReport:
    """Check all four splits of one task; never raises for bad data, only reports it.

    With ``pixels_px`` (not ``quick``) the images are decoded at that size, in list order, and
    each split's pixel hash for its manifest (``report.pixels_sha256``) is computed on the way,
    so ``prepare`` decodes each image once instead of again for the fingerprint.
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
        parsed[split], list_problems[split] = parse_list(file, folder, task.num_classes)
        report.problems.extend(list_problems[split])
    # Each image once, even when several splits list it (train800val200 repeats train800 + val200).
    first_listed: dict[Path, str] = {}
    for split_list in parsed.values():
        for entry in split_list.entries:
            first_listed.setdefault(split_list.image_path(entry), split_list.where(entry))
    if pixels_px is not None and not quick:
        unreadable, report.pixels_sha256 = _decode_and_hash(parsed, pixels_px, workers, show_progress)
        unreadable = {path: unreadable[path] for path in first_listed if path in unreadable}  # listed order
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
    try:
        report.manifest = read_manifest(root, task.name)
    except UserError as err:
        report.problems.append(str(err))
    if report.manifest is not None:
        report.problems.extend(stale_problems(report.manifest, parsed, folder / MANIFEST))
    return report


def write_task_manifest(root: Path, report: TaskReport, workers: int | None, progress: bool = True,
                        cache_dir: Path | None = None, size: int = PIXELS_PX) -> dict:
    """Compute and write the manifest of a task that verified clean (reusing a decoded cache)."""
    source = report.manifest.get("source") if report.manifest else None
    manifest = compute_manifest(report.task.name, report.split_lists, source or "laid out by hand", size=size,
                                cache_dir=cache_dir or default_cache_dir(root), workers=workers, progress=progress)
    write_manifest(root / report.task.name, manifest)
    report.manifest = manifest
    return manifest


def fingerprint_line(report: TaskReport) -> str:
    manifest = report.manifest
    if manifest is None:
        return "  fingerprint: none (no manifest.json; `verify --write-manifest` computes it)"
    return (f"  fingerprint: {manifest['fingerprint']} ({manifest['encoding']}, {manifest.get('pixels_px', 224)} px, "
            f"source {manifest.get('source')})")


def format_report(report: TaskReport) -> str:
    task = report.task
    title = f"{task.name} ({task.group}, {task.num_classes} classes)"
    if report.missing:
        return f"{title}: MISSING"
    table = tabulate(report.rows, headers=["split", "images", "expected", "labels", "classes seen",
                                           "unreadable", "status"], tablefmt="github")
    lines = [title, table, fingerprint_line(report)]
    lines += [f"  warning: {w}" for w in report.warnings]
    lines += [f"  problem: {p}" for p in report.problems[:MAX_LISTED]]
    if len(report.problems) > MAX_LISTED:
        lines.append(f"  ... and {len(report.problems) - MAX_LISTED} more problems")
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
    for task in tasks:
        report = verify_task(root, task, quick=args.quick, workers=args.workers)
        if args.write_manifest and report.ok and not report.missing:
            write_task_manifest(root, report, args.workers, size=pixels_px)
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
