"""Visual Prompt Tuning (Jia et al. 2022): learned tokens inserted after the class token.

``vpt-shallow`` inserts ``length`` prompts before the first block only; ``vpt-deep`` gives
every block its own prompts, which replace the previous block's prompt outputs. The head
reads the class token, so prompts change the prediction only through attention. Prompts are
Xavier-uniform initialised over the patch-embedding fan (as the VPT code), with dropout 0.1.
A fresh VPT model is therefore *not* the backbone (tested as such: shapes, replacement, and
gradients). Parameters: ``length x width`` per prompted block (ViT-B/16, deep, length 50:
460,800).

VPT tunes the length per task. ``vpt-deep``'s default ``length="paper"`` takes it from
``VPT_DEEP_LENGTHS`` (see ``pertask``): VPT's released hyperparameter table is a spreadsheet
outside its repository and paper, so the 19 values come from its reprint in Adapter+ (Steitz &
Roth 2024, ``conf/experiment/vtab/vpt.yaml``); three of them (sun397 5, eurosat 100, dmlab 100)
are confirmed by the official repository's ``demo.ipynb``, whose printed trainable counts
these settings reproduce exactly (tested). The published average, 0.53M (FacT's Table 1:
0.531), is NOT what these lengths give (0.62M as a mean of group means, 0.68M over tasks);
the difference is unexplained without VPT's own table. ``vpt-shallow`` has no published
per-task lengths here: its default is one length (50).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from vtab_lily.adapters.checks import check_scale_dropout, check_sizes
from vtab_lily.adapters.pertask import PerTaskTable, check_paper_or, is_paper
from vtab_lily.adapters.targets import model_blocks, model_family, set_submodule
from vtab_lily.adapters.wrappers import AdapterModule
from vtab_lily.errors import UserError


VPT_DEEP_LENGTHS = PerTaskTable(
    source="VPT-deep prompt lengths (Adapter+ reprint; sun397, eurosat, dmlab as in VPT's demo.ipynb)",
    values={task: {"length": n} for task, n in {
        "cifar": 10, "caltech101": 10, "dtd": 10, "oxford_flowers102": 1, "oxford_iiit_pet": 1, "svhn": 50,
        "sun397": 5, "patch_camelyon": 100, "eurosat": 100, "resisc45": 10, "diabetic_retinopathy": 1,
        "clevr_count": 100, "clevr_dist": 200, "dmlab": 100, "kitti": 100, "dsprites_loc": 100,
        "dsprites_ori": 100, "smallnorb_azi": 200, "smallnorb_ele": 200}.items()},
    fallback={"length": 50},
)


@dataclass
class VPTConfig:
    """``length`` prompt tokens (or ``paper``: per task), ``deep`` (every block) or shallow
    (first block), ``dropout`` on prompts."""

    PAPER_TABLE: ClassVar[PerTaskTable] = VPT_DEEP_LENGTHS
    length: int | str = "paper"
    deep: bool = True
    dropout: float = 0.1

    def resolve(self, model: nn.Module) -> "VPTConfig":
        if model_family(model) != "vit":
            raise UserError("vpt is defined for ViT backbones (prompts after the class token)")
        check_paper_or("vpt", "length", self.length)
        if not is_paper(self.length):
            check_sizes("vpt", length=self.length)
        check_scale_dropout("vpt", dropout=self.dropout)
        return self


@dataclass
class VPTShallowConfig(VPTConfig):
    """As ``vpt-deep`` with one prompted block; no published per-task lengths: one default."""

    PAPER_TABLE: ClassVar[None] = None
    length: int | str = 50
    deep: bool = False

    def resolve(self, model: nn.Module) -> "VPTShallowConfig":
        if is_paper(self.length):
            raise UserError("vpt-shallow: no published per-task prompt lengths are shipped; give length=N")
        return super().resolve(model)


class Prompts(AdapterModule):
    def __init__(self, length: int, width: int, fan_in: int) -> None:
        super().__init__()
        bound = math.sqrt(6.0 / (fan_in + width))
        self.tokens = nn.Parameter(torch.empty(length, width).uniform_(-bound, bound))


class PromptedBlock(nn.Module):
    """Runs ``block`` on ``[cls, prompts, rest]``: inserts them (first block) or replaces the
    previous prompts' outputs (deep)."""

    def __init__(self, block: nn.Module, prompts: Prompts, insert: bool, dropout: float, prefix: int) -> None:
        super().__init__()
        self.block = block
        self.prompts = prompts
        self.insert = insert
        self.prefix = prefix  # class (and register) tokens before the prompts
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        p = self.dropout(self.prompts.tokens).to(x.dtype).expand(x.shape[0], -1, -1)
        skip = 0 if self.insert else p.shape[1]
        x = torch.cat([x[:, :self.prefix], p, x[:, self.prefix + skip:]], dim=1)
        return self.block(x, *args, **kwargs)


def inject_vpt(model: nn.Module, config: VPTConfig) -> None:
    blocks = model_blocks(model)
    width = model.embed_dim
    patch = model.patch_embed.proj
    fan_in = patch.in_channels * patch.kernel_size[0] * patch.kernel_size[1]
    prefix = getattr(model, "num_prefix_tokens", 1)
    for i in range(len(blocks) if config.deep else 1):
        wrapped = PromptedBlock(blocks[i], Prompts(config.length, width, fan_in), insert=i == 0,
                                dropout=config.dropout, prefix=prefix)
        set_submodule(model, f"blocks.{i}", wrapped)
