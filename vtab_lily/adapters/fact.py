"""FacT (Jie & Deng 2023): the updates of all ViT weights as one factorised tensor.

Each block has 12 square (C x C) weight slots: q, k, v, o (attn.proj), fc1's four output
chunks and fc2's four input chunks. Slot j of every block gets ``dW_j = s * V C_j U`` with U
(r x C) and V (C x r) shared by all slots and blocks, and the r x r core ``C_j``:

- ``fact-tt`` (tensor train): ``C_j`` is its own r x r matrix (12 x depth of them);
- ``fact-tk`` (Tucker): ``C_j = sum_k P[j, k] G[:, :, k]`` from one r x r x r core G and
  factor rows P (12 x depth, r).
U is Xavier-uniform, V zero (so a fresh model computes the backbone), the cores random (a zero
core and a zero V would never receive a gradient); dropout 0.1 after U.
ViT-B/16: TT r=8 21,504, r=16 61,440; TK r=32 86,528. The papers tune r per task (TT r<=16,
TK r<=32), so their printed 0.037M / 0.069M are averages over that per-task table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from vtab_lily.adapters.checks import check_scale_dropout, check_sizes
from vtab_lily.adapters.targets import model_blocks, model_family
from vtab_lily.adapters.wrappers import AdapterModule, adapted_linear_at
from vtab_lily.errors import UserError

SLOTS = 12  # q k v o, fc1 x 4, fc2 x 4


@dataclass
class FactTTConfig:
    """``rank`` r, ``scale`` s, ``dropout`` after U."""

    rank: int = 8
    scale: float = 1.0
    dropout: float = 0.1

    def resolve(self, model: nn.Module) -> "FactTTConfig":
        if model_family(model) != "vit":
            raise UserError("fact is defined for ViT weights (q, k, v, o, fc1, fc2)")
        check_sizes("fact", rank=self.rank)
        check_scale_dropout("fact", self.scale, self.dropout)
        return self


@dataclass
class FactTKConfig(FactTTConfig):
    rank: int = 32


class FactFactors(AdapterModule):
    """U, V and the cores shared by every slot of every block."""

    def __init__(self, width: int, rank: int, slots: int, tucker: bool, dropout: float) -> None:
        super().__init__()
        self.u = nn.Linear(width, rank, bias=False)
        nn.init.xavier_uniform_(self.u.weight)
        self.v = nn.Linear(rank, width, bias=False)
        nn.init.zeros_(self.v.weight)
        bound = 1 / math.sqrt(rank)
        if tucker:
            self.core = nn.Parameter(torch.empty(rank, rank, rank).uniform_(-bound, bound))
            self.factors = nn.Parameter(torch.empty(slots, rank).uniform_(-bound, bound))
        else:
            self.core = nn.Parameter(torch.empty(slots, rank, rank).uniform_(-bound, bound))
            self.factors = None
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def core_of(self, slot: int) -> torch.Tensor:
        if self.factors is None:
            return self.core[slot]
        return torch.einsum("k,abk->ab", self.factors[slot], self.core)

    def apply(self, x: torch.Tensor, slot: int) -> torch.Tensor:
        """``x (V C U)^T`` for one slot (scale applied by the caller)."""
        return self.v(self.dropout(self.u(x)) @ self.core_of(slot).T)

    def matrix(self, slot: int) -> torch.Tensor:
        return self.v.weight @ self.core_of(slot) @ self.u.weight


class FactDelta(AdapterModule):
    """The update of one Linear from ``slots``: one slot, output chunks (fc1) or input chunks (fc2)."""

    def __init__(self, factors: FactFactors, slots: list[int], mode: str, scale: float,
                 out_slice: tuple[int, int] | None = None) -> None:
        super().__init__()
        self.factors, self.slots, self.mode, self.scale, self.out_slice = factors, slots, mode, scale, out_slice

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "in":
            parts = x.chunk(len(self.slots), dim=-1)
            return self.scale * sum(self.factors.apply(p, s) for p, s in zip(parts, self.slots))
        outs = [self.factors.apply(x, s) for s in self.slots]
        return self.scale * (torch.cat(outs, dim=-1) if len(outs) > 1 else outs[0])

    def delta_weight(self) -> torch.Tensor:
        mats = [self.factors.matrix(s) for s in self.slots]
        return self.scale * torch.cat(mats, dim=1 if self.mode == "in" else 0)


def inject_fact(model: nn.Module, config: FactTTConfig) -> None:
    blocks = model_blocks(model)
    width = blocks[0].norm1.normalized_shape[0]
    factors = FactFactors(width, config.rank, SLOTS * len(blocks), isinstance(config, FactTKConfig), config.dropout)
    for i, block in enumerate(blocks):
        base = SLOTS * i
        fc1, fc2 = block.mlp.fc1, block.mlp.fc2
        if fc1.out_features % width or fc2.in_features != fc1.out_features or block.attn.qkv.out_features != 3 * width:
            raise UserError(f"fact: block {i} does not have C x C slots (width {width})")
        chunks = fc1.out_features // width
        if chunks != 4:
            raise UserError(f"fact: expects an MLP ratio of 4, block {i} has {chunks}")
        qkv = adapted_linear_at(model, f"blocks.{i}.attn.qkv")
        for j, kind in enumerate(("q", "k", "v")):
            qkv.add_delta(f"fact_{kind}", FactDelta(factors, [base + j], "single", config.scale,
                                                    (j * width, (j + 1) * width)))
        adapted_linear_at(model, f"blocks.{i}.attn.proj").add_delta(
            "fact_o", FactDelta(factors, [base + 3], "single", config.scale))
        adapted_linear_at(model, f"blocks.{i}.mlp.fc1").add_delta(
            "fact_fc1", FactDelta(factors, [base + 4 + c for c in range(4)], "out", config.scale))
        adapted_linear_at(model, f"blocks.{i}.mlp.fc2").add_delta(
            "fact_fc2", FactDelta(factors, [base + 8 + c for c in range(4)], "in", config.scale))
