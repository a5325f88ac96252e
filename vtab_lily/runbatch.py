"""``python -m vtab_lily.run --batch FILE``: many runs in one process (run_all.sh, the sweep).

FILE holds one JSON list of arguments per line (the arguments of ``python -m vtab_lily.run``);
blank lines and lines starting with ``#`` are skipped. The runs go in order in this process,
so imports, the CUDA context and the backbone weights (cached by ``build.build_model``) are paid
once; a finished run is skipped before any model is built. A bad line or a failing run is
reported and the rest continue. One status line per run, then a summary.

Exit code: 0 when every run finished or was skipped, else the largest code seen (1 failed,
2 bad input, 75 locked by another process); 130 at once on Ctrl-C.
"""

from __future__ import annotations

import contextlib
import gc
import io
import json
import os
import sys
import traceback
from pathlib import Path
from typing import Callable

from .errors import UserError
from .fetch import ensure_ready
from .runconfig import check_args
from .runspec import finished as run_is_finished

# one run from its arguments -> (exit code, one-line status); ``run.execute``, handed in by
# ``run.main`` so that this module never imports the runner back
Execute = Callable[[list[str]], tuple[int, str]]
HELP_FLAGS = ("-h", "--help")

REPORT_ENV = "VTAB_LILY_BATCH_REPORT"  # optional: a file getting "code<TAB>label<TAB>status" per run


def read_batch(path: Path) -> list[tuple[int, list[str] | None, str]]:
    """[(line number, argv or None, error)] for the non-blank lines of ``path``."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"--batch {path}: cannot read it ({err})") from None
    lines = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            argv = json.loads(line)
        except (ValueError, RecursionError) as err:  # RecursionError: [[[[... nested past the parser's depth
            lines.append((number, None, f"not JSON ({err})"))
            continue
        if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
            lines.append((number, None, "not a JSON list of strings"))
        elif "--batch" in argv:
            lines.append((number, None, "--batch inside a batch file"))
        elif any(a in HELP_FLAGS for a in argv):  # the help is not a run (and would end the process)
            lines.append((number, None, f"{next(a for a in argv if a in HELP_FLAGS)} asks for the help, not a run "
                                        "(python -m vtab_lily.run --help prints it)"))
        else:
            lines.append((number, argv, ""))
    return lines


def _label(argv: list[str]) -> str:
    def value(flag: str, default: str) -> str:
        return argv[argv.index(flag) + 1] if flag in argv[:-1] else default

    return f"{value('--backbone', 'vit')} {value('--adapter', 'lily')} {value('--task', '?')}"


def run_batch(path: Path, execute: Execute, *, fetch: bool = False, preflight_only: bool = False) -> int:
    """Run every line of ``path`` with ``execute`` (the runner's, passed in so this module never
    imports it). The pre-flight skips complete runs (``runspec.finished``): they need neither
    weights nor data."""
    lines = read_batch(path)
    bad = preflight(path, lines, fetch)  # every missing checkpoint and data piece, once, before any run
    if preflight_only:
        if bad:  # a line that cannot run is not "ready" either
            raise UserError(f"--batch {path}: {len(bad)} bad line{'s' if len(bad) > 1 else ''}:\n  " + "\n  ".join(bad))
        print("ready: weights and data are there")
        return 0
    codes: list[tuple[int, str, str]] = []
    for i, (number, argv, problem) in enumerate(lines, 1):
        where = f"{path}:{number}"
        label = _label(argv) if argv else where
        print(f"=== [{i}/{len(lines)}] {label}", flush=True)
        if argv is None:
            code, status = 2, f"bad line: {problem}"
        else:
            try:
                code, status = execute(argv)
            except UserError as err:
                code, status = 2, f"error: {err}"
            except SystemExit as err:  # argparse's own exit (a bad option): this line failed, the batch goes on
                code = err.code if isinstance(err.code, int) and err.code > 0 else 2
                status = f"bad arguments (the parser exited with {err.code})"
            except KeyboardInterrupt:
                print(f"interrupted during {label} ({where}); rerun the same command to resume", file=sys.stderr)
                _report(label, 130, "interrupted")
                return 130
            except Exception as err:  # noqa: BLE001 - one run's bug must not stop the others
                traceback.print_exc()
                code, status = 1, f"crashed: {err.__class__.__name__}: {err}"
            finally:
                _release_memory()
        if code not in (0, 75):
            print(f"{where}: {status}", file=sys.stderr)
        print(f"--- [{i}/{len(lines)}] {label}: {status}", flush=True)
        codes.append((code, label, status))
        _report(label, code, status)
    ok = sum(c == 0 for c, _, _ in codes)
    locked = [label for c, label, _ in codes if c == 75]
    bad = [f"{label} (exit {c})" for c, label, _ in codes if c not in (0, 75)]
    print(f"=== batch: {ok} done or skipped, {len(locked)} running elsewhere, {len(bad)} failed")
    if locked:
        print(f"running elsewhere (locked by another process): {', '.join(locked)}")
    if bad:
        print(f"FAILED: {', '.join(bad)}", file=sys.stderr)
    return max((c for c, _, _ in codes), default=0)


def preflight(path: Path, lines: list[tuple[int, list[str] | None, str]], fetch: bool) -> list[str]:
    """UserError naming every missing weights file and data task of the batch's valid lines;
    ``fetch`` fetches them first. Returns the bad lines as ``FILE:LINE: what`` (a run reports its
    own when its turn comes)."""
    configs, forced, bad = [], set(), []
    for number, argv, problem in lines:
        if argv is None:
            bad.append(f"{path}:{number}: {problem}")
            continue
        if {"--dry-run", "--check", "--list-tasks"} & set(argv):  # these read no weights or data
            continue
        try:
            with contextlib.redirect_stderr(io.StringIO()):  # its warnings come again when the run starts
                config = check_args(argv)
        except UserError as err:
            bad.append(f"{path}:{number}: {err}")
            continue
        if "--force" in argv:
            forced.add(id(config))
        configs.append(config)
    try:
        ensure_ready(configs, fetch=fetch, skip=lambda c: id(c) not in forced and run_is_finished(c))
    except UserError as err:
        raise UserError(f"--batch {path}: {err}") from None
    return bad


def _report(label: str, code: int, status: str) -> None:
    target = os.environ.get(REPORT_ENV)
    if target:
        with open(target, "a", encoding="utf-8") as f:
            f.write(f"{code}\t{label}\t{status.replace(chr(9), ' ').replace(chr(10), ' ')}\n")


def _release_memory() -> None:
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass
