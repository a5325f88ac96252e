"""What the sweep knows about ``python -m vtab_lily.run``'s options, read from the runner's parser.

Names are matched exactly (no abbreviations): ``--ou`` is not ``--out`` and ``see`` is not
``seed``. A grid key or fixed option is one of three kinds:

- reserved: set by the sweep itself on every run (``--seed``, ``--out``, ...); never per run;
- machine: where or how a run executes (``--threads``, ``--device``, paths); allowed as fixed
  options, never in the grid, and left out of labels and the sweep id;
- everything else changes the numbers: allowed in the grid and in the label.

A grid key that is not a run option goes to the adapter as ``--adapter-opt KEY=VALUE`` (the
runner's own coercion then validates the value). The runner and the sweep ship together, so the
runner's ``--paper``, ``--batch`` and ``--adapter-opt`` are always there.
"""

from __future__ import annotations

import argparse
import functools
import math
from typing import Any

from .. import options
from ..errors import UserError, suggest

# option -> what to use instead (the sweep's own flag), for the error message
RESERVED = {"backbone": "the sweep's --backbone", "adapter": "the sweep's --adapter", "task": "the sweep's --tasks",
            "protocol": "the sweep's --select", "seed": "the sweep's --seeds", "out": "the sweep's --out",
            "demo": "the sweep's --demo", "method-name": "the sweep labels selected runs itself",
            "force": "delete the run folder to redo a run", "paper": "the sweep's --paper",
            "batch": "the sweep's --backend", "dry-run": "the sweep's --dry-run", "list-tasks": "--dry-run",
            "help": "python -m vtab_lily.run --help", "fetch": "the sweep's --fetch",
            "preflight": "the sweep checks weights and data before any trial"}
# Where or how a run executes, or what the command does (``options`` roles local and action): both
# spellings of a --no-x switch, less what the sweep sets itself.
MACHINE = tuple(dict.fromkeys(n for f in options.declarations() if f.metadata["role"] in ("local", "action")
                              for n in (f.name.replace("_", "-"), options.flag_of(f)[2:]) if n not in RESERVED))
ADAPTER_OPT = "adapter-opt"
_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


@functools.lru_cache(maxsize=1)
def run_actions() -> dict[str, argparse.Action]:
    """Exact long option name (without ``--``) -> its argparse action in vtab_lily.run."""
    from ..run import build_parser

    parser = build_parser()
    return {s[2:]: a for s, a in parser._option_string_actions.items() if s.startswith("--")}


def has_run_option(name: str) -> bool:
    return name in run_actions()


def flag_name(key: str) -> str:
    return key.replace("_", "-")


def is_flag(action: argparse.Action) -> bool:
    """Options that take no value (store_true, --x/--no-x)."""
    return action.nargs == 0


def off_flag(action: argparse.Action | None) -> str | None:
    """``--no-x`` of an option that is a switch or takes a value (``--normalize [NAME]``); else None."""
    return getattr(action, "off_flag", None)


def _switch_word(action: argparse.Action | None, text: str) -> bool:
    """Whether ``text`` is read as on/off: always for a flag, for ``--normalize`` when true/false."""
    return action is not None and (is_flag(action) or (off_flag(action) is not None
                                                       and text.lower() in _TRUE + _FALSE))


def run_option_hint(name: str) -> str:
    """`` (did you mean 'seed'?) (the sweep sets --seed itself: ...)`` for a near-miss of a run option."""
    hint = suggest(name, sorted(run_actions()))
    near = hint.split("'")[1] if "'" in hint else ""
    if near in RESERVED:
        hint += f" (the sweep sets --{near} itself: use {RESERVED[near]})"
    return hint


def _unknown(name: str, where: str) -> UserError:
    return UserError(f"{where}: {name!r} is not an option of python -m vtab_lily.run{run_option_hint(name)} "
                     "(names must match exactly)")


def check_fixed_name(name: str, where: str) -> argparse.Action:
    """A fixed run option (after ``--`` or in ``[run]``): exact, not reserved. Returns its action."""
    if name in RESERVED:
        raise UserError(f"{where}: the sweep sets --{name} itself; use {RESERVED[name]}")
    action = run_actions().get(name)
    if action is None:
        raise _unknown(name, where)
    return action


def check_grid_key(key: str, where: str) -> argparse.Action | None:
    """A grid key: an exact run option that changes numbers, or (None) an adapter option passed
    with ``--adapter-opt`` (checked against the adapter's fields by the caller)."""
    name = flag_name(key)
    if name in RESERVED:
        raise UserError(f"{where}: grid key {key!r} is not a tunable run option: the sweep sets --{name} "
                        f"itself; use {RESERVED[name]}")
    if name in MACHINE or name == ADAPTER_OPT:
        raise UserError(f"{where}: grid key {key!r} is not a tunable run option (it does not change the numbers)")
    return run_actions().get(name)


def normal_value(key: str, action: argparse.Action | None, text: str, where: str) -> Any:
    """The value ``text`` as the run would parse it (so "1" and "1.0" compare equal), checked finite."""
    if _switch_word(action, text):
        low = text.lower()
        if low not in _TRUE + _FALSE:
            raise UserError(f"{where}: {key} = {text!r}: expected true or false")
        return low in _TRUE
    value: Any = text
    convert = getattr(action, "type", None) if action is not None else None
    if callable(convert):
        try:
            value = convert(text)
        except (TypeError, ValueError, argparse.ArgumentTypeError) as err:
            raise UserError(f"{where}: {key} = {text!r} is not a valid value ({err})") from None
    number = value
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            number = None
    if isinstance(number, float) and not math.isfinite(number):
        raise UserError(f"{where}: {key} = {text!r} is not a finite number")
    from ..runconfig import unsigned_zero

    value = unsigned_zero(value)  # the run reads -0.0 as 0 (one run folder, one label)
    if isinstance(value, (list, tuple)):
        value = tuple(value)
    return value


def option_args(key: str, value: str) -> list[str]:
    """Run arguments for one grid value: ``--scale 0.1``, ``--normalize``/``--no-normalize``,
    or ``--adapter-opt key=value`` for adapter options the runner has no flag for."""
    name = flag_name(key)
    action = run_actions().get(name)
    if action is None:
        return ["--" + ADAPTER_OPT, f"{key}={value}"]
    if _switch_word(action, value):
        on = value.lower() in _TRUE
        if isinstance(action, argparse.BooleanOptionalAction):
            return [f"--{name}" if on else f"--no-{name}"]
        if off_flag(action):
            return [f"--{name}" if on else off_flag(action)]
        return [f"--{name}"] if on else []
    return [f"--{name}", value]


def parse_fixed(run_args: list[str], where: str = "run options") -> list[tuple[str, str | None]]:
    """``["--epochs", "5", "--x=1", "--no-tensorboard"]`` -> [("epochs", "5"), ("x", "1"),
    ("no-tensorboard", None)], each name checked exactly against the runner's options."""
    pairs: list[tuple[str, str | None]] = []
    i = 0
    while i < len(run_args):
        arg = run_args[i]
        if not arg.startswith("--") or arg == "--":
            raise UserError(f"{where}: unexpected argument {arg!r} (run options are --name value)")
        name, eq, inline = arg[2:].partition("=")
        action = check_fixed_name(name, f"{where}: {arg!r}")
        if is_flag(action):
            if eq:
                raise UserError(f"{where}: {arg!r}: --{name} takes no value")
            pairs.append((name, None))
        elif eq:
            pairs.append((name, inline))
        elif i + 1 < len(run_args) and not run_args[i + 1].startswith("--"):
            pairs.append((name, run_args[i + 1]))
            i += 1
        elif action.nargs == "?":  # a value-optional option given alone (--normalize)
            pairs.append((name, None))
        else:
            raise UserError(f"{where}: --{name} needs a value")
        i += 1
    return pairs

