"""Checks that many adapter configs share: one message format for one kind of mistake."""

from __future__ import annotations

import math
from typing import Any

from vtab_lily.errors import UserError
from vtab_lily.options import SIZE

# ranks, lengths, expert counts: far beyond any real use (a typo, an extra digit, an int64 overflow);
# the CLI's --rank and --adapter-opt and a PEFT config file's sizes share it (declared in options)
ADAPTER_INT_LIMIT = SIZE


def check_sizes(method: str, **sizes: Any) -> None:
    """Each value must be an integer >= 1 (``rank=8, groups=2``)."""
    for key, value in sizes.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise UserError(f"{method}: {key} must be an integer >= 1, got {value!r}")


def check_scale_dropout(method: str, scale: Any = 0.0, dropout: Any = 0.0) -> None:
    """``scale`` finite and >= 0, ``dropout`` in [0, 1); NaN fails both."""
    if not isinstance(scale, (int, float)) or not 0 <= scale < math.inf:
        raise UserError(f"{method}: scale must be a finite number >= 0, got {scale}")
    if not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise UserError(f"{method}: dropout must be in [0, 1), got {dropout}")
