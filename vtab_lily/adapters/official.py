"""The official setup of each adapter per backbone family, and how a resolved config differs.

``official_adapter_settings(family, adapter)`` is what ``dataclasses.asdict(cfg.resolve(model))``
yields with every option at its default on the family's paper backbone (ViT: vit-b16-in21k,
Vim: vim-s): the defaults *are* the official setups (see README.md beside this file).
``adapter_deviations`` lists the settings of a resolved config that differ from it, as
``key=value`` strings (``routing=sample``, ``rank=16``, ``dt_proj.rank=8``).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
from typing import Any

from torch import nn

from vtab_lily.adapters.registry import ADAPTERS, make_config
from vtab_lily.errors import UserError, unknown_name
from vtab_lily.methods import NO_OFFICIAL_SETUP

# Swin has no paper setup of its own: its adapters default to their ViT settings, resolved on Swin-B.
PAPER_BACKBONE = {"vit": "vit-b16-in21k", "vim": "vim-s", "swin": "swin-b-in22k"}


def official_adapter_settings(family: str, adapter: str, model: nn.Module | None = None) -> dict[str, Any]:
    """The resolved official settings of ``adapter`` on ``family`` ("vit", "vim" or "swin").

    With ``model``, the defaults are resolved against that model instead of the paper backbone
    (settings that follow the depth, such as Vim's ne_a, then match a smaller test backbone).
    """
    if family not in PAPER_BACKBONE:
        raise unknown_name("backbone family", family, PAPER_BACKBONE)
    if adapter not in ADAPTERS:
        raise unknown_name("adapter", adapter, ADAPTERS)
    settings = dataclasses.asdict(make_config(adapter).resolve(model or _paper_backbone(family)))
    return copy.deepcopy(settings)


@functools.lru_cache(maxsize=None)
def _paper_backbone(family: str) -> nn.Module:
    import torch

    from vtab_lily.backbones import create_backbone

    with torch.device("meta"):  # shapes only: no memory; resolving reads the structure only
        return create_backbone(PAPER_BACKBONE[family], 10)


def adapter_deviations(family: str, adapter: str, resolved: dict[str, Any],
                       model: nn.Module | None = None) -> list[str]:
    """``key=value`` for every setting of ``resolved`` (a resolved config as a dict, tuples or
    lists alike) that differs from the official one; [] for the official setup.

    ``per_target`` entries are reported as ``target.key=value`` only where they do not simply
    follow the top-level value (a changed ``rank`` is reported once, as ``rank=...``). Keys
    missing from ``resolved`` (configs written before they existed) are not compared.
    """
    if not isinstance(resolved, dict):
        raise UserError(f"adapter_deviations: resolved settings must be a dict, got {type(resolved).__name__}")
    if adapter in NO_OFFICIAL_SETUP:
        return []
    official = official_adapter_settings(family, adapter, model)
    out = []
    for key, value in resolved.items():
        if key == "per_target" or (key in official and _same(value, official[key])):
            continue
        out.append(f"{key}={_show(value)}")
    official_targets = official.get("per_target") or {}
    for target, plan in (resolved.get("per_target") or {}).items():
        preset = official_targets.get(target, {})
        for key, value in plan.items():
            # A per-target value that the official setup sets apart from its top-level value
            # (Vim's dt_proj rank 4) is expected as is; any other follows the run's top level.
            if key in preset and not _same(preset[key], official.get(key)):
                expected = preset[key]
            else:
                expected = resolved.get(key, official.get(key))
            if not _same(value, expected):
                out.append(f"{target}.{key}={_show(value)}")
    return out


def _normal(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_normal(v) for v in value]
    if isinstance(value, dict):
        return {k: _normal(v) for k, v in value.items()}
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _same(a: Any, b: Any) -> bool:
    return _normal(a) == _normal(b)


def _show(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value + 0.0:g}"  # + 0.0: -0.0 reads 0, not -0
    if isinstance(value, (list, tuple)):
        return ",".join(_show(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    return str(value)
