"""AdaptFormer (Chen et al. 2022): a parallel bottleneck beside the MLP of every block.

Following the paper's Eq. 4, ``y = MLP(LN(x)) + s * up(dropout(ReLU(down(LN(x)))))``: the
adapter reads the same normalised input as the MLP (on ViT it wraps ``blocks[i].mlp``). On Vim,
whose blocks are ``x + mixer(norm(x))``, it wraps ``layers[i].mixer`` the same way (the mixer
is the block's only sub-module). ``up`` is zero-initialised (weight and bias) and ``down``'s
bias is zero, so a fresh model computes exactly the backbone.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from vtab_lily.adapters.targets import model_blocks, model_family, set_submodule
from vtab_lily.adapters.wrappers import AdapterModule, ParallelAdapter
from vtab_lily.errors import UserError

# The sub-module of each block that the adapter runs beside.
PLACEMENT = {"vit": "mlp", "vim": "mixer"}


@dataclass
class AdaptFormerConfig:
    """``rank`` (bottleneck width), ``scale`` s (0.1 as the paper), ``dropout`` after the ReLU."""

    rank: int = 8
    scale: float = 0.1
    dropout: float = 0.1

    def resolve(self, model: nn.Module) -> "AdaptFormerConfig":
        model_family(model)
        if not isinstance(self.rank, int) or isinstance(self.rank, bool) or self.rank < 1:
            raise UserError(f"adaptformer: rank must be an integer >= 1, got {self.rank!r}")
        if self.scale < 0:
            raise UserError(f"adaptformer: scale must be >= 0, got {self.scale}")
        if not 0.0 <= self.dropout < 1.0:
            raise UserError(f"adaptformer: dropout must be in [0, 1), got {self.dropout}")
        return replace(self, scale=float(self.scale), dropout=float(self.dropout))


class Bottleneck(AdapterModule):
    """``s * up(dropout(relu(down(x))))`` with biases; zero output at initialisation."""

    def __init__(self, width: int, rank: int, scale: float, dropout: float) -> None:
        super().__init__()
        self.down = nn.Linear(width, rank)
        self.up = nn.Linear(rank, width)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.dropout(torch.relu(self.down(x)))) * self.scale


def block_width(block: nn.Module) -> int:
    """Residual width of a block: the input width of its first Linear."""
    for module in block.modules():
        if isinstance(module, nn.Linear):
            return module.in_features
    raise UserError(f"cannot infer the width of {type(block).__name__}")


def inject_adaptformer(model: nn.Module, config: AdaptFormerConfig) -> None:
    family = model_family(model)
    prefix = "blocks" if family == "vit" else "layers"
    for i, block in enumerate(model_blocks(model)):
        path = f"{prefix}.{i}.{PLACEMENT[family]}"
        inner = model.get_submodule(path)
        width = block_width(inner)
        set_submodule(model, path, ParallelAdapter(inner, Bottleneck(width, config.rank, config.scale, config.dropout)))
