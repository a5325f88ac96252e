"""Additional-scan for Vision Mamba (Yoshimura et al. 2025, "MambaPEFT"): learned extra state
dimensions in every mixer's selective scan.

Each mixer and scan direction gets ``states`` (n) new state dimensions beside its own N: a new
``A_log`` column block (d_inner, n) and a new projection ``x_proj`` (2n, d_inner) from the conv
output to the new rows of B (``[:n]``) and C (``[n:]``). The scan then runs with N + n states
(``BiMambaMixer.extra_states``); delta, D, the conv and the z gate are the backbone's and stay
frozen, as does everything else. A is diagonal, so the N pretrained states evolve exactly as
before; the output gains sum_n C h over the new ones.

Initialisation as MambaPEFT's VTAB config (``scan_addition_num=6``, ``scan_addition_pos="prefix"``,
``scan_A_copy_from_last=True``, ``zero_init_x_proj=False``): every new A_log column is a copy of the
pretrained column 0 of that direction's ``A_log`` (taken at injection, which the runner does after
loading the weights), and ``x_proj`` has nn.Linear's default (Kaiming-uniform) init. B and C are
both random, so a fresh model is *not* the backbone (tested: with the new C rows zeroed it is).
MambaPEFT puts the new states before the pretrained ones ("prefix"); we append them after: the
states are independent, so only the order of the sum over states differs.

Vim-S, states 6: 24 layers x 2 directions x (768 x 6 + 12 x 768) = 663,552 parameters.

Weight decay: MambaPEFT gives the new A_log no decay (its ``A_log`` no-decay key matches the new
name too) and the new x_proj the base decay; our loop decays every trainable tensor alike
(``train.py``: one AdamW group), so the new A_log is decayed here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vtab_lily.adapters.checks import check_sizes
from vtab_lily.adapters.targets import model_blocks, model_family
from vtab_lily.adapters.wrappers import AdapterModule
from vtab_lily.errors import UserError


@dataclass
class AdditionalScanConfig:
    """``states`` extra SSM state dimensions per scan direction in every layer (MambaPEFT's
    ``scan_addition_num``; 6 in its VTAB-1K setting)."""

    states: int = 6

    def resolve(self, model: nn.Module) -> "AdditionalScanConfig":
        if model_family(model) != "vim":
            raise UserError("additional-scan adds state dimensions to Vision Mamba's selective scan; "
                            "it has no ViT form (try lora, vpt-deep or another ViT method)")
        check_sizes("additional-scan", states=self.states)
        return self


class ExtraStates(AdapterModule):
    """The new state dimensions of one mixer, both directions (``BiMambaMixer.extra_states``)."""

    def __init__(self, mixer: nn.Module, states: int) -> None:
        super().__init__()
        self.states = states
        with torch.no_grad():  # copies of the pretrained column 0, one per new state
            self.A_log = nn.Parameter(mixer.A_log[:, :1].detach().repeat(1, states))
            self.A_b_log = nn.Parameter(mixer.A_b_log[:, :1].detach().repeat(1, states))
        self.x_proj = nn.Linear(mixer.d_inner, 2 * states, bias=False)  # rows [:n] B, [n:] C
        self.x_proj_b = nn.Linear(mixer.d_inner, 2 * states, bias=False)

    def forward(self, u_f: torch.Tensor, u_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Conv outputs (b, d_inner, L) -> A (2 d_inner, n), B and C (b, 2, n, L)."""
        A = -torch.exp(torch.cat([self.A_log, self.A_b_log]).float())
        bc_f = self.x_proj(u_f.transpose(1, 2)).transpose(1, 2)  # (b, 2n, L)
        bc_b = self.x_proj_b(u_b.transpose(1, 2)).transpose(1, 2)
        n = self.states
        B = torch.stack([bc_f[:, :n], bc_b[:, :n]], dim=1)
        C = torch.stack([bc_f[:, n:], bc_b[:, n:]], dim=1)
        return A, B, C


def inject_additional_scan(model: nn.Module, config: AdditionalScanConfig) -> None:
    for layer in model_blocks(model):
        mixer = layer.mixer
        if not hasattr(mixer, "extra_states") or mixer.extra_states is not None:
            raise UserError(f"additional-scan: {type(mixer).__name__} has no free extra_states slot")
        mixer.extra_states = ExtraStates(mixer, config.states)
