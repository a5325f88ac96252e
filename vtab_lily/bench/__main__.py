"""``python -m vtab_lily.bench [--quick] [--device cpu|cuda] [--only 1,2,...] [--out leaderboards]``.

Writes ``bench-cpu.md`` or, on CUDA, ``bench-cuda-suite.md`` (``bench-cuda.md`` is the device
check's report: ``python -m vtab_lily.bench.device_check``)."""

from __future__ import annotations

import argparse

from ..errors import UserError, run_cli
from ..fsutil import check_creatable_dir
from .suite import ITEMS, run_suite


def parse_only(text: str | None) -> list[int] | None:
    """``"1,3"`` -> [1, 3]; UserError naming the bad entry."""
    if text is None:
        return None
    numbers = []
    for part in text.split(","):
        part = part.strip()
        if not part.isdigit() or int(part) not in ITEMS:
            raise UserError(f"--only: {part!r} is not an item number; choose from {', '.join(map(str, ITEMS))}")
        if int(part) not in numbers:
            numbers.append(int(part))
    return sorted(numbers)


def main(argv: list[str] | None = None) -> int:
    items = "; ".join(f"{n}: {title}" for n, (title, _) in ITEMS.items())
    parser = argparse.ArgumentParser(prog="python -m vtab_lily.bench", allow_abbrev=False,
                                     description=f"vtab-lily performance suite (items {items}); writes "
                                     "<out>/bench-cpu.md or, on CUDA, bench-cuda-suite.md.")
    sizes = parser.add_mutually_exclusive_group()
    sizes.add_argument("--quick", action="store_true", help="reduced repetitions and sizes (measured: 493 s, about 8 minutes, on 2 busy CPU "
                       "cores; its ratio targets may read WITHIN NOISE)")
    sizes.add_argument("--toy", action="store_true", help="tiny test backbones and shapes, one repetition (smoke test)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--only", help="comma-separated item numbers, e.g. 1,4")
    parser.add_argument("--out", default="leaderboards", help="folder for the report (default: leaderboards)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--debug", action="store_true", help="tracebacks for user errors")
    args = parser.parse_args(argv)
    only = parse_only(args.only)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available (use --device cpu)")
    if args.threads is not None:
        if args.threads < 1:
            raise UserError(f"--threads must be >= 1, got {args.threads}")
    check_creatable_dir(args.out, "--out")  # before minutes of timing, not after
    preset = "quick" if args.quick else "toy" if args.toy else "full"
    path, sections = run_suite(args.device, preset, only, args.out, threads=args.threads)
    print(f"wrote {path}")
    for section in sections:
        for verdict in section.verdicts:
            print(f"  {section.number}. {verdict.target}: {verdict.measured} -> {verdict.status}")
        if section.error:
            print(f"  {section.number}. ERROR: {section.error}")
    return 0


if __name__ == "__main__":
    run_cli(main)
