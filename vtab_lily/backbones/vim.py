"""Vision Mamba (Vim): bidirectional "v2" Mamba blocks with a middle class token.

Written from the Vim paper (Zhu et al. 2024, arXiv 2401.09417) and the model definition of
the public hustvl/Vim code; the parameter names
and shapes match the official ``vim_s_midclstok_80p5acc.pth`` exactly (415 keys for
Vim-S), so the official file loads with ``strict=True``.

Layer i is ``r = r + drop_path(mixer(norm(r)))`` (pre-norm RMSNorm, residual kept in
fp32), and the mixer runs one selective scan forward over the sequence and one over the
flipped sequence, each with its own conv1d / x_proj / dt_proj / A / D, and averages them.
Both directions go through ONE scan call: their channels are concatenated (2 * d_inner)
with B and C as two groups.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from timm.layers import DropPath, resample_abs_pos_embed, trunc_normal_
from torch import Tensor, nn

from ..errors import UserError
from .checkpoint import check_keys, guess_family, read_state_dict, sniff_format, wrong_family_error
from .registry import BackboneSpec
from .scan import causal_conv1d, selective_scan


@dataclass(frozen=True)
class VimConfig:
    img_size: int = 224
    patch_size: int = 16
    embed_dim: int = 384
    depth: int = 24
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    dt_rank: int | None = None  # None: ceil(embed_dim / 16), as Mamba's "auto"
    in_chans: int = 3


VIM_SPECS = {
    "vim-s": BackboneSpec(
        name="vim-s",
        family="vim",
        description="Vision Mamba small (Vim-S, 26M), middle cls token, ImageNet-1k (80.5% top-1)",
        img_size=224,
        drop_path=0.05,
        arch=asdict(VimConfig(embed_dim=384)),
        checkpoint_file="vim_s_midclstok_80p5acc.pth",
        source="https://huggingface.co/hustvl/Vim-small-midclstok",
        hub="hustvl/Vim-small-midclstok",
    ),
    "vim-t": BackboneSpec(
        name="vim-t",
        family="vim",
        description="Vision Mamba tiny (Vim-Ti, 7M), middle cls token, ImageNet-1k (76.1% top-1)",
        img_size=224,
        drop_path=0.05,
        arch=asdict(VimConfig(embed_dim=192)),
        checkpoint_file="vim_t_midclstok_76p1acc.pth",
        source="https://huggingface.co/hustvl/Vim-tiny-midclstok",
        hub="hustvl/Vim-tiny-midclstok",
    ),
    "vim-tiny-test": BackboneSpec(
        name="vim-tiny-test",
        family="vim",
        description="tiny random Vim for tests and the demo (32px, 4 layers)",
        img_size=32,
        drop_path=0.0,
        arch=asdict(VimConfig(img_size=32, patch_size=4, embed_dim=32, depth=4, d_state=8)),
        test_only=True,
        patch_size=4,
    ),
}


class RMSNorm(nn.Module):
    """RMSNorm without bias (eps 1e-5), computed in fp32, returned in the weight's dtype."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        x = x.float()
        normed = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight.float()
        return normed.to(self.weight.dtype)


class PatchEmbed(nn.Module):
    """Non-overlapping patches by a strided conv (with bias): (b, 3, H, W) -> (b, P, D)."""

    def __init__(self, img_size: int, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} is not a multiple of the patch size {patch_size}")
        self.img_size = img_size
        self.grid_size = (img_size // patch_size, img_size // patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-2:] != (self.img_size, self.img_size):
            raise ValueError(
                f"input is {tuple(x.shape[-2:])} pixels but the model was built for "
                f"{self.img_size}x{self.img_size} (create_backbone(img_size=...))"
            )
        return self.proj(x).flatten(2).transpose(1, 2)


class BiMambaMixer(nn.Module):
    """Mamba mixer with a forward and a backward ("_b") scan, outputs averaged ("v2", div 2).

    Every projection is an ``nn.Linear`` called as a module (adapters wrap them by name):
    ``in_proj`` -> x, z; per direction ``x_proj`` -> (dt, B, C) and
    ``delta = softplus(dt_proj(dt))`` (weight and bias); ``out_proj`` at the end.

    Extension point ``extra_states`` (None: nothing registered, the checkpoint layout is
    unchanged): a module called as ``extra_states(u_f, u_b)`` with the conv outputs of both
    directions (b, d_inner, L) that returns ``(A, B, C)``: A (2 * d_inner, n) real and negative,
    forward channels first; B and C (b, 2, n, L), group 0 forward, group 1 backward. They are
    appended to the mixer's own N states (N + n in one scan); A is diagonal, so the original
    states evolve as before and y gains sum_n C h over the new ones. Delta, D, the conv and the
    z gate are shared. MambaPEFT's Additional-scan (``adapters/addscan.py``) uses it.
    """

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2, dt_rank: int | None = None):
        super().__init__()
        self.d_model, self.d_state, self.d_conv = d_model, d_state, d_conv
        self.d_inner = expand * d_model
        self.dt_rank = dt_rank or math.ceil(d_model / 16)
        d_inner = self.d_inner
        # Parameters registered directly come first in state_dict(), as in the official file.
        self.A_log = nn.Parameter(torch.empty(d_inner, d_state))
        self.D = nn.Parameter(torch.empty(d_inner))
        self.A_b_log = nn.Parameter(torch.empty(d_inner, d_state))
        self.D_b = nn.Parameter(torch.empty(d_inner))
        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=False)
        self.conv1d = self._make_conv()
        self.x_proj = nn.Linear(d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, d_inner, bias=True)
        self.conv1d_b = self._make_conv()
        self.x_proj_b = nn.Linear(d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj_b = nn.Linear(self.dt_rank, d_inner, bias=True)
        self.out_proj = nn.Linear(d_inner, d_model, bias=False)
        self.extra_states: nn.Module | None = None  # see the class docstring; assigning a module registers it

    def _make_conv(self) -> nn.Conv1d:
        d = self.d_inner
        return nn.Conv1d(d, d, kernel_size=self.d_conv, groups=d, padding=self.d_conv - 1, bias=True)

    @torch.no_grad()
    def reset_ssm_parameters(self, dt_min: float = 1e-3, dt_max: float = 0.1, dt_floor: float = 1e-4) -> None:
        """Mamba's initialisation: A = -(1..N) (S4D-real), D = 1, dt_proj so that
        softplus(bias) is log-uniform in [dt_min, dt_max], weight uniform +-dt_rank^-0.5."""
        a = torch.arange(1, self.d_state + 1, dtype=torch.float32).log()
        for A_log, D, dt_proj in ((self.A_log, self.D, self.dt_proj), (self.A_b_log, self.D_b, self.dt_proj_b)):
            A_log.copy_(a.expand_as(A_log))
            D.fill_(1.0)
            bound = self.dt_rank**-0.5
            nn.init.uniform_(dt_proj.weight, -bound, bound)
            dt = torch.exp(torch.rand(self.d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
            dt = dt.clamp(min=dt_floor)
            dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus

    def _ssm_inputs(self, u: Tensor, x_proj: nn.Linear, dt_proj: nn.Linear) -> tuple[Tensor, Tensor, Tensor]:
        """u (b, E, L) -> delta (b, E, L) fp32, B and C (b, N, L)."""
        dt, B, C = x_proj(u.transpose(1, 2)).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = F.softplus(dt_proj(dt).float())
        return delta.transpose(1, 2), B.transpose(1, 2), C.transpose(1, 2)

    def forward(self, hidden: Tensor) -> Tensor:
        """hidden (b, L, d_model) -> (b, L, d_model)."""
        x, z = self.in_proj(hidden).chunk(2, dim=-1)
        x = x.transpose(1, 2)  # (b, E, L)
        u_f = causal_conv1d(x, self.conv1d.weight, self.conv1d.bias, activation="silu")
        u_b = causal_conv1d(x.flip(-1), self.conv1d_b.weight, self.conv1d_b.bias, activation="silu")
        delta_f, B_f, C_f = self._ssm_inputs(u_f, self.x_proj, self.dt_proj)
        delta_b, B_b, C_b = self._ssm_inputs(u_b, self.x_proj_b, self.dt_proj_b)
        # One scan for both directions: channels [forward | backward], B/C as two groups.
        A = -torch.exp(torch.cat([self.A_log, self.A_b_log]).float())
        B, C = torch.stack([B_f, B_b], dim=1), torch.stack([C_f, C_b], dim=1)
        if self.extra_states is not None:  # more state dimensions: appended after the N own ones
            A_x, B_x, C_x = self.extra_states(u_f, u_b)
            A = torch.cat([A, A_x.float()], dim=1)
            B, C = torch.cat([B, B_x.to(B.dtype)], dim=2), torch.cat([C, C_x.to(C.dtype)], dim=2)
        y = selective_scan(
            torch.cat([u_f, u_b], dim=1),
            torch.cat([delta_f, delta_b], dim=1),
            A,
            B,
            C,
            D=torch.cat([self.D, self.D_b]).float(),
        )
        y_f, y_b = y.chunk(2, dim=1)
        # Gating by silu(z) commutes with the flip, so gate once after averaging.
        y = (y_f + y_b.flip(-1)) / 2 * F.silu(z.transpose(1, 2).float())
        return self.out_proj(y.transpose(1, 2).to(hidden.dtype))


class VimBlock(nn.Module):
    """r + drop_path(mixer(norm(r))), residual stream in fp32."""

    def __init__(self, dim: int, mixer: BiMambaMixer, drop_path: float = 0.0):
        super().__init__()
        self.mixer = mixer
        self.norm = RMSNorm(dim)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, residual: Tensor) -> Tensor:
        return residual + self.drop_path(self.mixer(self.norm(residual))).float()


class VisionMamba(nn.Module):
    """Vim with a middle class token; ``forward`` returns logits from ``head``."""

    family = "vim"

    def __init__(self, config: VimConfig, num_classes: int, drop_path: float = 0.0):
        super().__init__()
        self.config = config
        self.num_classes = num_classes
        self.depth = config.depth
        self.embed_dim = self.num_features = config.embed_dim
        dim = config.embed_dim
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.patch_embed = PatchEmbed(config.img_size, config.patch_size, config.in_chans, dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches + 1, dim))
        self.head = self._make_head(num_classes)
        # Stochastic depth rising linearly from 0 to drop_path (plain floats: works on "meta").
        rates = [drop_path * i / max(config.depth - 1, 1) for i in range(config.depth)]
        self.layers = nn.ModuleList(
            VimBlock(dim, BiMambaMixer(dim, config.d_state, config.d_conv, config.expand, config.dt_rank), rate)
            for rate in rates
        )
        self.norm_f = RMSNorm(dim)
        self._init_weights()

    @property
    def cls_position(self) -> int:
        """Index of the class token in the sequence: the middle (98 of 197 for 14x14 patches)."""
        return self.patch_embed.num_patches // 2

    def _make_head(self, num_classes: int) -> nn.Module:
        if num_classes <= 0:
            return nn.Identity()
        head = nn.Linear(self.embed_dim, num_classes)
        trunc_normal_(head.weight, std=0.02)
        nn.init.zeros_(head.bias)
        return head

    @torch.no_grad()
    def _init_weights(self) -> None:
        trunc_normal_(self.pos_embed, std=0.02)
        trunc_normal_(self.cls_token, std=0.02)
        for layer in self.layers:
            layer.mixer.reset_ssm_parameters()
            # GPT-2 style: shrink the residual-branch output by 1/sqrt(depth).
            nn.init.kaiming_uniform_(layer.mixer.out_proj.weight, a=math.sqrt(5))
            layer.mixer.out_proj.weight /= math.sqrt(self.depth)

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        """A freshly initialised head for ``num_classes`` (on the model's device and dtype)."""
        ref = self.pos_embed
        self.num_classes = num_classes
        self.head = self._make_head(num_classes).to(device=ref.device, dtype=ref.dtype)

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token"}

    def forward_features(self, x: Tensor) -> Tensor:
        """Images (b, 3, H, W) -> the class token's features after ``norm_f``, (b, D)."""
        x = self.patch_embed(x)
        mid = self.cls_position
        cls = self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype)
        x = torch.cat([x[:, :mid], cls, x[:, mid:]], dim=1) + self.pos_embed
        residual = x.float()
        for layer in self.layers:
            residual = layer(residual)
        return self.norm_f(residual)[:, mid]

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.forward_features(x))


def resize_pos_embed(pos_embed: Tensor, new_grid: tuple[int, int]) -> Tensor:
    """Interpolate a middle-cls position embedding (1, P+1, D) to a new patch grid.

    The class token's entry sits at index P // 2: take it out, resample the square patch
    grid (bicubic, via timm), and put it back at the new middle, new_P // 2.
    """
    num_patches = pos_embed.shape[1] - 1
    side = math.isqrt(num_patches)
    if side * side != num_patches:
        raise ValueError(f"position embedding has {num_patches} patch entries, not a square grid")
    if (side, side) == tuple(new_grid):
        return pos_embed
    mid = num_patches // 2
    cls = pos_embed[:, mid : mid + 1]
    grid = torch.cat([pos_embed[:, :mid], pos_embed[:, mid + 1 :]], dim=1)
    grid = resample_abs_pos_embed(grid, new_size=list(new_grid), old_size=[side, side], num_prefix_tokens=0)
    new_mid = grid.shape[1] // 2
    return torch.cat([grid[:, :new_mid], cls, grid[:, new_mid:]], dim=1)


def build_vim(spec: BackboneSpec, num_classes: int, img_size: int, drop_path: float) -> VisionMamba:
    config = VimConfig(**{**spec.arch, "img_size": img_size})
    return VisionMamba(config, num_classes, drop_path)


def load_vim_checkpoint(model: VisionMamba, path: str | os.PathLike, target: str) -> None:
    """Load an official-layout Vim state dict (all keys but the head must match exactly)."""
    if sniff_format(path) == "npz":
        raise UserError(
            f"{path}: a Google .npz (ViT) checkpoint; {target} needs a Vision Mamba .pth such as "
            f"the official {VIM_SPECS['vim-s'].checkpoint_file}"
        )
    state = read_state_dict(path)
    family = guess_family(state)
    if family == "vit":
        raise wrong_family_error(path, family, target)
    state = {k: v for k, v in state.items() if not k.startswith("head.")}
    pos = state.get("pos_embed")
    if pos is not None and pos.dim() == 3 and pos.shape != model.pos_embed.shape and pos.shape[-1] == model.embed_dim:
        try:
            state["pos_embed"] = resize_pos_embed(pos, model.patch_embed.grid_size)
        except ValueError as err:
            raise UserError(f"{path}: pos_embed {list(pos.shape)}: {err}") from None
    check_keys(path, target, model.state_dict(), state)
    model.load_state_dict(state, strict=False)
