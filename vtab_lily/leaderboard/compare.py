"""``python -m vtab_lily.leaderboard compare A B``: is method A better than method B, task by task?

A and B each name one method (one leaderboard row) in four ways, tried in this order:
a run folder (``runs/vit-b16-in21k/lora/dtd/1a2b3c4d``: the method that run belongs to), the
method label exactly as the leaderboard prints it (``"lora r=8 alpha=8 qkv"``), an adapter name
(``lora``: when one method of that adapter was run), or a prefix of its method hash (at least 4
hex digits). A name that matches several methods (the same label on two
backbones, a short hash prefix) or none is an error listing the candidates; ``--backbone``
narrows the search. Per task both methods' runs are paired on the same test images through
their ``predictions.npz`` (by seed id where both have the seed); a task where a side has no
predictions (runs made before they were kept) is shown as not paired and left out of the tests.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tabulate import tabulate

from ..errors import UserError, run_cli, suggest, unknown_name
from ..results import METRICS, RESULT_FILE, row_key, run_status, scan_runs
from .counts import run_counts
from .stats import MAX_SEEDS, Comparison, Difference, TaskRuns, compare
from .table import known_results, latest_per_seed, suite_groups
from .text import round_half_up, setup_text

MIN_HASH_PREFIX = 4
MAX_WARNINGS_SHOWN = 20
_HEX = re.compile(r"[0-9a-fA-F]+")


@dataclass
class Method:
    """One leaderboard row's runs: every complete result with the same row key, backbone, suite, protocol."""

    label: str
    method_hash: str
    adapter: str
    backbone: str
    suite: str
    protocol: str
    results: list[dict]
    tag: str = ""  # what else tells it apart from a method of the same label and hash (precision, setup)

    @property
    def name(self) -> str:
        """One line, whatever the label holds (result files are hand-editable)."""
        return " ".join(f"{self.label} [{self.method_hash} {self.backbone}{self.tag}]".split())


def methods_of(results: list[dict]) -> list[Method]:
    groups: dict[tuple, Method] = {}
    for r in results:
        key = (row_key(r), r["backbone"], r["suite"], r["protocol"])
        if key not in groups:
            groups[key] = Method(r["method"], r["method_hash"], r["adapter"], r["backbone"], r["suite"], r["protocol"], [])
        groups[key].results.append(r)
    methods = list(groups.values())
    names: dict[str, int] = {}
    for m in methods:
        names[m.name] = names.get(m.name, 0) + 1
    for key, m in groups.items():
        if names[m.name] > 1:  # older results: the same hash with another precision or setup
            _, deviations, precision = key[0]
            m.tag = f" {precision or 'precision ?'} {setup_text(m.adapter, deviations, sep=',')}"
    return methods


def resolve(spec: str, methods: list[Method], which: str) -> Method:
    """The one method ``spec`` names (module docstring); UserError listing candidates otherwise."""
    if not spec or not spec.strip():
        raise UserError(f"{which}: empty method name; give a label, a method hash prefix or a run folder")
    folder = Path(spec)
    if folder.name == RESULT_FILE and folder.is_file():  # the run's result.json named instead of its folder
        folder = folder.parent
    if folder.is_dir() and (folder / RESULT_FILE).exists():
        status = run_status(folder)
        if status.state != "complete":
            raise UserError(f"{which} {spec}: not a complete run ({status.state}: {status.detail})")
        found = [m for m in methods if any(Path(r["run_dir"]).resolve() == folder.resolve() for r in m.results)]
        if not found:
            raise UserError(f"{which} {spec}: this run is not under --runs (or --backbone leaves it out); "
                            "its method is compared with the runs found there")
        return found[0]
    matches = [m for m in methods if m.label == spec]
    if not matches:  # an adapter name stands for its one method (``compare lily lora`` after the demo)
        matches = [m for m in methods if m.adapter == spec]
    if not matches and folder.is_dir():
        raise UserError(f"{which} {spec}: a folder without {RESULT_FILE}; give one run's folder "
                        "(runs/<backbone>/<adapter>/<task>/<config hash>)")
    if not matches and len(spec) >= MIN_HASH_PREFIX and _HEX.fullmatch(spec):
        matches = [m for m in methods if m.method_hash.lower().startswith(spec.lower())]
    if len(matches) == 1:
        return matches[0]
    listing = "; ".join(sorted(m.name for m in (matches or methods)))
    if matches:
        raise UserError(f"{which} {spec!r} names {len(matches)} methods: {listing}. Give a longer method hash "
                        "prefix (the hex in brackets), --backbone, or a run folder")
    hint = suggest(spec, [m.label for m in methods])
    raise UserError(f"{which}: no method {spec!r}{hint} (a label, an adapter, a method hash prefix of at least "
                    f"{MIN_HASH_PREFIX} hex digits, or a run folder); methods: {listing or 'none'}")


def runs_by_task(results: list[dict], metric: str, warnings: list[str]) -> dict[str, TaskRuns]:
    """One method's runs per task (the latest result per seed), with the correctness matrix when
    every seed kept predictions of one and the same test list; counts from the accuracy otherwise."""
    if metric not in METRICS:
        raise unknown_name("--metric", metric, METRICS)
    out = {}
    for task, by_seed in latest_per_seed(results, warnings).items():
        seeds, correct, sizes, vectors, lists, reasons = [], [], [], [], set(), set()
        for seed in sorted(by_seed)[:MAX_SEEDS]:
            r = by_seed[seed]
            counts = run_counts(r, metric, warnings)
            if counts is None or counts.n < 1:
                warnings.append(f"{r['run_dir']}: no {metric!r} accuracy or no test images recorded "
                                f"for task {task!r}; not counted")
                continue
            count, n, vector, list_hash = counts.correct, counts.n, counts.hits, counts.list_sha256
            if vector is None:
                reasons.add(counts.why)
            seeds.append(seed)
            correct.append(count)
            sizes.append(n)
            vectors.append(vector)
            lists.add(list_hash)
        if len(by_seed) > MAX_SEEDS:
            warnings.append(f"{task}: {len(by_seed)} seeds; only the first {MAX_SEEDS} are used")
        if not seeds:
            continue
        matrix, list_hash, reason = None, None, "; ".join(sorted(reasons))
        if not reasons and len(lists) == 1 and len({len(v) for v in vectors}) == 1:
            matrix, list_hash = np.stack(vectors), lists.pop()
        elif not reasons:
            reason = "its seeds were scored on different test lists"
        out[task] = TaskRuns(tuple(seeds), tuple(correct), tuple(sizes), matrix, list_hash, reason or "no predictions")
    return out


def run_comparison(runs_dir: str | os.PathLike, spec_a: str, spec_b: str, metric: str = "final",
                   backbone: str | None = None, level: float = 0.95, seed: int = 0,
                   warnings: list[str] | None = None) -> tuple[Comparison, Method, Method]:
    """Resolve A and B under ``runs_dir`` and compare them (stats.compare)."""
    warnings = warnings if warnings is not None else []
    statuses = scan_runs(runs_dir)
    # A malformed result (a hand edit, a NaN accuracy) is skipped, never silently.
    warnings += [f"skipped: {s.detail}" for s in statuses if s.state == "malformed"]
    results = [s.result for s in statuses if s.state == "complete"]
    results = known_results([r for r in results if backbone is None or r["backbone"] == backbone], warnings)
    methods = methods_of(results)
    if not methods:
        where = f"{runs_dir}" + (f" for --backbone {backbone}" if backbone else "")
        raise UserError(f"no complete results under {where}; nothing to compare")
    a, b = resolve(spec_a, methods, "A"), resolve(spec_b, methods, "B")
    if (a.suite, a.protocol) != (b.suite, b.protocol):
        raise UserError(f"A is suite {a.suite} protocol {a.protocol}, B suite {b.suite} protocol {b.protocol}: "
                        "not the same test images, nothing to pair")
    groups = {t: g for g, members in (suite_groups(a.suite) or {}).items() for t in members}
    order = list(groups)
    a_runs, b_runs = (runs_by_task(m.results, metric, warnings) for m in (a, b))
    a_runs = {t: a_runs[t] for t in order if t in a_runs}
    b_runs = {t: b_runs[t] for t in order if t in b_runs}
    comparison = compare(a_runs, b_runs, groups, level, seed, a.name, b.name)
    return comparison, a, b


def _pm(x: float) -> str:
    text = round_half_up(x, 1)
    return text if text.startswith("-") else "+" + text


def _p(p: float) -> str:
    if math.isnan(p):
        return "-"
    return f"{p:.1e}" if p < 1e-4 else f"{p:.4f}"


def _interval(lo: float, hi: float) -> str:
    return f"[{_pm(lo)}, {_pm(hi)}]"


def _avg_line(name: str, d: Difference | None, total: int) -> str:
    if d is None:
        return f"- {name}: -"
    partial = "" if d.n_tasks == total else f", partial: {d.n_tasks} of {total} tasks"
    unpaired = f"; {d.unpaired} task(s) unpaired, entered as independent (wider)" if d.unpaired else ""
    return (f"- {name}{partial}: A {round_half_up(d.a.mean)} [{round_half_up(d.a.lo)}, {round_half_up(d.a.hi)}], "
            f"B {round_half_up(d.b.mean)} [{round_half_up(d.b.lo)}, {round_half_up(d.b.hi)}]; "
            f"A - B {_pm(d.diff)} {_interval(d.lo, d.hi)}{unpaired}")


def format_comparison(c: Comparison, metric: str, total_tasks: int) -> str:
    level = f"{100 * c.level:g}%"
    headers = ["task", "A", "B", f"A - B ({level} CI)", "seeds", "images", "p", "p (Holm)", "verdict", "test, note"]
    body = []
    for r in c.tasks:
        if r.paired is None:
            body.append([r.task, round_half_up(r.a.mean), round_half_up(r.b.mean), _pm(r.a.mean - r.b.mean),
                         f"{r.a.n_seeds}/{r.b.n_seeds}", "-", "-", "-", "not paired", r.note])
        else:
            note = r.paired.test + (f"; {r.note}" if r.note else "")
            body.append([r.task, round_half_up(r.a.mean), round_half_up(r.b.mean),
                         f"{_pm(r.paired.diff)} {_interval(r.paired.lo, r.paired.hi)}", str(r.paired.n_seeds),
                         str(r.paired.n_examples), _p(r.paired.p), _p(r.p_holm), r.verdict, note])
    counts = {v: sum(r.verdict == v for r in c.tasks) for v in ("better", "worse", "indistinguishable", "not paired")}
    lines = [f"A: {c.a_name}", f"B: {c.b_name}" + (" (A itself: every difference is 0)" if c.a_name == c.b_name else ""),
             f"metric: {'final-epoch' if metric == 'final' else 'test-selected (best evaluation)'} accuracy (%); "
             f"per task A - B in points on the same test images; verdict from the Holm-adjusted p at {1 - c.level:g}",
             "tests: one seed, exact McNemar (interval: paired bootstrap over the images); several seeds paired by "
             "seed id, t over images and seeds (variance components); see docs/statistics.md",
             "", tabulate(body, headers=headers, tablefmt="github", disable_numparse=True), "",
             f"A is better on {counts['better']}, worse on {counts['worse']}, indistinguishable on "
             f"{counts['indistinguishable']} task(s); not paired: {counts['not paired']}.",
             "Averages (task set fixed; intervals over test images and seeds, not over hyperparameter searches):",
             _avg_line("Avg (group means)", c.avg_groups, total_tasks), _avg_line("Avg (all tasks)", c.avg_tasks, total_tasks)]
    if c.only_a or c.only_b:
        lines.append(f"left out (one side only): A only {', '.join(c.only_a) or '-'}; B only {', '.join(c.only_b) or '-'}")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m vtab_lily.leaderboard compare", allow_abbrev=False,
                                     description="Paired per-task comparison of method A against baseline B "
                                                 "(see docs/statistics.md).")
    parser.add_argument("a", metavar="A", help="method: a label as the leaderboard prints it, an adapter name (when "
                                               f"one method of it was run), a method hash prefix (>= {MIN_HASH_PREFIX} "
                                               "hex digits) or a run folder")
    parser.add_argument("b", metavar="B", help="the baseline, named the same ways")
    parser.add_argument("--runs", default="runs", help="runs directory to read (default: runs)")
    parser.add_argument("--backbone", default=None, help="only this backbone's results")
    parser.add_argument("--metric", default="final", help="final (default): last-epoch accuracy; best: the "
                        "test-selected evaluation (paired on its predictions)")
    parser.add_argument("--level", default=0.95, type=_level, help="confidence level of the intervals (default 0.95); "
                        "the verdicts test at 1 - level")
    parser.add_argument("--seed", default=0, type=_seed, help="seed of the bootstrap resampling (default 0)")
    parser.add_argument("--out", default=None, help="write the forest plot to this PNG file")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for user errors")
    return parser.parse_args(argv)


def _level(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.5 <= value < 1:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be in [0.5, 1), e.g. 0.95; got {text}")
    return value


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"must be in [0, 2**32), got {text}")
    return value


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.metric not in METRICS:
        raise unknown_name("--metric", args.metric, METRICS)
    out = Path(args.out) if args.out else None
    if out is not None and (out.suffix.lower() != ".png" or out.is_dir()):
        raise UserError(f"--out {args.out}: give a .png file path for the forest plot")
    warnings: list[str] = []
    comparison, a, _ = run_comparison(args.runs, args.a, args.b, args.metric, args.backbone, args.level, args.seed, warnings)
    for line in warnings[:MAX_WARNINGS_SHOWN]:
        print(f"warning: {line}", file=sys.stderr)
    if len(warnings) > MAX_WARNINGS_SHOWN:
        print(f"warning: ... and {len(warnings) - MAX_WARNINGS_SHOWN} more", file=sys.stderr)
    total = sum(len(m) for m in (suite_groups(a.suite) or {}).values())
    print(format_comparison(comparison, args.metric, total), end="")
    if out is not None:
        from .forest import forest_plot

        forest_plot(comparison, out)
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    run_cli(main)
