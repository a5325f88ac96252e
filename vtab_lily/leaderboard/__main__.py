"""CLI: ``python -m vtab_lily.leaderboard --runs runs --out leaderboards [--metric best|both]``.

Without ``--format`` it writes the leaderboard files; ``--format md|csv|json`` prints the
tables instead, and ``--task NAME`` prints every run of one task. ``python -m
vtab_lily.leaderboard compare A B`` compares two methods task by task (leaderboard/compare.py).
"""

from __future__ import annotations

import argparse
import sys

from tabulate import tabulate

from ..errors import run_cli, unknown_name
from ..fsutil import check_creatable_dir
from ..results import scan_runs
from ..tasks import ALIASES
from . import collect, write_leaderboards
from .datamarks import parse_fingerprints
from .records import tables_csv, tables_json
from .render import table_markdown
from .table import TABLE_METRICS
from .taskview import task_view
from .text import csv_cell, md_escape

FORMATS = ("md", "csv", "json")
MAX_WARNINGS_SHOWN = 20


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m vtab_lily.leaderboard", description=__doc__.splitlines()[0], allow_abbrev=False,
                                     epilog="python -m vtab_lily.leaderboard compare A B [--runs ...]: paired per-task "
                                            "comparison of two methods (compare --help)")
    parser.add_argument("--runs", default="runs", help="runs directory to read (default: runs)")
    parser.add_argument("--out", default="leaderboards", help="folder for the files (default: leaderboards)")
    parser.add_argument("--metric", default="final", help="final (default): last-epoch accuracy; best: best evaluation, selected on the "
                        "evaluation split (test-selected, the papers' number); both: final with test-selected beside it")
    parser.add_argument("--data-fingerprint", action="append", default=None, metavar="FP",
                        help="only cells built on data with this fingerprint (hex prefix, comma-separated, repeatable) "
                             "or on the data of this prepared data folder (its <task>/manifest.json)")
    parser.add_argument("--format", default=None, help="md, csv or json: print to stdout instead of writing files")
    parser.add_argument("--task", default=None, help="list every run of this task (config, seed, accuracies, params, time, run dir)")
    parser.add_argument("--backbone", default=None, help="only this backbone's results")
    parser.add_argument("--no-reference", action="store_true", help="leave out the published reference rows")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG figures")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for user errors")
    return parser.parse_args(argv)


def _print_warnings(warnings: list[str]) -> None:
    for line in warnings[:MAX_WARNINGS_SHOWN]:
        print(f"warning: {line}", file=sys.stderr)
    if len(warnings) > MAX_WARNINGS_SHOWN:
        print(f"warning: ... and {len(warnings) - MAX_WARNINGS_SHOWN} more (listed in index.md)", file=sys.stderr)


def _show_task(args: argparse.Namespace, fmt: str) -> int:
    statuses = scan_runs(args.runs)
    task = ALIASES.get(args.task, args.task)

    def task_of(status) -> str:
        if status.result:
            return status.result["task"]
        task = (status.config or {}).get("task")
        return task if isinstance(task, str) and task else status.run_dir.parent.name

    known = {task_of(s) for s in statuses}
    if task not in known:
        raise unknown_name("task (no runs of it under " + str(args.runs) + ")", args.task, known)
    chosen = [s for s in statuses if task_of(s) == task]
    results = [s.result for s in chosen if s.result and (args.backbone is None or s.result["backbone"] == args.backbone)]
    others = [s for s in chosen if not s.result and args.backbone in (None, (s.config or {}).get("backbone"))]
    headers, body = task_view(results, task, others)
    if fmt == "md":
        print(f"## Every run of {md_escape(task)} under {md_escape(args.runs)}\n")
        print(tabulate([[md_escape(c) for c in line] for line in body], headers=headers, tablefmt="github", disable_numparse=True))
    elif fmt == "csv":
        import csv

        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(headers)
        writer.writerows([csv_cell(c) for c in line] for line in body)
    else:
        import json

        print(json.dumps([dict(zip(headers, line)) for line in body], indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "compare":
        from . import compare

        return compare.main(argv[1:])
    args = parse_args(argv)
    if args.metric not in TABLE_METRICS:
        raise unknown_name("--metric", args.metric, TABLE_METRICS)
    fingerprints = parse_fingerprints(args.data_fingerprint)
    if args.format is not None and args.format not in FORMATS:
        raise unknown_name("--format", args.format, FORMATS)
    if args.task is not None:
        return _show_task(args, args.format or "md")
    report = collect(args.runs, args.metric, args.backbone, with_reference=not args.no_reference, data_fingerprints=fingerprints)
    if not report.results:
        _print_warnings(report.warnings)
        counts = ", ".join(f"{n} {state}" for state, n in sorted(report.counts.items())) or "no run directories at all"
        print(f"no complete results under {args.runs} ({counts}); nothing to tabulate", file=sys.stderr)
        return 0
    if args.format is None:
        check_creatable_dir(args.out, "--out")  # one line, not a traceback, for a file in the way
        files = write_leaderboards(report, args.out, plots=not args.no_plots)
        _print_warnings(report.warnings)  # after writing: plotting can add some
        print(f"wrote {len(files)} files for {len(report.tables)} table(s) from {len(report.results)} results to {args.out}/")
        return 0
    _print_warnings(report.warnings)
    if args.format == "md":
        print("\n".join(table_markdown(t) for t in report.tables))
    elif args.format == "csv":
        print(tables_csv(report.tables), end="")
    else:
        print(tables_json(report.tables), end="")
    return 0


if __name__ == "__main__":
    run_cli(main)
