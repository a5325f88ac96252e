"""Compose each adapted weight's update dW from a model with a trained adapter.

Every linear adapter site lives in an ``AdaptedLinear`` (see ``vtab_lily.adapters.wrappers``),
so the update of its frozen weight (or of the weight's output slice, for q/k/v of a fused qkv)
is found the same way for every method:

- a delta with ``delta_weight()`` (LoRA and other mergeable methods) states its update;
- a Lily delta's update depends on the routing, so it is composed from the expert weights the
  run recorded: ``dW = s * (sum_i S_i B_i)^T A`` (one-hot ``S`` gives LoRA with that expert);
- any other delta is probed: with the model in eval mode, ``delta(I) - delta(0)`` is ``dW^T``
  when the delta is linear in its input, which is checked (a non-linear delta is reported, not
  analysed).

A tuner HF PEFT injected (``--adapter peft``) states its update the same way
(``get_delta_weight`` of its layer, e.g. LoRA on the ``q``/``v`` Linears split out of qkv).

Every other trained adapter piece is listed, with what it is, under the sites without a dW:
parallel and serial bottlenecks with a ReLU inside (Lily's ``mlp`` target, AdaptFormer,
Houlsby, Pfeiffer, Convpass) add a function, not a weight update; SSF's scale-shift, RepAdapter's
pre-layer map and VPT's prompts change features or tokens, not one Linear's weight. Full
fine-tuning is compared against the weights it started from.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

from vtab_lily.adapters.lily import LilyDelta
from vtab_lily.adapters.wrappers import AdaptedLinear, AdapterModule, ParallelAdapter

# what an adapter piece that is not a Linear's weight update is, by its class name
NOT_A_DW = {
    "Bottleneck": "bottleneck with a ReLU: adds a function, not a weight update",
    "ConvBypass": "convolutional bypass with a non-linearity: adds a function, not a weight update",
    "ScaleShift": "scale and shift of the features after the layer, not a weight update",
    "RepAdapter": "linear map of the layer's input (RepAdapter), not a weight update here",
    "Prompts": "prompt tokens: extra inputs, not a weight update",
}


@dataclass
class WeightUpdate:
    """The update ``delta`` (out, in) at ``site`` (e.g. ``blocks.3.k``) and the frozen ``base`` weight."""

    site: str
    layer: int
    kind: str
    delta: torch.Tensor
    base: torch.Tensor


def _layer_of(path: str) -> int:
    match = re.search(r"\.(\d+)\.", f".{path}.")
    return int(match.group(1)) if match else -1


def lily_update(delta: LilyDelta, weights: list[float] | torch.Tensor | None) -> torch.Tensor:
    """``s * (sum_i S_i B_i)^T A`` as an (out, in) matrix; ``weights`` None: uniform experts."""
    experts = delta.lily_B.weight.detach()  # (ne, r, out)
    count = experts.shape[0]
    if weights is None or count == 1:
        weights = torch.full((count,), 1.0 / count) if count > 1 else torch.ones(1)
    weights = torch.as_tensor(weights, dtype=experts.dtype)
    if weights.shape != (count,):
        raise ValueError(f"{delta.site_name}: {weights.numel()} expert weights for {count} experts")
    combined = torch.einsum("e,erc->rc", weights, experts)  # (r, out)
    return delta.scale * combined.T @ delta.lily_A.weight.detach()


@torch.no_grad()
def probe_update(delta: nn.Module, in_features: int) -> torch.Tensor | None:
    """``dW`` (out, in) of a delta that is linear in its input, else None."""
    eye = torch.eye(in_features, dtype=torch.float32)
    zero = delta(torch.zeros(1, in_features))
    once = delta(eye) - zero
    twice = delta(2 * eye) - zero
    if not torch.allclose(twice, 2 * once, rtol=1e-4, atol=1e-6 * (1 + float(once.abs().max()))):
        return None
    return once.T


@torch.no_grad()
def weight_updates(model: nn.Module, router_weights: dict[str, list[float]] | None = None
                   ) -> tuple[list[WeightUpdate], list[str]]:
    """All linear updates of ``model`` and the names of the sites that are not linear updates."""
    was_training = model.training
    model.eval()
    updates, skipped, seen = [], [], set()
    try:
        for path, module in model.named_modules():
            if isinstance(module, ParallelAdapter):
                seen.add(id(module.delta))
                skipped.append(f"{path} (parallel adapter: adds a function, not a weight update)")
                continue
            if _is_peft_layer(module):
                updates += _peft_updates(path, module, skipped)
                continue
            if not isinstance(module, AdaptedLinear):
                continue
            seen.update(id(d) for d in module.deltas.values())
            weight = module.base_layer.weight.detach()
            for name, delta in module.deltas.items():
                start, stop = delta.out_slice or (0, module.out_features)
                kind = name.split("_", 1)[1] if "_" in name else name
                site = f"{path.split('.', 1)[0]}.{_layer_of(path)}.{kind}"
                if isinstance(delta, LilyDelta):
                    site = delta.site_name
                    dw = lily_update(delta, (router_weights or {}).get(site))
                elif hasattr(delta, "delta_weight"):
                    dw = delta.delta_weight().detach()
                else:
                    dw = probe_update(delta, module.in_features)
                    if dw is None:
                        skipped.append(f"{path}:{name} (not linear in its input)")
                        continue
                updates.append(WeightUpdate(site, _layer_of(path), kind, dw.float(), weight[start:stop].float()))
        skipped += _other_pieces(model, seen)
    finally:
        model.train(was_training)
    return updates, skipped


def _is_peft_layer(module: nn.Module) -> bool:
    """A layer HF PEFT injected (``BaseTunerLayer``), recognised without importing peft."""
    return all(hasattr(module, name) for name in ("get_base_layer", "active_adapters", "get_delta_weight"))


def _peft_updates(path: str, module: nn.Module, skipped: list[str]) -> list[WeightUpdate]:
    base = getattr(module.get_base_layer(), "weight", None)
    kind = path.rsplit(".", 1)[-1]
    out = []
    for name in module.active_adapters:
        try:
            dw = module.get_delta_weight(name)
        except Exception as err:  # noqa: BLE001 - a tuner whose update is not one weight (IA3-like)
            skipped.append(f"{path} (PEFT {type(module).__name__}: no weight update, {err.__class__.__name__})")
            continue
        if base is None or not isinstance(dw, torch.Tensor) or dw.shape != base.shape:
            skipped.append(f"{path} (PEFT {type(module).__name__}: its update is not one weight of this layer)")
            continue
        out.append(WeightUpdate(f"{path.split('.', 1)[0]}.{_layer_of(path)}.{kind}", _layer_of(path), kind,
                                dw.detach().float(), base.detach().float()))
    return out


def _other_pieces(model: nn.Module, seen: set[int]) -> list[str]:
    """Every trained adapter piece not analysed above, with what it is (outermost pieces only)."""
    out, inside = [], set()
    for path, module in model.named_modules():
        if not isinstance(module, AdapterModule) or id(module) in seen or id(module) in inside:
            continue
        inside.update(id(m) for m in module.modules())
        if not any(p.requires_grad for p in module.parameters()):
            continue
        name = type(module).__name__
        out.append(f"{path} ({NOT_A_DW.get(name, f'{name}: not a weight update of one Linear')})")
    return out


def full_updates(model: nn.Module, initial: dict[str, torch.Tensor]) -> list[WeightUpdate]:
    """Full fine-tuning: trained minus initial weight of every Linear inside the blocks."""
    out = []
    for path, module in model.named_modules():
        if isinstance(module, nn.Linear) and _layer_of(path) >= 0 and f"{path}.weight" in initial:
            base = initial[f"{path}.weight"].float()
            kind = path.rsplit(".", 1)[-1]
            out.append(WeightUpdate(f"{path.split('.', 1)[0]}.{_layer_of(path)}.{kind}", _layer_of(path), kind,
                                    module.weight.detach().float() - base, base))
    return out
