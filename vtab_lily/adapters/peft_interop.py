"""Read and write adapters in HF PEFT's on-disk format (adapter_config.json + adapter_model.safetensors).

The files are written and read here directly (the ``peft`` package is not needed); tests load
them with ``peft.PeftModel.from_pretrained`` and compare logits.

What maps:
- LoRA on whole ``nn.Linear`` targets maps one to one. LoRA on ``q``/``k``/``v`` slices of the
  fused ``qkv`` is written as one LoRA on ``qkv`` of rank n*r whose A stacks the slices' A and
  whose B is block-diagonal with zero rows for untouched slices (``rank_pattern`` and
  ``alpha_pattern`` keep alpha/r unchanged): the same function, exactly.
- Lily as PEFT implements it (``LilyConfig``): whole ``nn.Linear`` targets, ``batch`` routing,
  ``per_site`` routers, the same rank and ne_b >= 2 for every target, and A groups that equal
  PEFT's consecutive blocks of ``stride_A`` layers. Anything else is refused with the reason.
PEFT's files hold every layer's copy of a shared A/B under that layer's key; we write the
copies and, on reading, check that sharing layers agree. A sidecar ``vtab_lily.json`` keeps our
exact config so that ``load_peft`` rebuilds slices and names exactly.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vtab_lily.adapters.lily import LilyDelta, a_groups
from vtab_lily.adapters.lora import LoraDelta
from vtab_lily.adapters.registry import apply_adapter
from vtab_lily.adapters.targets import BLOCKS_ATTR, TARGETS, model_depth, model_family
from vtab_lily.adapters.wrappers import AdaptedLinear
from vtab_lily.errors import UserError
from vtab_lily.fsutil import atomic_write_bytes

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
SIDECAR_FILE = "vtab_lily.json"
PREFIX = "base_model.model."


def _suffix(path: str, family: str) -> str:
    """``blocks.3.attn.qkv`` (Swin: ``layers.1.blocks.0.attn.qkv``) -> ``attn.qkv`` (the PEFT target
    name, unique per kind)."""
    parts = path.split(".")
    assert parts[0] == ("layers" if family == "swin" else BLOCKS_ATTR[family])
    return ".".join(parts[4 if family == "swin" else 2:])


def _head_name(model: nn.Module) -> str:
    head = model.get_classifier()
    for name, module in model.named_modules():
        if module is head and name:
            return name
    raise UserError("cannot find the classification head among the model's modules")


def _linears(model: nn.Module, delta_type: type) -> list[tuple[str, AdaptedLinear, list]]:
    """(path, layer, deltas of ``delta_type`` sorted by output slice) for every adapted Linear."""
    out = []
    for path, module in model.named_modules():
        if isinstance(module, AdaptedLinear):
            deltas = [d for d in module.deltas.values() if isinstance(d, delta_type)]
            if deltas:
                out.append((path, module, sorted(deltas, key=lambda d: (d.out_slice or (0, 0))[0])))
    return out


# ----------------------------------------------------------------------------- export


def export_peft(model: nn.Module, out_dir: str | os.PathLike) -> None:
    """Write ``model``'s LoRA or PEFT-expressible Lily adapter (and head) in PEFT's format.

    ``peft.PeftModel.from_pretrained(backbone, out_dir)`` then computes the same outputs.
    """
    name = getattr(model, "adapter_name", None)
    if name == "lora":
        config, tensors = _lora_export(model)
    elif name == "lily":
        config, tensors = _lily_export(model)
    else:
        raise UserError(f"export_peft: only LoRA and Lily adapters can be written in PEFT's format, not {name!r}")
    head = _head_name(model)
    for key, value in model.get_classifier().state_dict().items():
        tensors[f"{PREFIX}{head}.{key}"] = value
    config.update({
        "base_model_name_or_path": None, "revision": None, "task_type": None, "inference_mode": True,
        "modules_to_save": [head], "layers_to_transform": None, "layers_pattern": None, "exclude_modules": None,
    })
    try:
        from importlib.metadata import version

        config["peft_version"] = version("peft")
    except Exception:  # peft not installed: the field is informational
        pass
    from safetensors.torch import save

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    blob = save({k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()})
    atomic_write_bytes(out / WEIGHTS_FILE, blob)
    atomic_write_bytes(out / CONFIG_FILE, json.dumps(config, indent=2, sort_keys=True).encode())
    sidecar = {"adapter": name, "family": model_family(model), "config": _config_dict(model.adapter_config)}
    atomic_write_bytes(out / SIDECAR_FILE, json.dumps(sidecar, indent=2).encode())


def _config_dict(config: Any) -> dict[str, Any]:
    out = dataclasses.asdict(config)
    if out.get("targets") is not None:
        out["targets"] = list(out["targets"])
    return out


def _lora_export(model: nn.Module) -> tuple[dict, dict]:
    cfg = model.adapter_config
    family = model_family(model)
    if cfg.dropout > 0 and getattr(cfg, "dropout_position", "input") != "input":
        raise UserError("export_peft: LoRA dropout after A cannot be expressed in HF PEFT (dropout on the input)")
    tensors: dict[str, torch.Tensor] = {}
    patterns: dict[str, tuple[int, float]] = {}  # PEFT target -> (rank, alpha)
    for path, layer, deltas in _linears(model, LoraDelta):
        a, b = _stack_lora(layer, deltas)
        tensors[f"{PREFIX}{path}.lora_A.weight"] = a
        tensors[f"{PREFIX}{path}.lora_B.weight"] = b
        # n slices of rank r on one Linear = one LoRA of rank n*r; alpha scales too, so alpha/r is kept.
        plans = {(cfg.per_target[d.target]["rank"], cfg.per_target[d.target]["alpha"]) for d in deltas}
        if len(plans) > 1:
            raise UserError(f"export_peft: the q/k/v LoRA slices of {path} differ in rank or alpha; "
                            "PEFT has one LoRA per Linear")
        plan = cfg.per_target[deltas[0].target]
        patterns[_suffix(path, family)] = (a.shape[0], plan["alpha"] * a.shape[0] / plan["rank"])
    config = {
        "peft_type": "LORA", "r": cfg.rank, "lora_alpha": cfg.alpha, "lora_dropout": cfg.dropout,
        "target_modules": sorted(patterns), "bias": "none", "fan_in_fan_out": False,
        "init_lora_weights": True, "use_dora": False, "use_rslora": False,
        "rank_pattern": {s: r for s, (r, _) in patterns.items() if r != cfg.rank},
        "alpha_pattern": {s: a for s, (_, a) in patterns.items() if a != cfg.alpha},
    }
    return config, tensors


def _stack_lora(layer: AdaptedLinear, deltas: list[LoraDelta]) -> tuple[torch.Tensor, torch.Tensor]:
    if len(deltas) == 1 and deltas[0].out_slice is None:
        return deltas[0].lora_A.weight, deltas[0].lora_B.weight
    rank = deltas[0].lora_A.weight.shape[0]
    a = torch.cat([d.lora_A.weight for d in deltas], dim=0)
    b = a.new_zeros(layer.out_features, rank * len(deltas))
    for j, d in enumerate(deltas):
        start, stop = d.out_slice
        b[start:stop, j * rank:(j + 1) * rank] = d.lora_B.weight
    return a, b


def _lily_export(model: nn.Module) -> tuple[dict, dict]:
    cfg = model.adapter_config
    family = model_family(model)
    why = []
    if cfg.routing != "batch":
        why.append(f"routing is {cfg.routing!r} (PEFT averages router weights over the batch: routing='batch')")
    if cfg.router != "per_site":
        why.append(f"router is {cfg.router!r} (PEFT has one router per layer: router='per_site')")
    partial = [t for t in cfg.targets if any(p.style != "linear" or p.slice_index is not None
                                             for p in TARGETS[family][t])]
    if partial:
        why.append(f"targets {partial} are not whole nn.Linear layers")
    plans = list(cfg.per_target.values())
    if len({(p["rank"], p["ne_b"], p["ne_a"]) for p in plans}) > 1:
        why.append("targets differ in rank, ne_a or ne_b (PEFT has one r, stride_A and num_B)")
    if any(p["ne_b"] < 2 for p in plans):
        why.append("PEFT needs ne_b >= 2")
    if any(p.get("dropout", 0.0) > 0 for p in plans):
        why.append("dropout > 0 (PEFT's Lily has none)")
    stride = _stride_for(model_depth(model), plans[0]["ne_a"], cfg.a_grouping)
    if stride is None:
        why.append(f"ne_a={plans[0]['ne_a']} groups of {model_depth(model)} layers are not PEFT's "
                   "consecutive blocks of stride_A layers")
    if why:
        raise UserError("export_peft: this Lily configuration cannot be expressed in HF PEFT: " + "; ".join(why))
    tensors: dict[str, torch.Tensor] = {}
    suffixes = set()
    for path, _, deltas in _linears(model, LilyDelta):
        (delta,) = deltas
        experts = delta.lily_B.weight
        tensors[f"{PREFIX}{path}.lily_A.weight"] = delta.lily_A.weight
        tensors[f"{PREFIX}{path}.lily_B.weight"] = experts.reshape(-1, experts.shape[-1])  # (ne_b*r, C_out)
        tensors[f"{PREFIX}{path}.lily_router.weight"] = delta.lily_router.weight
        suffixes.add(_suffix(path, family))
    config = {
        "peft_type": "LILY", "r": plans[0]["rank"], "stride_A": stride, "num_B": plans[0]["ne_b"],
        "scaling": cfg.scale, "target_modules": sorted(suffixes), "init_weights": True,
    }
    return config, tensors


def _stride_for(depth: int, ne_a: int, grouping: str) -> int | None:
    """PEFT's stride_A giving the same A groups as our ``ne_a`` under ``grouping``, or None."""
    sizes = [len(g) for g in a_groups(depth, ne_a, grouping)]
    stride = sizes[0]
    expected = [min(stride, depth - start) for start in range(0, depth, stride)]
    return stride if sizes == expected else None


def _grouping_for(depth: int, stride: int) -> dict[str, Any] | None:
    """Our A-sharing options for PEFT's ``stride_A`` (the official rule first), or None."""
    for ne_a, grouping in ((depth // max(stride, 1), "stride"), (-(-depth // max(stride, 1)), "balanced")):
        if stride >= 1 and 1 <= ne_a <= depth and _stride_for(depth, ne_a, grouping) == stride:
            return {"ne_a": ne_a} if grouping == "stride" else {"ne_a": ne_a, "a_grouping": grouping}
    return None


# ----------------------------------------------------------------------------- load


def load_peft(model: nn.Module, adapter_dir: str | os.PathLike) -> nn.Module:
    """Apply to the un-adapted ``model`` the LoRA or Lily adapter saved in ``adapter_dir`` (PEFT format).

    Uses our sidecar config when present (exact round trip); otherwise maps PEFT's config
    (target names are matched by their last components, e.g. ``attn.qkv`` -> ``qkv``).
    """
    from safetensors.torch import load_file

    folder = Path(adapter_dir)
    config_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    for path in (config_path, weights_path):
        if not path.is_file():
            raise UserError(f"{path}: missing (expected a PEFT adapter folder)")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"{config_path}:{err.lineno}: invalid JSON: {err.msg}") from None
    peft_type = str(config.get("peft_type", "")).upper()
    if peft_type not in ("LORA", "LILY"):
        raise UserError(f"{config_path}: peft_type {config.get('peft_type')!r} is not supported (LORA or LILY)")
    name = peft_type.lower()
    sidecar_path = folder / SIDECAR_FILE
    if sidecar_path.is_file():
        sidecar = json.loads(sidecar_path.read_text())
        if sidecar.get("adapter") != name:
            raise UserError(f"{sidecar_path}: adapter {sidecar.get('adapter')!r} does not match peft_type {peft_type}")
        ours = sidecar["config"]
    else:
        ours = _config_from_peft(model, name, config, config_path)
    apply_adapter(model, name, **ours)
    tensors = load_file(str(weights_path))
    used: set[str] = set()
    with torch.no_grad():
        if name == "lora":
            _load_lora(model, tensors, used, weights_path)
        else:
            _load_lily(model, tensors, used, weights_path)
        head = _head_name(model)
        for key, param in model.get_classifier().state_dict(keep_vars=True).items():
            full = f"{PREFIX}{head}.{key}"
            if full in tensors:
                _copy(param, tensors[full], full, weights_path)
                used.add(full)
    unused = sorted(set(tensors) - used)
    if unused:
        raise UserError(f"{weights_path}: {len(unused)} tensors do not fit this model, e.g. {unused[0]}")
    return model


def _target_for_suffix(family: str, suffix: str, config_path: Path) -> str:
    for target, parts in TARGETS[family].items():
        for part in parts:
            whole = part.style == "linear" and part.slice_index is None
            if whole and (part.path == suffix or part.path.endswith("." + suffix)):
                return target
    raise UserError(f"{config_path}: target_modules entry {suffix!r} is not a whole-Linear target of a {family} model")


def _config_from_peft(model: nn.Module, name: str, config: dict, config_path: Path) -> dict[str, Any]:
    family = model_family(model)
    modules = config.get("target_modules")
    if not isinstance(modules, list) or not modules:
        raise UserError(f"{config_path}: target_modules must be a list of module names")
    targets = []
    for suffix in modules:
        target = _target_for_suffix(family, suffix, config_path)
        if target not in targets:
            targets.append(target)
    if name == "lora":
        if config.get("use_dora") or config.get("use_rslora"):
            raise UserError(f"{config_path}: DoRA and rsLoRA adapters are not supported")
        per_target: dict[str, dict[str, float]] = {}
        for field, key in (("rank_pattern", "rank"), ("alpha_pattern", "alpha")):
            for pattern, value in (config.get(field) or {}).items():
                target = _target_for_suffix(family, pattern, config_path)
                per_target.setdefault(target, {})[key] = int(value) if key == "rank" else float(value)
        return {"rank": int(config["r"]), "alpha": float(config["lora_alpha"]), "per_target": per_target,
                "dropout": float(config.get("lora_dropout", 0.0)), "targets": targets}
    depth, stride = model_depth(model), int(config.get("stride_A", 1))
    sharing = _grouping_for(depth, stride)
    if sharing is None:
        raise UserError(f"{config_path}: stride_A={stride} over {depth} layers gives A groups that neither "
                        "a_grouping rule (stride, balanced) can express")
    return {"rank": int(config["r"]), **sharing, "ne_b": int(config["num_B"]), "scale": float(config["scaling"]),
            "targets": targets, "router": "per_site", "routing": "batch", "per_target": {}}


def _copy(param: torch.Tensor, value: torch.Tensor, key: str, where: Path) -> None:
    if tuple(param.shape) != tuple(value.shape):
        raise UserError(f"{where}: {key} has shape {tuple(value.shape)}, the model expects {tuple(param.shape)}")
    param.copy_(value)


def _take(tensors: dict, key: str, used: set, where: Path) -> torch.Tensor:
    if key not in tensors:
        raise UserError(f"{where}: tensor {key} is missing")
    used.add(key)
    return tensors[key]


def _load_lora(model: nn.Module, tensors: dict, used: set, where: Path) -> None:
    for path, layer, deltas in _linears(model, LoraDelta):
        a = _take(tensors, f"{PREFIX}{path}.lora_A.weight", used, where)
        b = _take(tensors, f"{PREFIX}{path}.lora_B.weight", used, where)
        if len(deltas) == 1 and deltas[0].out_slice is None:
            _copy(deltas[0].lora_A.weight, a, f"{path}.lora_A", where)
            _copy(deltas[0].lora_B.weight, b, f"{path}.lora_B", where)
            continue
        rank = deltas[0].lora_A.weight.shape[0]
        width = rank * len(deltas)
        if tuple(a.shape) != (width, layer.in_features) or tuple(b.shape) != (layer.out_features, width):
            raise UserError(f"{where}: {path} LoRA shapes {tuple(a.shape)}, {tuple(b.shape)} do not fit")
        rest = b.clone()
        for j, d in enumerate(deltas):
            start, stop = d.out_slice
            d.lora_A.weight.copy_(a[j * rank:(j + 1) * rank])
            d.lora_B.weight.copy_(b[start:stop, j * rank:(j + 1) * rank])
            rest[start:stop, j * rank:(j + 1) * rank] = 0
        if rest.any():
            raise UserError(f"{where}: {path} lora_B is not block-diagonal over the q/k/v slices")


def _load_lily(model: nn.Module, tensors: dict, used: set, where: Path) -> None:
    seen: dict[int, str] = {}  # shared parameter -> key it was first loaded from
    for path, _, deltas in _linears(model, LilyDelta):
        (delta,) = deltas
        for part, param in (("lily_A", delta.lily_A.weight), ("lily_B", delta.lily_B.weight),
                            ("lily_router", delta.lily_router.weight)):
            key = f"{PREFIX}{path}.{part}.weight"
            value = _take(tensors, key, used, where)
            if part == "lily_B" and value.numel() == param.numel():
                value = value.reshape(param.shape)  # PEFT stores the experts as (ne_b * r, C_out)
            if id(param) in seen:
                if not torch.equal(param, value.to(param.dtype)):
                    raise UserError(f"{where}: {key} differs from {seen[id(param)]}, but the two layers share it")
                continue
            _copy(param, value, key, where)
            seen[id(param)] = key
