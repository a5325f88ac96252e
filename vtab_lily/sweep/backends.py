"""Where trials execute: this machine (one at a time, or one per GPU) or a Ray cluster.

A backend starts trials and reports them as they finish; it never decides what to run.
Ray is imported only inside :class:`RayBackend`.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, wait
from pathlib import Path
from typing import Any, Protocol

from ..errors import UserError
from ..rundir import SHARED_GPU_ENV
from .execute import Outcome, package_root, run_batch_process, run_trial_process, tail_of


class Backend(Protocol):
    name: str

    def submit(self, argv: list[str], log_path: str) -> Any:
        """Start one trial; returns a handle."""

    def wait(self, handles: list[Any]) -> list[tuple[Any, Outcome]]:
        """Block until at least one handle finishes; return the finished ones."""

    def running(self) -> int:
        """Trials executing right now (Ray: submitted and not finished)."""

    def close(self) -> None: ...


def visible_gpus() -> list[str]:
    """Device ids to hand out, one per worker: as many as ``torch.cuda.device_count()``,
    taken from an existing ``CUDA_VISIBLE_DEVICES`` list when there is one."""
    try:
        import torch

        count = torch.cuda.device_count()
    except Exception:  # noqa: BLE001 - no usable torch/CUDA here means CPU
        count = 0
    listed = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return (listed or [str(i) for i in range(count)])[:count]


def cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class LocalBackend:
    """Trials in subprocesses on this machine: ``trials_per_gpu`` workers per visible GPU
    (``CUDA_VISIBLE_DEVICES`` set per worker), or ``trials_per_gpu`` at once on a CPU-only one.

    With several workers each trial gets ``--threads cores // workers`` unless its options set
    ``--threads``. With ``batch``, a worker runs the trials it takes
    in one ``python -m vtab_lily.run --batch FILE`` process (one process per GPU slot instead of
    one per trial); a batch is formed from what was submitted up to the last :meth:`flush`.
    """

    name = "local"

    def __init__(self, gpus: list[str] | None = None, trials_per_gpu: int = 1, threads: int | None = None,
                 batch: bool = False, module: str = "vtab_lily.run"):
        if trials_per_gpu < 1:
            raise UserError(f"--trials-per-gpu must be at least 1, got {trials_per_gpu}")
        self.gpus = visible_gpus() if gpus is None else gpus
        self.slots: list[str | None] = [g for g in self.gpus for _ in range(trials_per_gpu)] or [None] * trials_per_gpu
        self.trials_per_gpu = trials_per_gpu
        if threads is None and len(self.slots) > 1:
            threads = max(1, cpu_cores() // len(self.slots))
        self.threads, self.batch, self.module = threads, batch, module
        self._cond = threading.Condition()
        self._queue: deque[tuple[Future, list[str], str]] = deque()
        self._released = 0  # queued trials the workers may take (batch mode: up to the last flush)
        self._busy = 0
        self._running = 0
        self._closed = False
        self._batches = itertools.count(1)
        self._workers = [threading.Thread(target=self._work, args=(slot,), name=f"sweep-slot-{i}", daemon=True)
                         for i, slot in enumerate(self.slots)]
        for worker in self._workers:
            worker.start()

    @property
    def workers(self) -> int:
        return len(self.slots)

    def submit(self, argv: list[str], log_path: str) -> Future:
        future: Future = Future()
        with self._cond:
            self._queue.append((future, list(argv), log_path))
            if not self.batch:
                self._released = len(self._queue)
                self._cond.notify()
        return future

    def flush(self) -> None:
        with self._cond:
            self._released = len(self._queue)
            self._cond.notify_all()

    def _take(self) -> list[tuple[Future, list[str], str]] | None:
        with self._cond:
            while not self._closed and not self._released:
                self._cond.wait()
            if self._closed:
                return None
            idle = max(1, len(self.slots) - self._busy)
            count = 1 if not self.batch else -(-self._released // idle)  # an even share of what is queued
            taken = [self._queue.popleft() for _ in range(count)]
            self._released -= count
            self._busy += 1
            self._running += count
            return taken

    def _argv(self, argv: list[str]) -> list[str]:
        given = any(a == "--threads" or a.startswith("--threads=") for a in argv)
        return argv if self.threads is None or given else [*argv, "--threads", str(self.threads)]

    def _work(self, slot: str | None) -> None:
        env = {"CUDA_VISIBLE_DEVICES": slot, **shared_gpu_env(self.trials_per_gpu)} if slot is not None else {}
        while (taken := self._take()) is not None:
            try:
                if self.batch:
                    self._run_batch(taken, env)
                else:
                    future, argv, log = taken[0]
                    outcome = run_trial_process(self._argv(argv), log, env, package_root(), module=self.module)
                    future.set_result(outcome)
            except BaseException as err:  # noqa: BLE001 - reported through the futures, never lost
                for future, _, _ in taken:
                    if not future.done():
                        future.set_exception(err)
            finally:
                with self._cond:
                    self._busy -= 1
                    self._running -= sum(not counted for counted in self._counted(taken))

    def _run_batch(self, taken: list[tuple[Future, list[str], str]], env: dict[str, str]) -> None:
        start = time.monotonic()
        stamp = time.strftime("%Y%m%d-%H%M%S")
        batch_log = Path(taken[0][2]).parent / "batches" / f"batch-{stamp}-{next(self._batches):03d}.log"
        def line_done(index: int, code: int) -> None:  # a trial reported as it ends, not at the batch's end
            future = taken[index][0]
            if not future.done():
                with self._cond:
                    self._running -= 1
                future.counted = True
                future.set_result(Outcome(code, time.monotonic() - start, str(batch_log),
                                          tail_of(str(batch_log)) if code else ""))

        code = run_batch_process([(self._argv(argv), log) for _, argv, log in taken], str(batch_log), env,
                                 package_root(), module=self.module, on_done=line_done)
        outcome = Outcome(code, time.monotonic() - start, str(batch_log), tail_of(str(batch_log)) if code else "")
        for future, _, _ in taken:
            if not future.done():
                future.set_result(outcome)

    @staticmethod
    def _counted(taken: list[tuple[Future, list[str], str]]) -> list[bool]:
        """For each taken trial: was it already taken off the running count (reported early)?"""
        return [getattr(future, "counted", False) for future, _, _ in taken]

    def wait(self, handles: list[Future]) -> list[tuple[Future, Outcome]]:
        done, _ = wait(handles, return_when=FIRST_COMPLETED)
        return [(h, h.result()) for h in handles if h in done]

    def running(self) -> int:
        with self._cond:
            return self._running

    def close(self) -> None:
        with self._cond:
            self._closed = True
            for future, _, _ in self._queue:
                future.cancel()
            self._queue.clear()
            self._cond.notify_all()
        for worker in self._workers:
            worker.join()


class RayBackend:
    """Each trial is a Ray task (``num_gpus=1/trials_per_gpu``, or ``num_cpus=1`` on a cluster
    without GPUs): with ``trials_per_gpu`` N, Ray packs N trials on each GPU.

    ``address``: an existing cluster (``auto``, ``ray://host:10001``, ``host:6379``); None
    starts a local Ray instance with ``num_cpus`` CPUs. The run folder must be one that
    every node sees at the same path (a shared file system).
    """

    name = "ray"

    def __init__(self, address: str | None = None, num_cpus: int | None = None, trials_per_gpu: int = 1):
        try:
            import ray
        except ImportError:
            raise UserError("--backend ray needs Ray: pip install 'vtab-lily[sweep]' (or pip install 'ray>=2.9')") from None
        self._ray = ray
        self._started_here = False
        if not ray.is_initialized():
            try:
                if address:
                    ray.init(address=address)
                else:
                    ray.init(num_cpus=num_cpus, include_dashboard=False, runtime_env=_local_runtime_env())
            except ConnectionError as err:
                raise UserError(f"--address {address}: cannot reach a Ray cluster ({err})") from None
            self._started_here = True
        self.gpus = int(ray.cluster_resources().get("GPU", 0))
        resources = {"num_gpus": 1 / trials_per_gpu} if self.gpus else {"num_cpus": 1}
        # max_retries=0: a failed trial is reported, not retried behind the user's back
        # (rerunning the sweep retries it, resuming from its checkpoint).
        self._remote = ray.remote(max_retries=0, **resources)(run_trial_process)
        self._env = shared_gpu_env(trials_per_gpu) if self.gpus else {}
        self._pending = 0

    def submit(self, argv: list[str], log_path: str) -> Any:
        self._pending += 1
        return self._remote.remote(argv, log_path, self._env or None, package_root())

    def wait(self, handles: list[Any]) -> list[tuple[Any, Outcome]]:
        done, _ = self._ray.wait(handles, num_returns=1)
        finished = []
        for handle in done:
            try:
                outcome = self._ray.get(handle)
            except Exception as err:  # noqa: BLE001 - a lost node or worker: report, keep going
                outcome = Outcome(-1, 0.0, "", f"ray task failed: {err.__class__.__name__}: {err}"[:2000])
            finished.append((handle, outcome))
        self._pending -= len(finished)
        return finished

    def running(self) -> int:
        return self._pending

    def close(self) -> None:
        if self._started_here:
            self._ray.shutdown()


def shared_gpu_env(trials_per_gpu: int) -> dict[str, str]:
    """Tells each run how many trials share its GPU (the runner records it in result.json, and
    the leaderboard keeps such contended times out of its solo time column)."""
    return {SHARED_GPU_ENV: str(trials_per_gpu)} if trials_per_gpu > 1 else {}


def _local_runtime_env() -> dict | None:
    """Local Ray workers start in our working directory and can import from it; started
    elsewhere, an uninstalled checkout needs its folder on their PYTHONPATH (this costs Ray
    a few seconds of set-up, so it is only done when needed)."""
    from pathlib import Path

    root = package_root()
    if Path.cwd().resolve() == Path(root):
        return None
    parts = [root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return {"env_vars": {"PYTHONPATH": os.pathsep.join(dict.fromkeys(parts))}}


def make_backend(name: str, address: str | None = None, num_cpus: int | None = None, trials_per_gpu: int = 1,
                 batch: bool = True) -> Backend:
    """``batch``: one process per local worker via ``vtab_lily.run --batch`` (False: one per trial)."""
    if not isinstance(trials_per_gpu, int) or isinstance(trials_per_gpu, bool) or not 1 <= trials_per_gpu <= 64:
        raise UserError(f"--trials-per-gpu must be between 1 and 64, got {trials_per_gpu!r}")
    if name == "local":
        if address:
            raise UserError("--address is only for --backend ray")
        return LocalBackend(trials_per_gpu=trials_per_gpu, batch=batch)
    if name == "ray":
        return RayBackend(address, num_cpus, trials_per_gpu)
    from ..errors import unknown_name

    raise unknown_name("backend", name, ("local", "ray"))
