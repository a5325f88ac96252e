"""The adapter registry and how an adapter is applied: config classes by name, ``make_config``,
``apply_adapter``, ``recorded_config`` and ``count_parameters``.

``vtab_lily.adapters`` re-exports all of it. It lives in its own module so that the modules that
need the registry (``official.py``: the official settings; ``peft_interop.py``: loading a saved
adapter) import it from below instead of from the package that imports them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

from torch import nn

from vtab_lily.adapters.adaptformer import AdaptFormerConfig, inject_adaptformer
from vtab_lily.adapters.lily import LilyConfig, inject_lily
from vtab_lily.adapters.addscan import AdditionalScanConfig, inject_additional_scan
from vtab_lily.adapters.affix import AffixConfig, inject_affix
from vtab_lily.adapters.bottleneck import (
    ConvpassConfig,
    HoulsbyConfig,
    PfeifferConfig,
    inject_convpass,
    inject_serial,
)
from vtab_lily.adapters.dora import DoraConfig, inject_dora
from vtab_lily.adapters.fact import FactTKConfig, FactTTConfig, inject_fact
from vtab_lily.adapters.lora import LoraConfig, inject_lora
from vtab_lily.adapters.partial import (
    BitFitConfig,
    LNTuneConfig,
    VimPartialConfig,
    unfreeze_biases,
    unfreeze_norms,
    unfreeze_vim_parts,
)
from vtab_lily.adapters.pertask import for_task
from vtab_lily.adapters.peft_tuner import PeftTunerConfig, inject_peft, unfreeze_peft
from vtab_lily.adapters.repadapter import RepAdapterConfig, inject_repadapter
from vtab_lily.adapters.ssf import SSFConfig, inject_ssf
from vtab_lily.adapters.support import check_supported
from vtab_lily.adapters.vpt import VPTConfig, VPTShallowConfig, inject_vpt
from vtab_lily.adapters.wrappers import AdapterModule
from vtab_lily import options
from vtab_lily.errors import UserError, suggest, unknown_name
from vtab_lily.options import check_settings


@dataclass
class LinearConfig:
    """Linear probing: only the classification head trains."""

    def resolve(self, model: nn.Module) -> "LinearConfig":
        return self


@dataclass
class FullConfig:
    """Full fine-tuning: every parameter trains."""

    def resolve(self, model: nn.Module) -> "FullConfig":
        return self


ADAPTERS: dict[str, type] = {
    "lily": LilyConfig,
    "lora": LoraConfig,
    "adaptformer": AdaptFormerConfig,
    "linear": LinearConfig,
    "full": FullConfig,
    "bitfit": BitFitConfig,
    "ln-tune": LNTuneConfig,
    "ssf": SSFConfig,
    "vpt-deep": VPTConfig,
    "vpt-shallow": VPTShallowConfig,
    "dora": DoraConfig,
    "repadapter": RepAdapterConfig,
    "houlsby": HoulsbyConfig,
    "pfeiffer": PfeifferConfig,
    "convpass": ConvpassConfig,
    "fact-tt": FactTTConfig,
    "fact-tk": FactTKConfig,
    "peft": PeftTunerConfig,
    "vim-partial": VimPartialConfig,
    "affix": AffixConfig,
    "additional-scan": AdditionalScanConfig,
}

_INJECT: dict[str, Callable[[nn.Module, Any], None]] = {
    "lily": inject_lily,
    "lora": inject_lora,
    "adaptformer": inject_adaptformer,
    "ssf": inject_ssf,
    "vpt-deep": inject_vpt,
    "vpt-shallow": inject_vpt,
    "dora": inject_dora,
    "repadapter": inject_repadapter,
    "houlsby": inject_serial,
    "pfeiffer": inject_serial,
    "convpass": inject_convpass,
    "fact-tt": inject_fact,
    "fact-tk": inject_fact,
    "peft": inject_peft,
    "affix": inject_affix,
    "additional-scan": inject_additional_scan,
}

# Methods that train some of the backbone's own tensors (after everything else is frozen).
_UNFREEZE: dict[str, Callable[[nn.Module, Any], None]] = {
    "bitfit": unfreeze_biases,
    "ln-tune": unfreeze_norms,
    "peft": unfreeze_peft,
    "vim-partial": unfreeze_vim_parts,
}


def make_config(name: str, **config: Any) -> Any:
    """The (unresolved) config dataclass for adapter ``name``; UserError on unknown names/options."""
    if name not in ADAPTERS:
        raise unknown_name("adapter", name, ADAPTERS)
    cls = ADAPTERS[name]
    fields = [f.name for f in dataclasses.fields(cls)]
    for key in config:
        if key not in fields:
            options = ", ".join(fields) if fields else "none"
            raise UserError(f"adapter {name!r} has no option {key!r}{suggest(key, fields)}; options: {options}")
    if isinstance(config.get("targets"), str):
        config["targets"] = tuple(t for t in config["targets"].replace(" ", "").split(",") if t)
    made = cls(**config)
    check_settings(made, name)  # the bounds its fields declare (options.setting)
    return made


# A field with this metadata key (``options.setting(unrecorded_default=True)``) is left out of
# ``recorded_config`` while it holds its default: an option added after runs were recorded keeps
# their config hashes, run folders and labels.
UNRECORDED_DEFAULT = options.UNRECORDED_DEFAULT


def recorded_config(config: Any) -> dict[str, Any]:
    """A resolved adapter config as a run records it (``dataclasses.asdict``, less the
    ``UNRECORDED_DEFAULT`` fields that hold their default)."""
    out = dataclasses.asdict(config)
    for field in dataclasses.fields(config):
        if field.metadata.get(UNRECORDED_DEFAULT) and out.get(field.name) == field.default:
            out.pop(field.name)
    return out


def apply_adapter(model: nn.Module, name: str, task: str | None = None, **config: Any) -> nn.Module:
    """Freeze ``model``, inject adapter ``name`` with ``config``; adapter + head stay trainable.

    The resolved config (every default filled in) is kept as ``model.adapter_config`` (a
    dataclass) and the name as ``model.adapter_name``. Settings left at ``paper`` are filled in
    for ``task`` from the method's per-task table (``pertask``); what was used is kept as
    ``model.adapter_task_settings`` ({} when nothing is per task). Returns the same model object.
    """
    if getattr(model, "adapter_name", None) is not None:
        raise UserError(f"model already has adapter {model.adapter_name!r}; build a fresh backbone")
    if name in ADAPTERS:  # an unknown name is make_config's error (with a did-you-mean)
        check_supported(model, name, list(ADAPTERS))
    cfg = make_config(name, **config).resolve(model)
    concrete, task_settings = for_task(cfg, task)
    if name in _INJECT:
        _INJECT[name](model, concrete)
        _match_backbone_placement(model)
        model.train(model.training)  # new modules start in training mode; follow the model's (dropout)
    model.requires_grad_(name == "full")
    for module in adapter_modules(model):
        module.requires_grad_(True)
    if name in _UNFREEZE:
        _UNFREEZE[name](model, concrete)
    classifier(model).requires_grad_(True)
    model.adapter_name = name
    model.adapter_config = cfg
    model.adapter_task_settings = task_settings
    return model


def _match_backbone_placement(model: nn.Module) -> None:
    """Put new adapter parameters on the backbone's device and floating dtype."""
    reference = next((p for p in model.parameters() if p.is_floating_point()), None)
    if reference is None:
        return
    for module in adapter_modules(model):
        module.to(device=reference.device, dtype=reference.dtype)
        for name, buffer in module.named_buffers(recurse=False):
            setattr(module, name, buffer.float())  # router-weight records stay float32


def classifier(model: nn.Module) -> nn.Module:
    if not hasattr(model, "get_classifier"):
        raise UserError(f"{type(model).__name__} has no get_classifier(); cannot find the head")
    return model.get_classifier()


def adapter_modules(model: nn.Module) -> list[AdapterModule]:
    """Top-level adapter modules (their parameters are the adapter parameters)."""
    return [m for m in model.modules() if isinstance(m, AdapterModule)]


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Trainable parameter counts ``{"adapter", "head", "total"}`` plus ``"backbone"``.

    ``adapter`` is every trainable parameter outside the head, as papers print it: the added
    modules, and the backbone tensors a method trains itself (BitFit's biases, full fine-tuning).
    Shared tensors count once (identity). ``backbone`` is every parameter, trainable or not,
    that is not in an added module nor the head (85,798,656 for ViT-B/16).
    """
    adapter_ids = {id(p) for m in adapter_modules(model) for p in m.parameters()}
    head_ids = {id(p) for p in classifier(model).parameters()}
    params = {id(p): p for p in model.parameters()}  # parameters() already dedupes
    trainable = {i: p for i, p in params.items() if p.requires_grad}
    return {
        "adapter": sum(p.numel() for i, p in trainable.items() if i not in head_ids),
        "head": sum(p.numel() for i, p in trainable.items() if i in head_ids),
        "total": sum(p.numel() for p in trainable.values()),
        "backbone": sum(p.numel() for i, p in params.items() if i not in adapter_ids and i not in head_ids),
    }
