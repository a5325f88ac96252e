"""Any HF PEFT tuner on our backbones: ``--adapter peft --peft-config FILE.json``.

The JSON is a PEFT config (``{"peft_type": "LOHA", "r": 8, "target_modules": ["q", "v"], ...}``:
LoRA, LoHa, LoKr, OFT, BOFT, VeRA, FourierFT, IA3, ...). PEFT injects its layers into the model
in place (``peft.inject_adapter_in_model``), so training, counting and results go through the
same code as every other method. timm fuses q, k and v into one ``attn.qkv`` Linear; it is
first split into three Linears named ``q``, ``k`` and ``v`` (same weights, same output), so
``target_modules: ["q", "v"]`` means what a user expects. ``qkv``, ``proj``, ``fc1``, ``fc2``
(ViT) and ``in_proj``, ``x_proj``, ``dt_proj``, ``out_proj`` (Vim) name the other Linears.
PEFT is optional: it is imported only here (``pip install peft``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from vtab_lily.adapters.targets import model_blocks, model_family, set_submodule
from vtab_lily.errors import UserError


@dataclass
class PeftTunerConfig:
    """``config``: path of a PEFT config JSON; ``settings``: its contents (filled by ``resolve``,
    so the run's identity follows the file's contents, not its name)."""

    config: str | None = None
    settings: dict = field(default_factory=dict)

    def resolve(self, model: nn.Module) -> "PeftTunerConfig":
        model_family(model)
        settings = dict(self.settings)
        if self.config is not None:
            path = Path(self.config)
            try:
                settings = json.loads(path.read_text(encoding="utf-8"))
            except OSError as err:
                raise UserError(f"--peft-config {path}: cannot read it ({err.strerror or err})") from None
            except (UnicodeDecodeError, json.JSONDecodeError) as err:
                raise UserError(f"--peft-config {path}: not valid JSON ({err})") from None
        if self.config is None and not settings:
            raise UserError("--adapter peft needs the tuner's config: --peft-config FILE.json (a PEFT config with a "
                            "'peft_type', e.g. LORA, LOHA, LOKR, OFT, VERA, IA3)")
        if not isinstance(settings, dict) or not settings.get("peft_type"):
            raise UserError(f"peft adapter: the config must be a JSON object with a 'peft_type' "
                            f"(e.g. LORA, LOHA, LOKR, OFT, VERA, IA3), got {str(settings)[:80]!r}")
        build_peft_config(settings)  # validates now, before any work
        return replace(self, config=None, settings=settings)


def build_peft_config(settings: dict):
    try:
        import peft
    except ImportError:
        raise UserError("the peft adapter needs HF PEFT: pip install peft") from None
    try:
        return peft.get_peft_config(dict(settings))
    except (TypeError, ValueError, KeyError) as err:
        raise UserError(f"peft config {settings.get('peft_type')!r}: {err}") from None


class SplitQKV(nn.Module):
    """timm's fused qkv as three Linears ``q``, ``k``, ``v`` with the same weights and output."""

    def __init__(self, fused: nn.Linear) -> None:
        super().__init__()
        width = fused.out_features // 3
        for i, name in enumerate("qkv"):
            part = nn.Linear(fused.in_features, width, bias=fused.bias is not None,
                             device=fused.weight.device, dtype=fused.weight.dtype)
            with torch.no_grad():
                part.weight.copy_(fused.weight[i * width:(i + 1) * width])
                if fused.bias is not None:
                    part.bias.copy_(fused.bias[i * width:(i + 1) * width])
            setattr(self, name, part)
        self.in_features, self.out_features = fused.in_features, fused.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.q(x), self.k(x), self.v(x)], dim=-1)


def inject_peft(model: nn.Module, config: PeftTunerConfig) -> None:
    import peft

    peft_config = build_peft_config(config.settings)
    targets = peft_config.target_modules
    names = set(targets) if isinstance(targets, (list, set, tuple)) else set()
    if model_family(model) == "vit" and (names & {"q", "k", "v"} or isinstance(targets, str)):
        for i, block in enumerate(model_blocks(model)):
            set_submodule(model, f"blocks.{i}.attn.qkv", SplitQKV(block.attn.qkv))
    model.requires_grad_(False)
    try:
        try:
            peft.inject_adapter_in_model(peft_config, model, adapter_name="default")
        except ValueError as err:
            if "shared state" not in str(err):
                raise
            # VeRA-like tuners keep shared tensors on the tuner object: let PEFT build it, then keep
            # our model (injected in place; its layers hold references to the shared tensors).
            peft.get_peft_model(model, peft_config, adapter_name="default")
    except ValueError as err:  # e.g. target modules not found
        raise UserError(f"peft {peft_config.peft_type}: {err}") from None
    model.peft_trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    if not model.peft_trainable:
        raise UserError(f"peft {peft_config.peft_type}: the config adds no trainable parameter")


def unfreeze_peft(model: nn.Module, config: PeftTunerConfig) -> None:
    wanted = set(getattr(model, "peft_trainable", ()))
    for name, param in model.named_parameters():
        if name in wanted:
            param.requires_grad_(True)
