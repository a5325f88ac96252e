"""TFDS's split strings, mapped onto shards the way ``tfds.load`` maps them.

Rules (checked against tensorflow_datasets 4.9 by tests/data/tfds/slicing_fixtures.json):

- ``name``, ``name[a:b]`` (absolute, negative counts from the end), ``name[a%:b%]``
  (percent; a boundary ``p`` becomes ``int(round(p * n / 100))``, Python's round, so ties go to
  the even integer), ``name[a shard:b shard]``, and sums ``x+y``.
- ``|boundary| > n`` is an error; ``from >= to`` selects nothing.
- The absolute range is cut over the shards in order (empty shards skipped) into
  (shard, skip, take) file instructions.
- Reading order with ``shuffle_files=False`` and the default ``ReadConfig``: tf.data's
  deterministic ``interleave(cycle_length=16, block_length=16)`` over those file
  instructions, so a range spanning several shards is NOT read shard after shard.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence, TypeVar

from ...errors import UserError

CYCLE_LENGTH = 16  # tfds ReadConfig defaults (interleave_cycle_length, interleave_block_length)
BLOCK_LENGTH = 16

_SPEC = re.compile(r"^(?P<name>\w+)(\[(?P<sel>[-\w%.:]*)\])?$")
_BOUND = re.compile(r"^(?P<val>-?[\d_.]+)?(?P<unit>%|shard)?$")


@dataclass(frozen=True)
class Slice:
    split: str
    start: float | int | None = None
    stop: float | int | None = None
    unit: str = "abs"  # "abs" | "%" | "shard"


@dataclass(frozen=True)
class FileInstruction:
    shard: int  # index into the split's shards
    skip: int
    take: int


def parse_split(spec: str) -> list[Slice]:
    """``"train[:800]+validation[:200]"`` -> its slices (TFDS syntax)."""
    out = []
    for part in re.split(r"\s*\+\s*", spec.strip()):
        m = _SPEC.match(part)
        if not m:
            raise UserError(f"bad split {spec!r}: cannot read {part!r}")
        sel = m.group("sel")
        if sel is None:
            out.append(Slice(m.group("name")))
            continue
        bounds = sel.split(":")
        if len(bounds) != 2 or not any(bounds):
            raise UserError(f"bad split {spec!r}: use name[start:stop]")
        parsed = [_BOUND.match(b) for b in bounds]
        if not all(parsed):
            raise UserError(f"bad split {spec!r}: bounds must be integers, N% or Nshard")
        # As TFDS: the unit of the first bound that has one applies to both (train[1%:5]).
        unit = parsed[0].group("unit") or parsed[1].group("unit") or "abs"
        values = []
        for p in parsed:
            val = p.group("val")
            try:
                values.append(None if val is None else float(val) if unit == "%" else int(val))
            except ValueError:
                raise UserError(f"bad split {spec!r}: {val!r} is not a number") from None
        out.append(Slice(m.group("name"), values[0], values[1], unit))
    return out


def _pct(boundary: float, n: int) -> int:
    return int(round(boundary * n / 100.0))


def absolute_range(sl: Slice, shard_lengths: Sequence[int]) -> tuple[int, int]:
    """``(start, stop)`` example indices of one slice; stop may be <= start (empty)."""
    n = sum(shard_lengths)
    start, stop = sl.start, sl.stop
    if sl.unit == "%":
        start = 0 if start is None else _pct(start, n)
        stop = n if stop is None else _pct(stop, n)
    elif sl.unit == "shard":
        start = 0 if start is None else sum(shard_lengths[:start])
        if stop is not None and stop <= 0:
            stop = len(shard_lengths) + stop
        stop = n if stop is None else sum(shard_lengths[:stop])
    else:
        start = 0 if start is None else start
        stop = n if stop is None else stop
    if abs(start) > n or abs(stop) > n:
        raise UserError(f"split slice {_show(sl)} is out of range: the split has {n} examples")
    start = start + n if start < 0 else start
    stop = stop + n if stop < 0 else stop
    return start, stop


def _show(sl: Slice) -> str:
    if sl.start is None and sl.stop is None:
        return sl.split
    unit = "" if sl.unit == "abs" else sl.unit
    fmt = lambda v: "" if v is None else f"{v:g}{unit}" if unit == "%" else f"{v}{unit}"
    return f"{sl.split}[{fmt(sl.start)}:{fmt(sl.stop)}]"


def file_instructions(start: int, stop: int, shard_lengths: Sequence[int]) -> list[FileInstruction]:
    """Which records of which shards make up examples ``start..stop-1`` of a split."""
    out = []
    first = 0
    for shard, length in enumerate(shard_lengths):
        if not length:
            continue
        last = first + length
        if start < last and stop > first:
            skip = max(start - first, 0)
            take = min(stop, last) - first - skip
            if take > 0:
                out.append(FileInstruction(shard, skip, take))
        first = last
    return out


T = TypeVar("T")


def interleave(sources: Sequence[T], open_source: Callable[[T], Iterator],
               cycle_length: int = CYCLE_LENGTH, block_length: int = BLOCK_LENGTH) -> Iterator:
    """tf.data's deterministic ``interleave``: the order ``tfds.load`` returns records in.

    Up to ``cycle_length`` sources are open at once; each gives ``block_length`` items in
    turn. An exhausted source frees its slot and the cursor moves on; the slot takes the next
    unopened source when the cursor next reaches it.
    """
    pending = iter(sources)
    slots: list[Iterator | None] = [None] * cycle_length
    index = block = 0
    open_count = 0
    inputs_left = True
    while inputs_left or open_count:
        current = slots[index]
        if current is not None:
            try:
                item = next(current)
            except StopIteration:
                slots[index] = None
                open_count -= 1
                index, block = (index + 1) % cycle_length, 0
                continue
            yield item
            block += 1
            if block == block_length:
                index, block = (index + 1) % cycle_length, 0
        elif inputs_left:
            source = next(pending, _END)
            if source is _END:
                inputs_left = False
            else:
                slots[index] = iter(open_source(source))
                open_count += 1
        else:
            index, block = (index + 1) % cycle_length, 0


_END = object()


def read_order(instructions: Sequence[FileInstruction]) -> list[tuple[int, int]]:
    """(shard, record index) in reading order; for tests and small splits only."""
    return list(interleave(instructions, lambda fi: ((fi.shard, fi.skip + i) for i in range(fi.take))))
