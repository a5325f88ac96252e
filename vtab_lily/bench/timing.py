"""Timers for the benchmark suite: interleaved repetitions, medians and spreads, peak memory.

Candidates of one comparison are timed round-robin (A, B, B, A, A, B, ...) after their warm-up,
so that a change in machine load during the measurement hits all of them alike; their
ratios are then taken per round and summarised by the median and the min..max range.
On CUDA every timed call is bracketed by ``torch.cuda.synchronize``.
"""

from __future__ import annotations

import gc
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch


@dataclass(frozen=True)
class Stats:
    """Median and range of a set of measurements (seconds, or a unitless ratio)."""

    median: float
    low: float
    high: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> "Stats":
        if not values:
            raise ValueError("no measurements")
        return cls(statistics.median(values), min(values), max(values), len(values))

    def spread_pct(self) -> float:
        """(max - min) / median in percent: how noisy the measurement was."""
        return 100.0 * (self.high - self.low) / self.median if self.median else 0.0


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds one call of ``fn`` takes, device work included."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def measure(candidates: dict[str, Callable[[], object]], device: torch.device, warmup: int, reps: int,
            reps_for: dict[str, int] | None = None, warmup_for: dict[str, int] | None = None,
            log: Callable[[str], None] | None = None) -> dict[str, list[float]]:
    """Time every candidate ``reps`` times (``reps_for`` overrides per name), interleaved.

    Each candidate first runs its warm-up calls (``warmup``, or ``warmup_for[name]``).
    Then round k calls every candidate that still needs a k-th repetition, in order on even
    rounds and in reverse order on odd ones (so that running first or second in a round, e.g.
    right after another model's step, does not favour one candidate). Returns the seconds of
    each call, per name.
    """
    reps_for = reps_for or {}
    warmup_for = warmup_for or {}
    for name, fn in candidates.items():
        for _ in range(warmup_for.get(name, warmup)):
            fn()
        synchronize(device)
    times: dict[str, list[float]] = {name: [] for name in candidates}
    rounds = max([reps, *reps_for.values()])
    order = list(candidates.items())
    for k in range(rounds):
        for name, fn in (order if k % 2 == 0 else order[::-1]):
            if k < reps_for.get(name, reps):
                gc.collect()  # no collector pause inside a timed call
                times[name].append(time_call(fn, device))
                if log:
                    log(f"  {name}: {times[name][-1]:.4f} s")
    return times


def paired_ratio(slow: Sequence[float], fast: Sequence[float]) -> Stats:
    """``slow / fast`` per round (rounds paired in order); unpaired extras are compared with
    the other side's median."""
    n = max(len(slow), len(fast))
    med_slow, med_fast = statistics.median(slow), statistics.median(fast)
    ratios = [(slow[i] if i < len(slow) else med_slow) / (fast[i] if i < len(fast) else med_fast) for i in range(n)]
    return Stats.of(ratios)


def peak_memory_during(fn: Callable[[], object], device: torch.device) -> tuple[float, str]:
    """(MiB, how it was measured) for the peak memory one call of ``fn`` needs.

    CUDA: ``torch.cuda.max_memory_allocated`` over the call (absolute: weights included).
    CPU: the peak of live tensor allocations above the call's start, from the allocation
    events of ``torch.profiler`` (weights and optimizer state already allocated are not
    counted; memory freed during the call lowers the running total). When that private
    profiler API is unavailable, the growth of the process's maximum RSS (crude: zero once
    an earlier call reached a higher peak).
    """
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) / 2**20, "CUDA max_memory_allocated (absolute)"
    try:
        return _profiler_peak(fn) / 2**20, "peak live CPU tensor bytes above the step's start (torch.profiler)"
    except (ImportError, AttributeError, RuntimeError):
        import resource

        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        fn()
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return (after - before) / 1024, "max-RSS growth of the process (crude)"


def _profiler_peak(fn: Callable[[], object]) -> float:
    """Peak of the running sum of CPU allocation sizes recorded by the profiler, in bytes."""
    from torch._C._profiler import _ExtraFields_Allocation
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = []
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        stack.extend(node.children)
        fields = node.extra_fields
        if isinstance(fields, _ExtraFields_Allocation) and fields.device.type == "cpu":
            events.append((node.start_time_ns, fields.alloc_size))
    if not events:
        raise RuntimeError("the profiler recorded no allocations")
    live = peak = 0
    for _, size in sorted(events):
        live += size
        peak = max(peak, live)
    return float(peak)
