"""``python -m vtab_lily.fetch weights NAME... | data vtab-1k`` (``--dry-run``: say what it would do).

Examples::

    python -m vtab_lily.fetch weights vit            # backbones/ViT-B_16.npz (Google's bucket)
    python -m vtab_lily.fetch weights vim-s vim-t    # the Vim checkpoints (Hugging Face Hub)
    python -m vtab_lily.fetch weights dinov2-b clip-b   # timm's model.safetensors from the Hub
    python -m vtab_lily.fetch data vtab-1k           # data/vtab-1k.zip, prepared into data/vtab-1k
    python -m vtab_lily.fetch weights vit data --dry-run
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import run_cli
from ..tasks import split_task_list
from .core import describe, fetch, plan
from .data import fetch_data
from .preflight import DEFAULT_DATA_ROOT
from .sources import WEIGHTS_DIR, data_source, fetchable_backbones, weights_source


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m vtab_lily.fetch", allow_abbrev=False,
                                     description="Download published backbone weights and VTAB-1K, checked (size, "
                                                 "sha256), resumable, into the folders the runner reads.")
    sub = parser.add_subparsers(dest="what", required=True)
    w = sub.add_parser("weights", help="backbone weights into backbones/", allow_abbrev=False)
    w.add_argument("names", nargs="+", metavar="BACKBONE",
                   help=f"backbone names or aliases: {', '.join(fetchable_backbones())} "
                   "(python -m vtab_lily.run --list-backbones lists them with their aliases)")
    w.add_argument("--dir", default=str(WEIGHTS_DIR), help="where they go (default: backbones, the runner's folder)")
    d = sub.add_parser("data", help="the VTAB-1K archive, then prepare it", allow_abbrev=False)
    d.add_argument("name", choices=["vtab-1k"])
    d.add_argument("--root", default=str(DEFAULT_DATA_ROOT),
                   help="data root the tasks go to; the archive lands in its parent folder")
    d.add_argument("--tasks", help="prepare only these tasks (comma-separated; default: all in the archive)")
    for p in (w, d):
        p.add_argument("--dry-run", action="store_true", help="list what would be downloaded, from where, sizes, "
                       "and where it lands; download nothing")
        p.add_argument("--timeout", type=float, default=30, help="seconds without a byte before a retry (plain HTTPS)")
        p.add_argument("--no-progress", action="store_true")
        p.add_argument("--debug", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    if not args.timeout > 0 or args.timeout > 3600:
        from ..errors import UserError

        raise UserError(f"--timeout must be in (0, 3600] seconds, got {args.timeout}")
    if args.what == "weights":
        sources = list({weights_source(name).name: weights_source(name) for name in args.names}.values())
        folder = Path(args.dir)
        if args.dry_run:
            print("\n".join(describe(plan(s, folder)) for s in sources))
            return 0
        for source in sources:
            fetch(source, folder, progress=not args.no_progress, timeout=args.timeout)
        return 0
    root = Path(args.root)
    tasks = split_task_list(args.tasks) if args.tasks is not None else None
    if args.dry_run:
        print(describe(plan(data_source(args.name), root.parent)))
        print(f"  then: python -m vtab_lily.data prepare --from {root.parent / data_source(args.name).file} "
              f"--root {root}" + (f" --tasks {','.join(tasks)}" if tasks else ""))
        return 0
    fetch_data(args.name, root, tasks, progress=not args.no_progress)
    return 0


if __name__ == "__main__":
    run_cli(main)
