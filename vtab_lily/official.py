"""The official setups the harness reproduces by default, and what a run changes from them.

The recipe values come from the official Lily code (github.com/yibozhong/lily,
``visual-adaptation-benchmark/vit/main.py`` and ``vtab.py``; ``vim/main.py``): timm cosine
schedule stepped after each epoch, batch 64 with ``drop_last``, test every 10 epochs at batch
256, no input normalisation, the in21k npz's frozen ``pre_logits`` kept; float32 compute whose
matmul/convolution precision depends on the family's torch and the device
(:func:`official_precision`). The adapter's official settings come from ``vtab_lily.adapters``
(``adapter_deviations`` or ``official_adapter_settings``, when that module provides them).

:func:`deviations` lists every setting of a resolved run config that differs from the official
setup of its backbone family and adapter, as ``key=value`` strings (empty: the official setup);
:func:`method_label` puts them after the adapter's core settings. The demo suite is compared
with its own short recipe (``DEMO``) and adapter settings (``DEMO_ADAPTER``), so a plain
``--demo`` run has no deviations either.
"""

from __future__ import annotations

import math
from typing import Any

from . import options
from .data import pretext
from .options import COMPILE_MODES, PRECISIONS, TF32_PRECISIONS  # noqa: F401 - declared with the options
from .methods import NO_OFFICIAL_SETUP  # noqa: F401 - re-exported (the runner reads it here)

# The VTAB-1K recipe per backbone family: AdamW, cosine with linear warmup from warmup_lr to lr,
# then down to min_lr.
RECIPES = {
    "vit": {"lr": 1e-3, "wd": 1e-4, "warmup": 10, "drop_path": 0.1},
    "vim": {"lr": 1.25e-3, "wd": 1e-3, "warmup": 5, "drop_path": 0.05},
}
# Swin: no official Lily (or Lily-repository baseline) setup exists for Swin, so the harness's
# choice is the ViT recipe above, unchanged (lr, weight decay, warmup, drop_path, and the COMMON
# settings below); only the input normalisation follows the backbone's pre-training (its spec's
# recipe_norm). A documented choice, not a reproduction: docs/backbones.md says so.
# Families whose recipe is another family's: the one declaration of that choice (RECIPES and
# OFFICIAL_TF32 below take the lender's entries; messages say where a default comes from).
BORROWED_RECIPE = {"swin": "vit"}
RECIPES.update({family: RECIPES[lender] for family, lender in BORROWED_RECIPE.items()})
WARMUP_LR, MIN_LR = 1e-6, 1e-5
# Settings shared by both families' official code.
COMMON = {"epochs": 100, "batch_size": 64, "accum_steps": 1, "img_size": 224, "eval_every": 10,
          "lr_schedule": "official", "drop_last": True, "eval_batch_size": 256, "precision": "fp32",  # on a CPU
          "normalize": False, "eval_limit": None, "compile": False, "warmup_lr": WARMUP_LR, "min_lr": MIN_LR}
# --demo: the generated demo suite and tiny random-init backbones, a schedule short enough for
# all demo tasks to finish on 2 CPU cores in a few minutes. The frozen tiny backbones are random,
# so the adapters need a higher lr, and no warmup epoch.
DEMO = {"data_root": "data/vtab-demo", "img_size": 32, "epochs": 10, "warmup": 0, "eval_every": 5,
        "batch_size": 64, "checkpoint": "none", "lr": 1e-2, "drop_path": 0.0, "threads": 1}
# --demo: the backbone weights per demo backbone, where not random ("none"). The tiny ViT starts from weights
# pre-trained on generated textures (made on first use, vtab_lily/backbones/demo_weights.py): on a
# frozen random backbone the linear probe and AdaptFormer stayed at chance on ``orientation``.
# Only vit-tiny-test: the other tiny configs (DINOv2, CLIP, MAE, Swin, Vim) are other architectures.
DEMO_CHECKPOINT = {"vit-tiny-test": f"backbones/{pretext.WEIGHTS_FILE}"}
# --demo: the demo's own settings of some methods, per (family, adapter), used where the user sets
# none (measured in docs/demo.md). Keys in RECIPE_KEYS replace DEMO's recipe for that method and,
# like DEMO's, are the demo's reference (no deviation, not in the label); the other keys are
# adapter options, which the label shows (``s=0.1``) and the demo compares with.
# - Lily on ViT at s=1 (the official default; the paper searches s in {0.01, 0.1, 1, 10, 100})
#   collapses on the random tiny backbone: its mlp adapter adds straight to a residual stream of
#   norm ~1 (a pretrained ViT-B's is far larger), so at the demo's lr it swamps the features within
#   an epoch and the model sits at chance. s=0.1 keeps it learning.
# - Full fine-tuning at the demo's lr 1e-2 diverges to chance on three of the four tasks; at the
#   official ViT lr 1e-3 it needs 30 epochs to learn ``orientation``.
DEMO_ADAPTER = {
    ("vit", "lily"): {"scale": 0.1},
    ("vit", "full"): {"lr": 1e-3, "epochs": 30},
}
# Whether the published checkpoint of a backbone carries the frozen pre_logits Linear+tanh
# (timm 0.4.12 keeps it): used when the file cannot be inspected (a dry run without weights).
PRE_LOGITS_PUBLISHED = {"vit-b16-in21k": True, "vit-l16-in21k": True}

# What each family's official code ran in on a GPU with TF32, without autocast in either: the ViT
# code pins torch 1.10.0 (visual-adaptation-benchmark/vit/requirements.txt), whose CUDA matmuls
# and cuDNN convolutions defaulted to TF32 on Ampere and newer; the Vim code installs torch 2.1.1
# (hustvl/Vim README) and trains with --no_amp, and from torch 1.12 on matmuls default to full
# fp32 while cuDNN convolutions (Vim's patch embedding) stay TF32. (PRECISIONS, the names, are
# declared with --precision in ``options``.)
OFFICIAL_TF32 = {"vit": "tf32", "vim": "tf32-conv"}
OFFICIAL_TF32.update({family: OFFICIAL_TF32[lender] for family, lender in BORROWED_RECIPE.items()})

# The recipe deviations, in label order (the adapter's come first, then these): the options
# declared with the recipe and setup roles, in their declaration order.
RECIPE_KEYS = options.names("recipe", "setup")


def official_recipe(family: str, demo: bool = False, adapter: str | None = None) -> dict:
    """The official recipe of a backbone family; no machine keys. With ``demo``: the demo recipe,
    and with ``adapter`` too, that method's demo recipe (``DEMO_ADAPTER``'s recipe keys)."""
    recipe = {**COMMON, **RECIPES[family]}
    if demo:
        recipe.update({k: v for k, v in DEMO.items() if k in recipe})
        recipe.update(demo_recipe(family, adapter))
    return recipe


def demo_local(backbone: str) -> dict:
    """The demo's machine-local defaults for a demo backbone (``DEMO`` with its weights file)."""
    return {**DEMO, "checkpoint": DEMO_CHECKPOINT.get(backbone, DEMO["checkpoint"])}


def demo_recipe(family: str, adapter: str | None) -> dict:
    """The recipe keys of ``DEMO_ADAPTER`` for a method (they replace ``DEMO``'s)."""
    return {k: v for k, v in DEMO_ADAPTER.get((family, adapter), {}).items() if k in RECIPE_KEYS}


def demo_adapter_options(family: str, adapter: str) -> dict:
    """The adapter options of ``DEMO_ADAPTER`` for a method (the label shows them)."""
    return {k: v for k, v in DEMO_ADAPTER.get((family, adapter), {}).items() if k not in RECIPE_KEYS}


def official_precision(family: str, tf32_device: bool) -> str:
    """The precision the family's official code ran in on this kind of device: ``fp32`` on a CPU
    or a GPU without TF32 (whatever the torch, nothing else is possible there), else
    :data:`OFFICIAL_TF32`."""
    return OFFICIAL_TF32[family] if tf32_device else "fp32"


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value + 0.0:g}"  # + 0.0: -0.0 reads 0, not -0
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return str(value)


def recipe_deviations(config: dict, family: str, official_pre_logits: bool, official_prec: str = "fp32",
                      official_normalize: bool | str = False) -> list[str]:
    """``key=value`` for every recipe setting of ``config`` that differs from the official one
    (``official_prec``: :func:`official_precision` for the run's device; ``official_normalize``:
    the backbone's recipe normalisation, ``runconfig.official_normalize``: none for Google's ViT
    and Vim, as the official code; a backbone's pre-training mean/std for DINOv2, CLIP, MAE)."""
    official = official_recipe(family, demo=config.get("suite") == "demo", adapter=config.get("adapter"))
    official["pre_logits"], official["precision"] = official_pre_logits, official_prec
    official["normalize"] = official_normalize
    out = []
    for key in RECIPE_KEYS:
        if key not in config:
            continue
        value, ref = config[key], official.get(key)
        if isinstance(value, float) and isinstance(ref, (int, float)) and math.isclose(value, ref, rel_tol=1e-9):
            continue
        if value == ref:
            continue
        if key == "normalize":  # by name: normalize=none / imagenet / clip
            out.append(f"normalize={options.norm_name(value)}")
        else:
            out.append(f"{key}={_show(value)}")
    return out


def adapter_deviations(family: str, adapter: str, adapter_config: dict) -> list[str]:
    """The adapter's settings that differ from its official ones, from ``vtab_lily.adapters``.

    Uses ``adapters.adapter_deviations`` when present, else compares with
    ``adapters.official_adapter_settings(family, adapter)``; an adapters module with neither
    reports nothing (it cannot say what is official).
    """
    from . import adapters

    own = getattr(adapters, "adapter_deviations", None)
    if own is not None:
        try:
            return [str(d) for d in own(family, adapter, adapter_config)]
        except TypeError:  # another signature: fall back to the contract's settings dict
            pass
    settings = getattr(adapters, "official_adapter_settings", None)
    if settings is None:
        return []
    official = _flat(settings(family, adapter) or {})
    ours = _flat(adapter_config)
    return [f"{key}={_show(ours.get(key))}" for key, ref in official.items() if key in ours and ours[key] != ref]


def _flat(settings: dict, prefix: str = "") -> dict:
    """``{"per_target": {"dt_proj": {"rank": 4}}}`` -> ``{"per_target.dt_proj.rank": 4}``; tuples as lists."""
    out = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
    return out


def deviations(config: dict, family: str, official_pre_logits: bool, official_prec: str = "fp32",
               official_normalize: bool | str = False) -> list[str]:
    """Adapter deviations first, then the recipe's (see the module docstring)."""
    adapter_config = dict(config.get("adapter_config") or {})
    if config.get("suite") == "demo":  # the demo's own adapter settings are its reference, as its recipe
        for key, value in demo_adapter_options(family, config["adapter"]).items():
            if key in adapter_config and _show(adapter_config[key]) == _show(value):
                del adapter_config[key]  # keys left out are not compared
    return (adapter_deviations(family, config["adapter"], adapter_config)
            + recipe_deviations(config, family, official_pre_logits, official_prec, official_normalize))


# Adapter settings the core label shows, with their short names; the rest appear only as deviations.
_SHORT = {"rank": "r", "scale": "s"}
_NOT_CORE = ("routing", "router", "dropout", "dropout_position", "variant", "placement", "per_target")


def core_label(adapter: str, adapter_config: dict) -> tuple[str, set[str]]:
    """(``lily r=32 ne=4 s=1 k,v,mlp``, the adapter keys it shows)."""
    cfg = dict(adapter_config)
    if cfg.get("ne_a") is not None and cfg.get("ne_a") == cfg.get("ne_b"):
        cfg["ne"] = cfg.pop("ne_a")
        cfg.pop("ne_b")
    parts, shown = [adapter], set()
    for key, value in cfg.items():
        if key == "settings" and isinstance(value, dict):  # a PEFT config file's contents: they are the method
            parts += [f"{k}={_show(v)}" for k, v in value.items() if v is not None and not isinstance(v, dict)]
            shown.add(key)
            continue
        if value is None or isinstance(value, dict) or key in _NOT_CORE:
            continue
        shown.add(key)
        if isinstance(value, (list, tuple)):
            parts.append(",".join(map(str, value)))
        else:
            parts.append(f"{_SHORT.get(key, key)}={_show(value)}")
    if "ne" in shown:
        shown |= {"ne_a", "ne_b"}
    parts += _per_target_parts(adapter_config)
    return " ".join(parts), shown


def _per_target_settings(adapter_config: dict) -> dict[str, dict]:
    """{target: {key: value}} for the per-target settings that differ from the adapter-wide ones."""
    per_target = adapter_config.get("per_target")
    if not isinstance(per_target, dict):
        return {}
    out = {}
    for target, plan in per_target.items():
        if isinstance(plan, dict):
            diff = {k: v for k, v in plan.items() if adapter_config.get(k) != v}
            if diff:
                out[target] = diff
    return out


def _per_target_parts(adapter_config: dict) -> list[str]:
    """``dt_proj:r=4,ne_b=1`` for each target whose settings differ from the adapter-wide ones."""
    return [f"{target}:{','.join(f'{_SHORT.get(k, k)}={_show(v)}' for k, v in diff.items())}"
            for target, diff in _per_target_settings(adapter_config).items()]


def method_label(adapter: str, adapter_config: dict, deviation_list: list[str] = (), precision: str = "fp32") -> str:
    """The adapter's core settings then the deviations not already shown, e.g.
    ``lily r=32 ne=4 s=1 k,v,mlp routing=sample precision=bf16``. A ``precision`` other than
    fp32 is shown even where it is the official one (``precision=tf32`` on a GPU), so labels say
    it and fp32 labels (every CPU run) read as before."""
    core, shown = core_label(adapter, adapter_config)
    # per-target settings the core label shows (``q:alpha=4``) are not repeated as ``q.alpha=4``
    shown_per_target = {f"{t}.{k}={_show(v)}" for t, diff in _per_target_settings(adapter_config).items()
                        for k, v in diff.items()}
    extra = [d for d in deviation_list if d.split("=", 1)[0] not in shown and not d.startswith("per_target.")
             and d not in shown_per_target]
    if precision != "fp32" and not any(d.startswith("precision=") for d in extra):
        extra.append(f"precision={precision}")
    return " ".join([core, *extra])


def run_label(config: dict, devs: list[str]) -> str:
    """The method label of a resolved config: its ``--method-name``, else the adapter's settings,
    the deviations and a precision other than fp32."""
    return config["method_name"] or method_label(config["adapter"], config["adapter_config"], devs,
                                                 config["precision"])
