"""Small concurrency helpers shared by the loader, ``verify`` and the demo generator."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections import deque
from concurrent.futures import Executor, ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence, TypeVar

from tqdm import tqdm

from ..fsutil import LockBusy, dir_lock

T = TypeVar("T")
R = TypeVar("R")
PROGRESS_MIN_ITEMS = 500  # show a progress bar for at least this many items


def default_workers() -> int:
    return min(8, os.cpu_count() or 1)


def positive_int(text: str) -> int:
    """argparse type for ``--workers``: an integer >= 1 (argparse turns the error into exit 2)."""
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


IN_FLIGHT_PER_WORKER = 4  # tasks submitted ahead of the results consumed, per thread


def bounded_map(pool: Executor, fn: Callable[[T], R], items: Iterable[T], window: int) -> Iterator[R]:
    """``pool.map`` with at most ``window`` tasks submitted and not yet consumed: memory stays
    bounded whatever the number of items (``Executor.map`` submits every item at once)."""
    pending: deque = deque()
    try:
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:  # the consumer stopped early (or an item failed): drop what has not started
        for future in pending:
            future.cancel()


def map_with_progress(fn: Callable[[T], R], items: Sequence[T], workers: int | None = None,
                      desc: str = "", progress: bool = True) -> Iterator[R]:
    """``fn`` over ``items`` on a few threads (PIL releases the GIL), results in order, with a
    tqdm bar for long runs; a bounded number of items in flight."""
    workers = workers or default_workers()
    bar = tqdm(total=len(items), desc=desc, unit="img", leave=False,
               disable=True if not progress or len(items) < PROGRESS_MIN_ITEMS else None)  # None: a terminal only
    with ThreadPoolExecutor(max_workers=workers) as pool, bar:
        for result in bounded_map(pool, fn, items, IN_FLIGHT_PER_WORKER * workers):
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


@contextlib.contextmanager
def folder_lock(folder: Path, poll_s: float = 0.5) -> Iterator[None]:
    """An exclusive lock on ``folder`` itself (``flock`` on the directory), waiting while another
    process holds it. Unlike :func:`waiting_lock` it leaves no lock file in a data folder; where a
    directory cannot be flocked (some network file systems) it falls back to a lock file that is
    removed afterwards.
    """
    folder = Path(folder)
    fd = _locked_folder_fd(folder, poll_s)
    if fd is None:
        with waiting_lock(folder, ".lock"):
            yield
        with contextlib.suppress(OSError):
            (folder / ".lock").unlink()
        return
    try:
        yield
    finally:
        os.close(fd)  # closing releases the flock


def _locked_folder_fd(folder: Path, poll_s: float) -> int | None:
    """An open descriptor of ``folder`` holding its flock (None where a directory cannot be
    opened). The folder is created when missing; when the process that held the lock removed it
    (a failed ``prepare`` removes the empty root it created), the lock is taken again on the
    folder now at that path, never kept on a removed one."""
    import errno
    import fcntl

    waited = False
    while True:
        folder.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        except OSError:
            return None
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as err:
                    if err.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                        raise
                    if not waited:
                        print(f"waiting: another process is writing {folder}", file=sys.stderr)
                        waited = True
                    time.sleep(poll_s)
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(folder))
            except FileNotFoundError:
                same = False
        except BaseException:
            os.close(fd)
            raise
        if same:
            return fd
        os.close(fd)  # locked a folder that is gone: lock the one at the path now
