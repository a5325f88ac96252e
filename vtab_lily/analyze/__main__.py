"""``python -m vtab_lily.analyze RUNS... [--out leaderboards/analysis]``: look inside trained adapters."""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

from vtab_lily.errors import UserError, run_cli
from vtab_lily.fsutil import check_creatable_dir


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m vtab_lily.analyze", allow_abbrev=False,
                                description="dW spectra, effective ranks and Lily's experts of finished runs")
    p.add_argument("runs", nargs="+", help="run directories or folders holding them (e.g. runs)")
    p.add_argument("--out", default="leaderboards/analysis", help="where the reports and figures go")
    p.add_argument("--fraction", type=float, default=None,
                   help="singular values above this fraction of the largest count in 'rank>frac' (default 0.01)")
    p.add_argument("--debug", action="store_true", help="full tracebacks")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from tqdm import tqdm

    from vtab_lily.analyze.analysis import analyze_run
    from vtab_lily.analyze.load import find_runs
    from vtab_lily.analyze.report import write_reports
    from vtab_lily.analyze.spectra import RANK_FRACTION

    fraction = RANK_FRACTION if args.fraction is None else args.fraction
    if not 0 < fraction < 1:
        raise UserError(f"--fraction must be in (0, 1), got {args.fraction}")
    if not args.out.strip():  # '' would mean the current folder, overwriting any README.md there
        raise UserError("--out: give a folder for the reports (empty string)")
    check_creatable_dir(args.out, "--out")  # before the analysis, one line
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        runs = find_runs(args.runs)
    for w in caught:
        print(f"warning: {w.message}")
    if not runs:
        raise UserError(f"no complete runs under {' '.join(args.runs)}")
    analyses = []
    for run in tqdm(runs, desc="analysing", disable=None):
        with warnings.catch_warnings(record=True) as caught:  # one bad file or run never ends the report
            warnings.simplefilter("always")
            try:
                analysis = analyze_run(run, fraction)
            except (UserError, TypeError, ValueError, KeyError) as err:  # e.g. a config.json edited by hand
                warnings.warn(f"{run.run_dir}: skipped ({err})", stacklevel=1)
                analysis = None
        for w in caught:
            print(f"warning: {w.message}")
        if analysis is not None and analysis.snapshots:
            analyses.append(analysis)
        elif analysis is not None:
            print(f"warning: {run.run_dir}: skipped (no usable trained state)")
    if not analyses:
        raise UserError(f"no run under {' '.join(args.runs)} has a usable trained state")
    pages = write_reports(analyses, Path(args.out))
    print(f"{len(pages)} report(s) from {len(runs)} run(s): {Path(args.out) / 'README.md'}")
    return 0


if __name__ == "__main__":
    run_cli(main)
