"""A run's memory, as result.json ``memory`` records it: the method's training memory apart from
the data the runner keeps on the device.

On CUDA the runner puts both splits on the GPU once (dSprites' test split alone is 11 GB), so the
allocator's plain peak would describe the data, not the method. :class:`MemoryMeter` measures the
bytes the placement allocated, then resets the peak: from then on the resident data is a constant
part of every allocated total, and ``peak - data`` is the largest amount the model, its
activations, gradients and optimizer state ever held. It reads ``memory_allocated`` (bytes in
live tensors, rounded to the caching allocator's blocks), not ``memory_reserved``: the cache the
allocator keeps depends on the order of frees and the other runs in the process, not on the
method. Resetting *after* the placement keeps a transient copy made while placing the data out of
the training peak. On a CPU only the process's peak RSS is known (the data is memory-mapped and
paged in as it is read): it is recorded as before, without a training-only figure.
"""

from __future__ import annotations

import resource
from typing import Any, Callable, Protocol

import torch

MIB = 2**20


class CudaMemorySource(Protocol):
    """What the meter reads on a GPU (tests pass a fake one)."""

    def allocated(self) -> int: ...
    def peak(self) -> int: ...
    def reset_peak(self) -> None: ...


class TorchCudaMemory:
    def __init__(self, device: torch.device):
        self.device = device

    def allocated(self) -> int:
        return torch.cuda.memory_allocated(self.device)

    def peak(self) -> int:
        return torch.cuda.max_memory_allocated(self.device)

    def reset_peak(self) -> None:
        torch.cuda.reset_peak_memory_stats(self.device)


def cpu_peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


class MemoryMeter:
    """Place a run's data with :meth:`place`, train, then :meth:`record` the ``memory`` entry."""

    def __init__(self, device: torch.device, source: CudaMemorySource | None = None):
        self.device = device
        self.source = source if source is not None or device.type != "cuda" else TorchCudaMemory(device)
        self.data_bytes = 0

    def place(self, place: Callable[[Any], Any], *splits: Any) -> list[Any]:
        """``place(split)`` for each split (the loop's ``on_device``), counting the bytes they took."""
        if self.source is None:
            return [place(split) for split in splits]
        before = self.source.allocated()
        placed = [place(split) for split in splits]
        self.data_bytes = max(0, self.source.allocated() - before)
        self.source.reset_peak()  # a --batch process runs many: each result gets its own peak
        return placed

    def train_peak_mb(self) -> float | None:
        """The training-only peak so far (None on a CPU), e.g. for TensorBoard."""
        return None if self.source is None else max(0, self.source.peak() - self.data_bytes) / MIB

    def record(self) -> dict:
        """``{"peak_mb", "kind", ["train_peak_mb", "data_mb"]}``: ``peak_mb`` keeps its old meaning
        (everything allocated, data included; a CPU's peak RSS)."""
        if self.source is None:
            return {"peak_mb": round(cpu_peak_rss_mb(), 1), "kind": "cpu_peak_rss"}
        return {"peak_mb": round(self.source.peak() / MIB, 1), "kind": "cuda_max_allocated",
                "train_peak_mb": round(self.train_peak_mb(), 1), "data_mb": round(self.data_bytes / MIB, 1)}
