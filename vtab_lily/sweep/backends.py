"""Where trials execute: this machine (one at a time, or one per GPU) or a Ray cluster.

A backend starts trials and reports them as they finish; it never decides what to run.
Ray is imported only inside :class:`RayBackend`.
"""

from __future__ import annotations

import os
import queue
import threading
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any, Protocol

from ..errors import UserError
from .execute import Outcome, package_root, run_trial_process


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


class LocalBackend:
    """Trials in subprocesses on this machine: one per visible GPU in parallel
    (``CUDA_VISIBLE_DEVICES`` set per worker), or one after another on CPU."""

    name = "local"

    def __init__(self, gpus: list[str] | None = None):
        self.gpus = visible_gpus() if gpus is None else gpus
        slots: list[str | None] = list(self.gpus) or [None]
        self._free: queue.Queue[str | None] = queue.Queue()
        for slot in slots:
            self._free.put(slot)
        self._pool = ThreadPoolExecutor(max_workers=len(slots), thread_name_prefix="sweep-trial")
        self._lock = threading.Lock()
        self._running = 0

    @property
    def workers(self) -> int:
        return max(1, len(self.gpus))

    def _job(self, argv: list[str], log_path: str) -> Outcome:
        device = self._free.get()
        with self._lock:
            self._running += 1
        try:
            env = {"CUDA_VISIBLE_DEVICES": device} if device is not None else {}
            return run_trial_process(argv, log_path, env, package_root())
        finally:
            with self._lock:
                self._running -= 1
            self._free.put(device)

    def submit(self, argv: list[str], log_path: str) -> Future:
        return self._pool.submit(self._job, argv, log_path)

    def wait(self, handles: list[Future]) -> list[tuple[Future, Outcome]]:
        done, _ = wait(handles, return_when=FIRST_COMPLETED)
        return [(h, h.result()) for h in handles if h in done]

    def running(self) -> int:
        with self._lock:
            return self._running

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


class RayBackend:
    """Each trial is a Ray task (``num_gpus=1``, or ``num_cpus=1`` on a cluster without GPUs).

    ``address``: an existing cluster (``auto``, ``ray://host:10001``, ``host:6379``); None
    starts a local Ray instance with ``num_cpus`` CPUs. The run folder must be one that
    every node sees at the same path (a shared file system).
    """

    name = "ray"

    def __init__(self, address: str | None = None, num_cpus: int | None = None):
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
        resources = {"num_gpus": 1} if self.gpus else {"num_cpus": 1}
        # max_retries=0: a failed trial is reported, not retried behind the user's back
        # (rerunning the sweep retries it, resuming from its checkpoint).
        self._remote = ray.remote(max_retries=0, **resources)(run_trial_process)
        self._pending = 0

    def submit(self, argv: list[str], log_path: str) -> Any:
        self._pending += 1
        return self._remote.remote(argv, log_path, None, package_root())

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


def make_backend(name: str, address: str | None = None, num_cpus: int | None = None) -> Backend:
    if name == "local":
        if address:
            raise UserError("--address is only for --backend ray")
        return LocalBackend()
    if name == "ray":
        return RayBackend(address, num_cpus)
    from ..errors import unknown_name

    raise unknown_name("backend", name, ("local", "ray"))
