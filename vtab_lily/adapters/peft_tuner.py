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

import dataclasses
import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vtab_lily.adapters.checks import ADAPTER_INT_LIMIT
from vtab_lily.adapters.targets import VIT_LIKE, block_paths, model_blocks, model_family, set_submodule
from vtab_lily.errors import UserError

# Tuners that do not inject into a backbone's layers: virtual tokens for a language model's input
# (PEFT's prompt-learning configs are recognised by class), LLaMA attention prompts, LoRA mixtures
# that need a language model's config.
NOT_INJECTED = {"ADAPTION_PROMPT": "adds prompts to a LLaMA attention layer",
                "XLORA": "mixes LoRA adapters with a classifier that needs a language model's config"}
# integer fields that are seeds or keys, not sizes: any value is fine
_NOT_SIZES = ("seed", "prng", "key")
# fields PEFT annotates ``int`` that are scalings, not shapes (``lora_alpha``: 16.0 and 0.5 work)
_SCALINGS = ("alpha", "lambda", "scale")


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
                settings = json.loads(path.read_text(encoding="utf-8"), parse_constant=_no_constant)
            except OSError as err:
                raise UserError(f"--peft-config {path}: cannot read it ({err.strerror or err})") from None
            except (UnicodeDecodeError, ValueError, RecursionError) as err:  # JSONDecodeError, NaN, [[[[...
                raise UserError(f"--peft-config {path}: not valid JSON ({err})") from None
        if self.config is None and not settings:
            raise UserError("--adapter peft needs the tuner's config: --peft-config FILE.json (a PEFT config with a "
                            "'peft_type', e.g. LORA, LOHA, LOKR, OFT, VERA, IA3)")
        if not isinstance(settings, dict) or not settings.get("peft_type"):
            raise UserError(f"peft adapter: the config must be a JSON object with a 'peft_type' "
                            f"(e.g. LORA, LOHA, LOKR, OFT, VERA, IA3), got {str(settings)[:80]!r}")
        build_peft_config(settings)  # validates now, before any work
        return replace(self, config=None, settings=settings)


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number (JSON has no NaN or Infinity)")


def _peft_config_class(settings: dict) -> type:
    """PEFT's config class for ``settings["peft_type"]``, or a UserError naming what is supported."""
    import peft
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    name = settings.get("peft_type")
    classes = {str(getattr(k, "value", k)): v for k, v in PEFT_TYPE_TO_CONFIG_MAPPING.items()}
    supported = sorted(k for k, v in classes.items()
                       if k not in NOT_INJECTED and not issubclass(v, peft.PromptLearningConfig))
    if not isinstance(name, str) or name not in classes:
        raise UserError(f"peft config: unknown peft_type {name!r}; --adapter peft takes {', '.join(supported)}")
    if issubclass(classes[name], peft.PromptLearningConfig) or name in NOT_INJECTED:
        why = NOT_INJECTED.get(name, "is prompt learning: virtual tokens added to a language model's input")
        raise UserError(f"peft config: peft_type {name} {why}, not layers of a vision backbone; --adapter peft "
                        f"takes the tuners that inject into layers: {', '.join(supported)}")
    return classes[name]


def _field_kind(annotation: Any) -> tuple[str | None, bool]:
    """(``int``|``float``|``bool``|None, None allowed) from a dataclass field's annotation text."""
    text = str(annotation).replace(" ", "")
    for kind in ("int", "float", "bool"):
        if text == kind:
            return kind, False
        if text in (f"Optional[{kind}]", f"{kind}|None", f"None|{kind}"):
            return kind, True
    return None, True


def _check_numbers(value: Any, where: str, size: bool) -> None:
    """No NaN/Infinity anywhere; a size (an int that is not a seed or key) within the --rank bound."""
    if isinstance(value, bool):
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise UserError(f"{where} must be a finite number, got {value}")
    if isinstance(value, int) and size and abs(value) > ADAPTER_INT_LIMIT:
        raise UserError(f"{where} must be <= {ADAPTER_INT_LIMIT:,} (the bound --rank has), got {value:,}")
    if isinstance(value, dict):
        for key, item in value.items():
            _check_numbers(item, f"{where}.{key}", size)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _check_numbers(item, where, size)


def check_peft_settings(settings: dict) -> None:
    """The config file's values, checked as the CLI checks its own options, before PEFT sees
    them: the tuner is one that injects into layers, typed fields have their type (``"r": "4"``,
    ``4.5`` or ``true`` are not a rank), no number is NaN or infinite, sizes are bounded."""
    config_class = _peft_config_class(settings)
    kinds = {f.name: _field_kind(f.type) for f in dataclasses.fields(config_class)}
    name = settings["peft_type"]
    for key, value in settings.items():
        where = f"peft config {name}: {key}"
        kind, nullable = kinds.get(key, (None, True))
        if kind == "int" and any(part in key for part in _SCALINGS):
            kind = "float"
        if value is None and nullable:
            continue
        wrong = {"int": isinstance(value, bool) or not isinstance(value, int),
                 "float": isinstance(value, bool) or not isinstance(value, (int, float)),
                 "bool": not isinstance(value, bool)}.get(kind, False)
        if wrong:
            article = "an integer" if kind == "int" else "a number" if kind == "float" else "true or false"
            raise UserError(f"{where} must be {article}, got {json.dumps(value)[:40]}")
        _check_numbers(value, where, size=not any(part in key for part in _NOT_SIZES))
    rank = settings.get("r")
    if "r" in kinds and isinstance(rank, int) and rank < 1:
        raise UserError(f"peft config {name}: r must be an integer >= 1, got {rank}")


def build_peft_config(settings: dict):
    try:
        import peft
    except ImportError:
        raise UserError("the peft adapter needs HF PEFT: pip install peft") from None
    check_peft_settings(settings)
    try:
        return peft.get_peft_config(dict(settings))
    except (TypeError, ValueError, KeyError, AttributeError) as err:
        raise UserError(f"peft config {settings.get('peft_type')}: {err}") from None


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
    if model_family(model) in VIT_LIKE and (names & {"q", "k", "v"} or isinstance(targets, str)):
        for path, block in zip(block_paths(model), model_blocks(model)):
            set_submodule(model, f"{path}.attn.qkv", SplitQKV(block.attn.qkv))
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
        raise UserError(f"peft {_type_name(peft_config)}: {err}") from None
    except (TypeError, AttributeError, KeyError, NotImplementedError) as err:  # a tuner PEFT cannot put here
        raise UserError(f"peft {_type_name(peft_config)}: cannot be applied to this backbone "
                        f"({err.__class__.__name__}: {err})") from None
    model.peft_trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    if not model.peft_trainable:
        raise UserError(f"peft {_type_name(peft_config)}: the config adds no trainable parameter")


def _type_name(peft_config: Any) -> str:
    """``LORA``, not ``PeftType.LORA``."""
    return str(getattr(peft_config.peft_type, "value", peft_config.peft_type))


def unfreeze_peft(model: nn.Module, config: PeftTunerConfig) -> None:
    wanted = set(getattr(model, "peft_trainable", ()))
    for name, param in model.named_parameters():
        if name in wanted:
            param.requires_grad_(True)
