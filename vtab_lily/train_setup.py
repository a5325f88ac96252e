"""What :func:`vtab_lily.train.train` sets up before its loop: the recipe options with their
official defaults, the eval batch rule, bf16 storage, compilation (:func:`compile_model`, also
what the device check measures), placement of the splits on the GPU, and this run's own GPU RNG
state."""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from typing import Any

import torch

from .backbones import scan_paths
from .errors import UserError, unknown_name
from .official import COMPILE_MODES, PRECISIONS

OFFICIAL_EVAL_BATCH = 256
# Of official.COMPILE_MODES ("default" is recorded as compile: true, as before modes existed),
# these replay CUDA graphs on a GPU.
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")
COMPILE_BACKEND_ENV = "VTAB_LILY_COMPILE_BACKEND"  # e.g. eager / aot_eager for tests; default inductor
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
    compile: bool | str = False  # True: torch.compile's default mode; or a mode name (COMPILE_MODES)

    @classmethod
    def from_cfg(cls, cfg: dict) -> "LoopOptions":
        opts = cls(**{k: cfg[k] for k in cls.__dataclass_fields__ if k in cfg})
        if opts.lr_schedule not in ("official", "aligned"):
            raise unknown_name("lr_schedule", str(opts.lr_schedule), ("official", "aligned"))
        if opts.precision not in PRECISIONS:
            raise unknown_name("precision", str(opts.precision), PRECISIONS)
        for key in ("drop_last", "eval_batch_auto"):
            if type(getattr(opts, key)) is not bool:
                raise UserError(f"{key} must be true or false, got {getattr(opts, key)!r}")
        if type(opts.compile) is not bool and opts.compile not in COMPILE_MODES[1:]:
            raise UserError(f"compile must be true, false or one of {', '.join(COMPILE_MODES[1:])}, "
                            f"got {opts.compile!r}")
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


def compile_mode(value: bool | str) -> str | None:
    """The torch.compile mode a config's ``compile`` value asks for; None: not compiled."""
    if value is True:
        return "default"
    return value or None


def compile_backend() -> str:
    """torch.compile's backend: inductor, or what ``VTAB_LILY_COMPILE_BACKEND`` names."""
    name = os.environ.get(COMPILE_BACKEND_ENV, "").strip() or "inductor"
    if name not in torch._dynamo.list_backends(exclude_tags=()):
        raise UserError(f"environment variable {COMPILE_BACKEND_ENV}={name!r} names no torch.compile backend: "
                        "use inductor (the default), or eager / aot_eager to trace without generating kernels")
    return name


def compile_model(model: torch.nn.Module, *, mode: str = "default", backend: str | None = None) -> torch.nn.Module:
    """Compile ``model``'s forward in place, for training and evaluation, and return it.

    What is compiled is ``forward_features`` (everything but the classifier head; ``forward``
    for a model without one): one graph for the whole backbone with its adapters (no per-block
    graphs: those hit Dynamo's recompile limit, as blocks differ in drop-path rate, input
    gradients, train/eval) and the same graph for every task, whose heads alone differ in shape,
    so torch's on-disk compile caches serve the next task. Training compiles one graph for its
    fixed batch; evaluation one with a dynamic batch size (the last batch is smaller).

    Dynamo's state is reset first, so each model of a process (``--batch``, sweeps, the device
    check) compiles afresh and never inherits another's recompile budget; a model compiled
    earlier in the process recompiles on its next call. The Vim kernel paths are decided here,
    before tracing (each is a real test call on the device). ``mode``: a name in
    ``COMPILE_MODES``; CUDA-graph modes fall back to the default on a CPU. ``backend``: default
    :func:`compile_backend`. Parameter and state_dict names are unchanged.
    """
    if mode not in COMPILE_MODES:
        raise unknown_name("compile mode", str(mode), COMPILE_MODES)
    backend = backend or compile_backend()
    torch.compiler.reset()
    torch._dynamo.utils.counters.clear()  # compile_counters() then describes this model alone
    device = next(model.parameters()).device
    limit = None
    if getattr(model, "family", None) == "vim":
        foreign = sorted({"mamba_ssm", "causal_conv1d"} & set(scan_paths(device).values()))
        if foreign:  # C++ kernels Dynamo cannot trace: a graph break at each call, and the code
            # after it compiles once per layer (each its own drop-path rate): allow that many
            limit = 8 + 4 * model.depth
            print(f"note: compile: the {' and '.join(foreign)} kernels are graph breaks (one graph per "
                  f"layer); VTAB_LILY_SCAN=triton VTAB_LILY_CONV=pytorch compile without any", file=sys.stderr)
    target = "forward_features" if callable(getattr(model, "forward_features", None)) else "forward"
    uncompiled = model.__dict__.get("_uncompiled", {}).get(target, getattr(model, target))
    if device.type != "cuda" and mode in CUDA_GRAPH_MODES:
        mode = "default"  # no CUDA graphs here; the recorded setting stays what was asked
    options = {"mode": mode} if backend == "inductor" else {}
    model.__dict__["_uncompiled"] = {target: uncompiled}  # not a module attribute: state_dict unchanged
    setattr(model, target, torch.compile(uncompiled, backend=backend, recompile_limit=limit, **options))
    model.__dict__["compiled_as"] = {"target": target, "backend": backend, "mode": mode}
    return model


def compile_counters() -> dict[str, int]:
    """Dynamo's counts since the last :func:`compile_model`: frames compiled, graphs, graph
    breaks, recompile-limit hits (the frame then runs uncompiled), other frames it gave up on,
    and graphs inductor ran without CUDA graphs in a CUDA-graph mode."""
    counters = torch._dynamo.utils.counters
    gave_up = counters["unimplemented"]
    limit = sum(n for msg, n in gave_up.items() if msg.startswith("Dynamo recompile limit exceeded"))
    return {"frames": counters["frames"]["ok"], "graphs": counters["stats"]["unique_graphs"],
            "graph_breaks": sum(counters["graph_break"].values()), "recompile_limit_hits": limit,
            "gave_up": sum(gave_up.values()) - limit, "cudagraph_skips": counters["inductor"]["cudagraph_skips"]}


def compile_summary(counts: dict[str, int]) -> str:
    return (f"{counts['frames']} frames, {counts['graphs']} graphs, {counts['graph_breaks']} graph breaks, "
            f"{counts['recompile_limit_hits']} recompile-limit hits, {counts['gave_up']} frames left uncompiled, "
            f"{counts['cudagraph_skips']} CUDA-graph skips")


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
