"""What :func:`vtab_lily.train.train` sets up before its loop: the recipe options with their
official defaults, the eval batch rule, bf16 storage, per-block compilation, placement of the
splits on the GPU, and this run's own GPU RNG state."""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Any

import torch

from .errors import UserError, unknown_name
from .official import PRECISIONS

OFFICIAL_EVAL_BATCH = 256
AUTO_EVAL_BATCH = 1024  # eval batch on CUDA when the routing allows and none was given


@dataclass(frozen=True)
class LoopOptions:
    """The loop's cfg keys with their official defaults (old configs without them still load)."""

    lr_schedule: str = "official"  # "official" | "aligned"
    drop_last: bool = True
    eval_batch_size: int = OFFICIAL_EVAL_BATCH
    eval_batch_auto: bool = False  # eval_batch_size was not given: larger batches allowed (see eval_batch_size())
    eval_limit: int | None = None  # intermediate evaluations on the first N eval images; the final one is full
    precision: str = "fp32"  # official.PRECISIONS; bf16 autocasts on the CPU too (slow there, for tests and checks)
    compile: bool = False  # torch.compile each block in place

    @classmethod
    def from_cfg(cls, cfg: dict) -> "LoopOptions":
        opts = cls(**{k: cfg[k] for k in cls.__dataclass_fields__ if k in cfg})
        if opts.lr_schedule not in ("official", "aligned"):
            raise unknown_name("lr_schedule", str(opts.lr_schedule), ("official", "aligned"))
        if opts.precision not in PRECISIONS:
            raise unknown_name("precision", str(opts.precision), PRECISIONS)
        for key in ("drop_last", "eval_batch_auto", "compile"):
            if type(getattr(opts, key)) is not bool:
                raise UserError(f"{key} must be true or false, got {getattr(opts, key)!r}")
        for key in ("eval_batch_size", "eval_limit"):
            value = getattr(opts, key)
            if not (value is None and key == "eval_limit") and (type(value) is not int or value < 1):
                raise UserError(f"{key} must be a positive integer, got {value!r}")
        return opts


def check_recipe(cfg: dict) -> None:
    """The core recipe keys, so a bad value is one clear line, not a traceback deep in the loop."""
    for key in ("epochs", "batch_size", "accum_steps", "eval_every"):
        if type(cfg.get(key)) is not int or cfg[key] < 1:
            raise UserError(f"{key} must be a positive integer, got {cfg.get(key)!r}")
    if type(cfg.get("warmup")) is not int or cfg["warmup"] < 0:
        raise UserError(f"warmup must be a non-negative integer of epochs, got {cfg.get('warmup')!r}")
    for key in ("lr", "wd", "warmup_lr", "min_lr"):
        value = cfg.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
            raise UserError(f"{key} must be a finite non-negative number, got {value!r}")


def schedule_epoch(epoch: int, lr_schedule: str) -> int:
    """The scheduler's t for 0-based ``epoch``: the official code steps the scheduler after each
    epoch (epochs 0 and 1 both run at f(0), the lr set when the scheduler is built)."""
    return max(epoch - 1, 0) if lr_schedule == "official" else epoch


def uses_batch_routing(model: torch.nn.Module) -> bool:
    """Lily ``routing == "batch"``: one expert mixture per forward call, so predictions depend on
    the batch's composition and the evaluation must keep the official batch."""
    return getattr(getattr(model, "adapter_config", None), "routing", None) == "batch"


def eval_batch_size(opts: LoopOptions, model: torch.nn.Module, device: torch.device) -> int:
    """The given eval batch; on CUDA a larger one when none was given and the routing allows it."""
    if opts.eval_batch_auto and device.type == "cuda" and not uses_batch_routing(model):
        return max(opts.eval_batch_size, AUTO_EVAL_BATCH)
    return opts.eval_batch_size


def on_device(data: Any, device: torch.device) -> Any:
    """The split's uint8 tensors on the GPU once per run; on the host if they do not fit."""
    if device.type != "cuda" or data.images.device.type == "cuda":
        return data
    try:
        return data.to(device)
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        print(f"warning: the {len(data):,}-image split does not fit on {device}; reading it from host memory",
              file=sys.stderr)
        return data


def store_frozen_in_bf16(model: torch.nn.Module) -> None:
    """Frozen Linear/Conv2d weights and biases in bf16. Autocast rounds them to bf16 at every
    matmul anyway, so this changes no number; it halves their memory and skips the casts.
    Norms, embeddings and scan parameters stay fp32, as autocast would use them."""
    for module in model.modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            for p in module.parameters(recurse=False):
                if not p.requires_grad and p.is_floating_point():
                    p.data = p.data.to(torch.bfloat16)


def cast_for_precision(model: torch.nn.Module, precision: str, device: torch.device) -> None:
    """What the loop does to a model for its precision (the device check builds its models with it
    too): under bf16, frozen weights stored in bf16 and the head run in fp32; otherwise nothing."""
    if precision == "bf16":
        store_frozen_in_bf16(model)
        fp32_head(model, device)


def fp32_head(model: torch.nn.Module, device: torch.device) -> None:
    """Run the classifier head outside autocast so the logits (and their argmax) are fp32."""
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    if not isinstance(head, torch.nn.Module) or getattr(head, "_fp32_logits", False):
        return
    forward = head.forward

    def fp32_forward(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, enabled=False):
            return forward(x.float())

    head.forward = fp32_forward  # an instance attribute: state_dict names are unchanged
    head._fp32_logits = True


def compile_blocks(model: torch.nn.Module) -> None:
    """torch.compile each block in place (ViT ``blocks``, Vim ``layers``): names stay the same."""
    blocks = getattr(model, "blocks", None) or getattr(model, "layers", None)
    if not isinstance(blocks, torch.nn.ModuleList):
        raise UserError(f"compile: {type(model).__name__} has no .blocks or .layers to compile")
    for block in blocks:
        block.compile()


def device_rng_state(device: torch.device) -> torch.Tensor | None:
    """This run's own GPU generator only (``get_rng_state_all`` touches every visible GPU and
    cannot be restored in a process that sees fewer)."""
    return torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def set_device_rng_state(state: Any, device: torch.device) -> None:
    if device.type != "cuda" or state is None or (isinstance(state, list) and not state):
        return
    if isinstance(state, list):  # checkpoints before round 2 held every visible GPU's state
        state = state[min(device.index or 0, len(state) - 1)]
    torch.cuda.set_rng_state(state, device)
