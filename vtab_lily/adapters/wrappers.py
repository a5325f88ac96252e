"""Module wrappers that add adapter outputs to frozen backbone modules.

``AdaptedLinear`` replaces an ``nn.Linear`` (kept as ``base_layer``, like HF PEFT) and adds the
outputs of its deltas, each to the whole output or to a slice of it (``q``/``k``/``v`` of a fused
qkv). ``ParallelAdapter`` replaces a sub-module (timm's ``Mlp``, Vim's mixer) and adds one delta
computed from the same input. Deltas are ``AdapterModule``s, which is how parameters are
recognised as adapter parameters for freezing and counting.
"""

from __future__ import annotations

import torch
from torch import nn

from vtab_lily.adapters.targets import set_submodule

class AdapterModule(nn.Module):
    """Base class of every trainable adapter piece (marks its parameters as adapter parameters).

    ``out_slice`` is the (start, stop) range of the wrapped layer's output that this delta
    adds to, or None for the whole output.
    """

    out_slice: tuple[int, int] | None = None

    def add_to(self, base: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``base + self(x)``; subclasses fuse the add into their last matmul when they can."""
        return base + self(x)


class AdaptedLinear(nn.Module):
    """``y = base_layer(x) + sum of deltas(x)`` (each on its output slice); supports merging."""

    def __init__(self, base_layer: nn.Linear) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.deltas = nn.ModuleDict()
        self.merged = False
        self._unmerged_weight: torch.Tensor | None = None

    # Read-only views for code that inspects the layer (shapes, dtype, device).
    @property
    def weight(self) -> torch.Tensor:
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base_layer.bias

    @property
    def in_features(self) -> int:
        return self.base_layer.in_features

    @property
    def out_features(self) -> int:
        return self.base_layer.out_features

    def add_delta(self, name: str, delta: AdapterModule) -> None:
        new = delta.out_slice or (0, self.out_features)
        for other_name, other in self.deltas.items():
            old = other.out_slice or (0, self.out_features)
            if new[0] < old[1] and old[0] < new[1]:
                raise ValueError(f"delta {name!r} overlaps {other_name!r} on the same layer")
        self.deltas[name] = delta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)
        if self.merged:
            return y
        sliced = []
        for delta in self.deltas.values():
            if delta.out_slice is None:
                y = delta.add_to(y, x)
            else:
                sliced.append(delta)
        if not sliced:
            return y
        # Rebuild the output from pieces (no in-place writes into an autograd tensor).
        pieces, position = [], 0
        for delta in sorted(sliced, key=lambda d: d.out_slice[0]):
            start, stop = delta.out_slice
            if start > position:
                pieces.append(y[..., position:start])
            pieces.append(delta.add_to(y[..., start:stop], x))
            position = stop
        if position < y.shape[-1]:
            pieces.append(y[..., position:])
        return torch.cat(pieces, dim=-1)

    @torch.no_grad()
    def merge(self) -> None:
        """Fold every delta's weight into ``base_layer.weight`` (deltas must define ``delta_weight``)."""
        if self.merged:
            return
        for name, delta in self.deltas.items():
            if not hasattr(delta, "delta_weight"):
                raise TypeError(f"{type(delta).__name__} ({name}) cannot be merged into a weight")
        weight = self.base_layer.weight
        self._unmerged_weight = weight.detach().clone()  # unmerge restores these exact bits
        for delta in self.deltas.values():
            start, stop = delta.out_slice or (0, self.out_features)
            weight[start:stop] += delta.delta_weight().to(weight.dtype)
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Restore the original weight bit-for-bit."""
        if not self.merged:
            return
        self.base_layer.weight.copy_(self._unmerged_weight)
        self._unmerged_weight = None
        self.merged = False


class ParallelAdapter(nn.Module):
    """``y = base_layer(x, ...) + delta(x)``: an adapter beside a whole sub-module."""

    def __init__(self, base_layer: nn.Module, delta: AdapterModule) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.delta = delta

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return self.delta.add_to(self.base_layer(x, *args, **kwargs), x)


def adapted_linear_at(model: nn.Module, path: str) -> AdaptedLinear:
    """The ``AdaptedLinear`` at ``path``, wrapping the ``nn.Linear`` there on first use."""
    module = model.get_submodule(path)
    if isinstance(module, AdaptedLinear):
        return module
    if not isinstance(module, nn.Linear):
        raise TypeError(f"{path} is a {type(module).__name__}, not nn.Linear")
    wrapper = AdaptedLinear(module)
    set_submodule(model, path, wrapper)
    return wrapper
