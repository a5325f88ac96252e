"""Small concurrency helpers shared by the loader, ``verify`` and the demo generator."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterator, Sequence, TypeVar

from tqdm import tqdm

from ..fsutil import LockBusy, dir_lock

T = TypeVar("T")
R = TypeVar("R")
PROGRESS_MIN_ITEMS = 500  # show a progress bar for at least this many items


def default_workers() -> int:
    return min(8, os.cpu_count() or 1)


def map_with_progress(fn: Callable[[T], R], items: Sequence[T], workers: int | None = None,
                      desc: str = "", progress: bool = True) -> Iterator[R]:
    """``fn`` over ``items`` on a few threads (PIL releases the GIL), results in order, with a
    tqdm bar for long runs."""
    bar = tqdm(total=len(items), desc=desc, unit="img", leave=False,
               disable=not progress or len(items) < PROGRESS_MIN_ITEMS)
    with ThreadPoolExecutor(max_workers=workers or default_workers()) as pool, bar:
        for result in pool.map(fn, items):
            bar.update()
            yield result


@contextlib.contextmanager
def waiting_lock(folder: Path, name: str, poll_s: float = 0.5) -> Iterator[None]:
    """:func:`vtab_lily.fsutil.dir_lock`, but wait (polling) while another process holds it."""
    waited = False
    with contextlib.ExitStack() as stack:
        while True:
            try:
                stack.enter_context(dir_lock(folder, name=name))
                break
            except LockBusy as busy:
                if not waited:
                    print(f"waiting: {busy}", file=sys.stderr)
                    waited = True
                time.sleep(poll_s)
        yield
