"""``python -m vtab_lily.sweep``: a grid of runs over tasks and seeds, with per-task selection.

Examples::

    python -m vtab_lily.sweep --backbone vit --adapter lily --grid scale=0.01,0.1,1,10 \\
        --grid ne=2,3,4 --tasks all --seeds 3 --select val
    python -m vtab_lily.sweep --config vtab_lily/configs/lily-vit-paper.toml --backend ray --address auto
    python -m vtab_lily.sweep --config ... -- --epochs 50 --batch-size 32   # options for every run
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import UserError, run_cli
from .spec import BACKENDS, SELECT_MODES, build_spec, load_toml, parse_grid_flag


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m vtab_lily.sweep", allow_abbrev=False,
        description="Run a grid of vtab_lily.run configurations over tasks and seeds, locally or on Ray, "
                    "and pick the best point per task without looking at test labels (--select val). "
                    "Options after '--' go to every run unchanged.")
    parser.add_argument("--config", help="TOML sweep file (flags override its settings), e.g. "
                                         "vtab_lily/configs/lily-vit-paper.toml")
    parser.add_argument("--backbone", help="backbone of every run (as vtab_lily.run --backbone)")
    parser.add_argument("--adapter", help="adapter of every run (as vtab_lily.run --adapter)")
    parser.add_argument("--grid", action="append", type=_grid_arg, metavar="NAME=V1,V2",
                        help="a run option and its values; repeat for more options (the grid is their product)")
    parser.add_argument("--tasks", help="'all' (default) or a comma-separated list")
    parser.add_argument("--seeds", help="a count (3 = seeds 0,1,2) or a list (0,5); default 1")
    parser.add_argument("--select", choices=SELECT_MODES,
                        help="val (default): choose on val200, then retrain and test; test-best: choose on "
                             "test accuracy (common practice, optimistic); none: whole grid on test")
    parser.add_argument("--select-seeds", type=int, help="how many of the seeds score each grid point (default 1)")
    parser.add_argument("--backend", choices=BACKENDS, default="local",
                        help="local: this machine, one trial per GPU (sequential on CPU); ray: a Ray cluster")
    parser.add_argument("--address", help="Ray cluster to join (auto, ray://host:10001); default: start a local one")
    parser.add_argument("--num-cpus", type=int, help="CPUs of a local Ray instance (default: all)")
    parser.add_argument("--demo", action="store_true", default=None, help="the demo suite (tiny backbone, no downloads)")
    parser.add_argument("--paper", action="store_true", default=None,
                        help="--paper on every run, and export the test-selected number (best test accuracy over "
                             "the evaluations, the paper's rule) beside the final one")
    parser.add_argument("--trials-per-gpu", type=int, default=1, metavar="N",
                        help="trials sharing each GPU (CPU-only machine: trials at once); with several workers each "
                             "trial gets --threads cores//workers unless given after '--'. Ray: num_gpus=1/N")
    parser.add_argument("--one-process-per-trial", action="store_true",
                        help="local backend: start a process per trial even when vtab_lily.run has --batch")
    parser.add_argument("--out", default="runs", help="run folder, shared by all nodes with Ray (default: runs)")
    parser.add_argument("--leaderboards", default="leaderboards",
                        help="where the selection table goes, as <folder>/sweeps/<sweep-id>.md (default: leaderboards)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and the first stage's commands; run nothing")
    parser.add_argument("--fetch", action="store_true", help="download missing backbone weights and VTAB-1K before "
                        "the first trial (without it, a missing piece stops the sweep before any trial)")
    parser.add_argument("--no-progress", action="store_true", help="no live progress line")
    parser.add_argument("--debug", action="store_true", help="tracebacks instead of one-line errors")
    return parser


def _grid_arg(text: str) -> tuple[str, list[str]]:
    try:
        return parse_grid_flag(text)
    except UserError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def split_run_args(argv: list[str]) -> tuple[list[str], list[str]]:
    """Sweep options before ``--``, run options after it."""
    if "--" in argv:
        cut = argv.index("--")
        return argv[:cut], argv[cut + 1:]
    return argv, []


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    own, run_args = split_run_args(argv)
    args = build_parser().parse_args(own)
    config, where = ({}, "command line")
    if args.config:
        config, where = load_toml(args.config), args.config
    flags = {"backbone": args.backbone, "adapter": args.adapter, "tasks": args.tasks, "seeds": args.seeds,
             "select": args.select, "select_seeds": args.select_seeds, "demo": args.demo, "paper": args.paper,
             "grid": args.grid or [], "run_args": run_args}
    spec = build_spec(config, where, flags=flags)
    for note in spec.notes:
        print(f"note: {note}", file=sys.stderr)

    from .api import check_pieces, check_trials, plan_summary, run_sweep
    from .locate import RunLocator

    if args.num_cpus is not None and args.num_cpus < 1:
        raise UserError(f"--num-cpus must be at least 1, got {args.num_cpus}")
    if args.num_cpus is not None and (args.backend != "ray" or args.address):
        raise UserError("--num-cpus is only for a local Ray instance (--backend ray without --address)")
    if not 1 <= args.trials_per_gpu <= 64:
        raise UserError(f"--trials-per-gpu must be between 1 and 64, got {args.trials_per_gpu}")
    if args.dry_run:
        locator = RunLocator()
        check_trials(spec, args.out, locator)  # the runner's own checks of every trial's options
        print(plan_summary(spec, args.out))
        try:  # what a real start would stop at (or fetch, with --fetch)
            check_pieces(spec, str(Path(args.out).resolve()), locator)
        except UserError as err:
            print(f"note: {err}", file=sys.stderr)
        return 0
    outcome = run_sweep(spec, out=args.out, backend=args.backend, address=args.address, num_cpus=args.num_cpus,
                        leaderboards=args.leaderboards, progress=not args.no_progress,
                        trials_per_gpu=args.trials_per_gpu, batch=not args.one_process_per_trial, fetch=args.fetch)
    print(outcome.summary())
    return 0 if outcome.ok else 1


if __name__ == "__main__":
    run_cli(main)
