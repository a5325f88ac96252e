"""One exception type for problems the user can fix (bad data, arguments, checkpoints).

Command-line entry points catch :class:`UserError`, print its message as one line and exit
non-zero without a traceback (unless ``--debug``); everything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import difflib
import sys
from typing import Callable, Iterable


class UserError(Exception):
    """A problem with the user's input; the message says what and where (file:line, argument)."""

    exit_code = 2


def suggest(name: str, choices: Iterable[str]) -> str:
    """" (did you mean 'x'?)" for the closest choice, or "" when nothing is close."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def unknown_name(kind: str, name: str, choices: Iterable[str]) -> UserError:
    choices = sorted(set(choices))  # a name can be listed twice (an alias equal to a registry name)
    return UserError(f"unknown {kind} {name!r}{suggest(name, choices)}; choose from: {', '.join(choices)}")


def run_cli(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> None:
    """Run ``main(argv)``; turn UserError into one line on stderr and a non-zero exit."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    try:
        code = main(args)
    except UserError as err:
        if debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
