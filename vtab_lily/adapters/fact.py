"""FacT (Jie & Deng 2023): the updates of all ViT weights as one factorised tensor.

Each block has 12 square (C x C) weight slots: q, k, v, o (attn.proj), fc1's four output
chunks and fc2's four input chunks. Slot j of every block gets ``dW_j = s * V C_j U`` with U
(r x C) and V (C x r) shared by all slots and blocks, and the r x r core ``C_j``:

- ``fact-tt`` (tensor train): ``C_j`` is its own r x r matrix (12 x depth of them);
- ``fact-tk`` (Tucker): ``C_j = sum_k P[j, k] G[:, :, k]`` from one r x r x r core G and
  factor rows P (12 x depth, r).
U is Xavier-uniform, V zero (so a fresh model computes the backbone), the cores random (a zero
core and a zero V would never receive a gradient); dropout 0.1 after U.
ViT-B/16: TT r=8 21,504, r=16 61,440; TK r=32 86,528.

FacT tunes r and s per task; the default ``rank="paper"``, ``scale="paper"`` take them from the
official configs (JieShibo/PETL-ViT ``FacT/configs/{tt,tk}/<task>.yaml``, see ``pertask``).
Averaged as FacT's Table 1 averages (the mean of the three group means), these give exactly
the published 0.037M (TT, 36,649) and 0.069M (TK, 69,333) (tested).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from vtab_lily.adapters.checks import check_scale_dropout, check_sizes
from vtab_lily.adapters.pertask import PerTaskTable, check_paper_or, is_paper
from vtab_lily.adapters.targets import model_blocks, model_family
from vtab_lily.adapters.wrappers import AdapterModule, adapted_linear_at
from vtab_lily.errors import UserError

SLOTS = 12  # q k v o, fc1 x 4, fc2 x 4



def _table(kind: str, rows: dict[str, tuple[int, float]], fallback: tuple[int, float]) -> PerTaskTable:
    return PerTaskTable(
        source=f"FacT official configs (FacT/configs/{kind}/<task>.yaml)",
        values={task: {"rank": r, "scale": s} for task, (r, s) in rows.items()},
        fallback={"rank": fallback[0], "scale": fallback[1]},
    )


# (rank, scale) per task
FACT_TT_SETTINGS = _table("tt", {
    "cifar": (8, 1.0), "caltech101": (16, 10.0), "dtd": (8, 0.01), "oxford_flowers102": (16, 1.0),
    "oxford_iiit_pet": (8, 1.0), "svhn": (16, 100.0), "sun397": (8, 1.0), "patch_camelyon": (8, 10.0),
    "eurosat": (8, 100.0), "resisc45": (8, 0.1), "diabetic_retinopathy": (8, 1.0), "clevr_count": (16, 1.0),
    "clevr_dist": (4, 10.0), "dmlab": (16, 10.0), "kitti": (16, 10.0), "dsprites_loc": (16, 100.0),
    "dsprites_ori": (16, 1.0), "smallnorb_azi": (16, 100.0), "smallnorb_ele": (8, 10.0)}, fallback=(8, 1.0))
FACT_TK_SETTINGS = _table("tk", {
    "cifar": (32, 0.1), "caltech101": (32, 10.0), "dtd": (16, 0.01), "oxford_flowers102": (32, 1.0),
    "oxford_iiit_pet": (16, 10.0), "svhn": (32, 100.0), "sun397": (16, 1.0), "patch_camelyon": (32, 10.0),
    "eurosat": (32, 100.0), "resisc45": (32, 10.0), "diabetic_retinopathy": (16, 1.0), "clevr_count": (32, 10.0),
    "clevr_dist": (16, 10.0), "dmlab": (32, 10.0), "kitti": (32, 10.0), "dsprites_loc": (32, 100.0),
    "dsprites_ori": (32, 1.0), "smallnorb_azi": (32, 100.0), "smallnorb_ele": (16, 10.0)}, fallback=(32, 1.0))


@dataclass
class FactTTConfig:
    """``rank`` r, ``scale`` s (each a number or ``paper``: per task), ``dropout`` after U."""

    PAPER_TABLE: ClassVar[PerTaskTable] = FACT_TT_SETTINGS
    rank: int | str = "paper"
    scale: float | str = "paper"
    dropout: float = 0.1

    def resolve(self, model: nn.Module) -> "FactTTConfig":
        if model_family(model) != "vit":
            raise UserError("fact is defined for ViT weights (q, k, v, o, fc1, fc2)")
        check_paper_or("fact", "rank", self.rank)
        check_paper_or("fact", "scale", self.scale)
        if not is_paper(self.rank):
            check_sizes("fact", rank=self.rank)
        check_scale_dropout("fact", 0.0 if is_paper(self.scale) else self.scale, self.dropout)
        return self


@dataclass
class FactTKConfig(FactTTConfig):
    PAPER_TABLE: ClassVar[PerTaskTable] = FACT_TK_SETTINGS


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
