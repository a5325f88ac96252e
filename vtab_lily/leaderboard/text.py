"""Small text rules shared by every leaderboard output: rounding, markdown escaping, safe paths.

Rounding: every number shown in a table is rounded half-up on its *decimal* value
(``Decimal(str(x))``), so 71.25 -> 71.3, 70.15 -> 70.2 and 69.45 -> 69.5, whatever the binary
float underneath. CSV and JSON keep the unrounded numbers.
"""

from __future__ import annotations

import re
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from pathlib import Path

from ..errors import UserError
from ..methods import NO_OFFICIAL_SETUP

_SAFE = re.compile(r"[^A-Za-z0-9._+=-]+")


def round_half_up(value: float, digits: int = 1) -> str:
    """``value`` with ``digits`` decimals, half-up on the shortest decimal repr of the float."""
    try:
        exact = Decimal(str(value))
        text = str(exact.quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP))
    except (InvalidOperation, ValueError):  # nan/inf never reach here after validation; be safe
        return str(value)
    return "0" + text[2:] if text.startswith("-0") and not any(c in "123456789" for c in text) else text


def setup_text(adapter: str, deviations: tuple[str, ...] | list[str] | None, sep: str = ", ") -> str:
    """The Setup of a row or run: ``official`` (no deviations), the deviations, or ``?`` (not
    recorded). An adapter with no official setup (``peft``) is never ``official``: ``peft config``,
    then the recipe's deviations."""
    if deviations is None:
        return "?"
    if adapter in NO_OFFICIAL_SETUP:
        return sep.join([f"{adapter} config", *deviations])
    return sep.join(deviations) or "official"


def md_escape(text: object) -> str:
    """One markdown table cell: ``|`` escaped, newlines collapsed to spaces, backticks and
    angle brackets neutralised, so a label can never add columns, rows, code spans or HTML."""
    value = " ".join(str(text).split())  # every run of whitespace (\n, \r, \t) -> one space
    value = value.replace("\\", "\\\\").replace("|", "\\|").replace("`", "\\`")
    return value.replace("<", "&lt;").replace(">", "&gt;")


# A spreadsheet treats a cell starting with one of these as a formula (=HYPERLINK(...), +cmd|...);
# OWASP's CSV-injection advice: make such a cell text by putting a single quote in front.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: object) -> object:
    """A CSV cell that no spreadsheet runs as a formula: a string starting with ``= + - @``, tab or
    CR gets a leading ``'``; numbers, and strings that are just a number (``-0.5``) or the
    missing mark ``-``, are kept as they are. A carriage return becomes a newline: the csv module
    quotes a cell holding the line terminator (``\\n`` here) but not a lone CR, which a reader
    takes for the end of the row."""
    if not isinstance(value, str):
        return value
    if value.startswith(_FORMULA_START) and value != "-":
        try:
            float(value)  # a plain number, e.g. -0.5: not a formula
        except ValueError:
            value = "'" + value
    return value.replace("\r\n", "\n").replace("\r", "\n")


def one_line(text: object) -> str:
    """A markdown note or list item on one line: a newline in it could start a fake table row."""
    return " ".join(str(text).splitlines())


def safe_component(text: object, fallback: str = "_") -> str:
    """A path component made from file contents: only ``[A-Za-z0-9._+=-]``, never ``.`` or
    ``..`` or hidden, at most 100 characters."""
    value = re.sub(r"\.{2,}", "_", _SAFE.sub("_", str(text))).strip(".")[:100]
    return value or fallback


def inside(out: Path, *components: object, suffix: str = "") -> Path:
    """``out/<safe components><suffix>``, checked to resolve inside ``out``."""
    parts = [safe_component(c) for c in components]
    parts[-1] += suffix
    path = out.joinpath(*parts)
    root = out.resolve()
    resolved = path.resolve()
    if resolved != root and root not in resolved.parents:
        raise UserError(f"refusing to write {path}: outside --out {out}")
    return path
