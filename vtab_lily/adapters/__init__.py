"""Parameter-efficient adapters for the backbones: Lily, LoRA, AdaptFormer, linear probe, full.

``apply_adapter(model, name, **config)`` freezes the backbone, injects the adapter by target
names and leaves the adapter and the classification head (``model.get_classifier()``)
trainable. ``count_parameters`` counts trainable parameters (shared tensors once). Defaults
are the official setups; ``official_adapter_settings`` returns them and ``adapter_deviations``
lists how a resolved config differs. See README.md beside this file for the variants and the
parameter formulas.
"""

from __future__ import annotations

from vtab_lily.adapters.adaptformer import AdaptFormerConfig
from vtab_lily.adapters.lily import LilyConfig, balanced_groups, lily_router_weights, reset_router_weights, set_lily_naive
from vtab_lily.adapters.lora import LoraConfig, merge_lora, unmerge_lora
from vtab_lily.adapters.official import adapter_deviations, official_adapter_settings
from vtab_lily.adapters.peft_interop import export_peft, load_peft
from vtab_lily.adapters.registry import (
    ADAPTERS,
    UNRECORDED_DEFAULT,
    FullConfig,
    LinearConfig,
    adapter_modules,
    apply_adapter,
    classifier,
    count_parameters,
    make_config,
    recorded_config,
)
from vtab_lily.adapters.repadapter import merge_repadapter
from vtab_lily.adapters.ssf import merge_ssf
from vtab_lily.adapters.targets import TARGETS, model_family

__all__ = [
    "ADAPTERS", "TARGETS", "AdaptFormerConfig", "FullConfig", "LilyConfig", "LinearConfig", "LoraConfig",
    "adapter_deviations", "apply_adapter", "balanced_groups", "count_parameters", "export_peft", "lily_router_weights", "load_peft",
    "make_config", "merge_lora", "merge_repadapter", "merge_ssf", "model_family", "official_adapter_settings",
    "recorded_config", "reset_router_weights", "set_lily_naive", "unmerge_lora",
]
