"""The training loop: one function, :func:`train`, readable top to bottom.

The recipe defaults to the official Lily / VTAB-1K code (github.com/yibozhong/lily); every
difference is a config key (:class:`LoopOptions`). AdamW over the trainable parameters and
timm's cosine schedule with linear warmup, set once per epoch: ``lr_schedule="official"``
reproduces the official ``scheduler.step(epoch)`` called *after* each epoch (epoch e, 0-based,
runs at f(max(e - 1, 0)), f(0) = warmup_lr), ``"aligned"`` runs epoch e at f(e). Steps of
``batch_size * accum_steps`` images in a fresh permutation per epoch, seeded by (seed, epoch),
so a resumed run sees the same batches; ``drop_last`` (official) drops the partial last step.
``precision``: fp32 (official, no autocast) or bf16 (autocast, on CUDA and, when asked, on the
CPU too; frozen Linear/Conv2d weights stored in bf16, trainable weights, optimizer and logits
fp32). Predictions are always the argmax of fp32 logits.

Setup (options, bf16 storage, compile, placement, RNG) lives in :mod:`vtab_lily.train_setup`.
On a GPU nothing waits for the device inside an epoch: the order is moved once per epoch,
per-step losses and gradient norms go into two small device buffers read once at the epoch's
end, where a non-finite value ends the run with :class:`RunFailed` (the checkpoint on disk is
the last good one). Evaluation reads the split from the device in contiguous slices, counts
correct predictions there and reads the count and the predicted classes once. Every evaluation
saves a checkpoint (trainable weights, optimizer, scheduler, RNG, progress, the predicted classes
of the latest and the best evaluation) that :func:`train` resumes from exactly. SIGINT/SIGTERM
finish the current step, save, and raise ``KeyboardInterrupt``.
"""

from __future__ import annotations

import math
import signal
import threading
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from timm.scheduler import CosineLRScheduler
from tqdm import tqdm

from .errors import UserError
from .rundir import RunDir, fault_point
from .train_setup import (CUDA_GRAPH_MODES, OFFICIAL_EVAL_BATCH, LoopOptions, cast_for_precision, check_recipe,
                          compile_counters, compile_mode, compile_model, compile_summary, device_rng_state,
                          eval_batch_size, on_device, schedule_epoch, set_device_rng_state,
                          uses_batch_routing)

CHECKPOINT_FORMAT = 1


class RunFailed(Exception):
    """The run cannot go on (non-finite loss or gradients, out of memory); recorded in failed.json."""

    def __init__(self, reason: str, epoch: int | None):
        super().__init__(reason)
        self.reason, self.epoch = reason, epoch


@dataclass
class Progress:
    """Everything besides tensors that a checkpoint carries across a resume."""

    epoch: int = 0  # completed epochs
    step_in_epoch: int = 0  # optimizer steps done in the current epoch (non-zero after Ctrl-C)
    global_step: int = 0
    evals: list = field(default_factory=list)  # [[epoch, accuracy], ...]
    train_s: float = 0.0
    eval_s: float = 0.0
    train_images: int = 0
    epoch_loss_sum: float = 0.0  # running sums of the current epoch
    epoch_images: int = 0
    epoch_train_s: float = 0.0
    eval_images: int = 0

    @property
    def best(self) -> tuple[float, int]:
        """(accuracy, epoch) of the best evaluation; the earliest one wins ties."""
        acc, epoch = max(((a, -e) for e, a in self.evals), default=(float("nan"), 0))
        return acc, -epoch


@dataclass
class TrainOutcome:
    final_acc: float
    best_acc: float
    best_epoch: int
    evals: list
    train_s: float
    eval_s: float
    train_images_per_s: float
    steps: int
    eval_batch_size: int = OFFICIAL_EVAL_BATCH  # the batch the evaluations used
    eval_images_per_s: float = 0.0
    compile: dict | None = None  # compile_counters() at the end, when compiled
    # predicted classes (int16, host) at the final and at the best evaluation; None when a run
    # resumed from a checkpoint written before predictions were kept never saw that evaluation
    final_predictions: torch.Tensor | None = None
    best_predictions: torch.Tensor | None = None


class _StopRequest:
    """SIGINT/SIGTERM handler: the first signal asks the loop to stop after the current step;
    a second SIGINT interrupts at once."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        tqdm.write("stopping after this step (checkpoint will be saved); press Ctrl-C again to abort now")

    def __enter__(self) -> "_StopRequest":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The trainable parameters' tensors by state_dict name (frozen weights are not saved)."""
    names = {name for name, p in model.named_parameters() if p.requires_grad}
    return {k: v.detach().clone() for k, v in model.state_dict().items() if k in names}


def _load_trainable(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    if set(state) != trainable:
        raise ValueError(f"checkpoint holds {len(set(state))} trainable tensors, the model {len(trainable)}")
    model.load_state_dict(state, strict=False)


def optimizer_state_to_params(optimizer: torch.optim.Optimizer) -> None:
    """Put loaded optimizer state where this run's update expects it. ``load_state_dict`` follows
    the *saved* group's flags: a checkpoint from a run that was not fused (a CPU run, loaded with
    ``map_location="cpu"``) leaves its ``step`` counters on the host, which a fused CUDA update
    refuses. Fused or capturable updates want ``step`` as float32 beside the parameter, the others
    on the host; moments follow their parameter's device and dtype."""
    for group in optimizer.param_groups:
        on_param = bool(group.get("fused") or group.get("capturable"))
        for p in group["params"]:
            state = optimizer.state.get(p, {})
            for key, value in state.items():
                if not torch.is_tensor(value):
                    continue
                if key == "step":
                    state[key] = value.to(device=p.device if on_param else "cpu", dtype=torch.float32)
                else:
                    state[key] = value.to(device=p.device, dtype=p.dtype if value.is_floating_point() else None)


def epoch_order(n: int, seed: int, epoch: int, device: torch.device) -> torch.Tensor:
    """The epoch's permutation: drawn on the host (the same on every device, so a run can resume
    elsewhere) and moved once to where the training images live."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    return order.to(device)


def new_step(model: torch.nn.Module) -> None:
    """Before each forward of a model compiled with CUDA graphs: the previous step's graph outputs
    are no longer read (the loop keeps none), so the graphs may overwrite them."""
    if getattr(model, "compiled_as", {}).get("mode") in CUDA_GRAPH_MODES:
        torch.compiler.cudagraph_mark_step_begin()


@torch.inference_mode()
def evaluate(model: torch.nn.Module, data: Any, batch_size: int, device: torch.device, *,
             bf16: bool = False, limit: int | None = None) -> tuple[float, torch.Tensor]:
    """Top-1 accuracy (%) over the first ``limit`` (default all) images of ``data``, in fixed
    order and contiguous batches (Lily's batch routing mixes experts per batch: keep it
    reproducible), and the predicted class of each image (int16, on the host, in ``data``'s order).
    Count and predictions stay on the device until the end: one host sync per evaluation.
    The batch size is marked dynamic, so a compiled model runs the smaller last batch in the
    same graph as the others."""
    model.eval()
    n = len(data) if limit is None else min(limit, len(data))
    correct = torch.zeros((), dtype=torch.int64, device=device)
    predicted = torch.empty(n, dtype=torch.int16, device=device)  # class counts fit int16 (sun397: 397)
    for start in range(0, n, batch_size):
        end = min(start + batch_size, n)
        images, labels = data.batch(slice(start, end), device)
        torch._dynamo.maybe_mark_dynamic(images, 0)
        new_step(model)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(images)
        classes = logits.float().argmax(-1)
        predicted[start:end] = classes
        correct += (classes == labels).sum()
    predicted = predicted.cpu()  # the one wait for the device; the count below is ready by then
    return 100.0 * correct.item() / n, predicted


def _synchronized_elapsed(t0: float, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def _check_steps(losses: list[float], norms: list[float], sizes: list[int], epoch: int, first: int,
                 lr: float) -> None:
    """The epoch's deferred finiteness check: the first bad step, as a per-step check would say."""
    for i, (loss, norm, size) in enumerate(zip(losses, norms, sizes)):
        where = f"at epoch {epoch} step {first + i + 1}"
        if not math.isfinite(loss):
            raise RunFailed(f"loss is {loss / size} {where} (lr {lr:.3g}); try a lower --lr", epoch)
        if not math.isfinite(norm):
            raise RunFailed(f"gradient norm is {norm} {where} (exploding gradients, lr {lr:.3g}); "
                            "try a lower --lr", epoch)


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory so far in MiB: CUDA max allocated on GPU, peak RSS of this process on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _out_of_memory(micro: int, accum: int, epoch: int) -> RunFailed:
    return RunFailed(f"CUDA out of memory at batch size {micro} (training, epoch {epoch}); continue with "
                     f"--batch-size {max(1, micro // 2)} --accum-steps {accum * 2} (same effective batch of "
                     f"{micro * accum})", epoch)


def train(model: torch.nn.Module, train_set: Any, eval_set: Any, cfg: dict, run: RunDir,
          device: torch.device, checkpoint: dict | None = None, writer: Any = None,
          on_eval: Callable[[int, float], None] | None = None,
          before_eval: Callable[[], None] | None = None) -> TrainOutcome:
    """Train ``model`` (already on ``device``) on ``train_set`` and evaluate on ``eval_set``.

    ``cfg`` holds the recipe: epochs, batch_size, accum_steps, lr, wd, warmup, warmup_lr,
    min_lr, seed, eval_every, config_hash, and the :class:`LoopOptions` keys. ``checkpoint``
    (from :meth:`RunDir.load_checkpoint`) resumes a run. ``writer`` is an optional TensorBoard
    ``SummaryWriter``; ``before_eval()`` is called right before each evaluation and
    ``on_eval(epoch, accuracy)`` right after it.
    """
    check_recipe(cfg)
    opts = LoopOptions.from_cfg(cfg)
    epochs, micro, accum = cfg["epochs"], cfg["batch_size"], cfg["accum_steps"]
    step_batch = micro * accum  # images per optimizer step (the effective batch)
    n = len(train_set)
    steps_per_epoch = n // step_batch if opts.drop_last else math.ceil(n / step_batch)
    if steps_per_epoch == 0:
        raise UserError(f"{n} training images make no full step of {step_batch} (drop_last): use a smaller "
                        "--batch-size or turn drop_last off")
    if len(eval_set) == 0:
        raise UserError("the evaluation split is empty")
    bf16 = opts.precision == "bf16"  # autocast wherever asked: on CUDA, and on the CPU for tests and checks
    cast_for_precision(model, opts.precision, device)
    if opts.compile:
        compile_model(model, mode=compile_mode(opts.compile))
    train_set, eval_set = on_device(train_set, device), on_device(eval_set, device)
    eval_batch = eval_batch_size(opts, model, device)

    params = [p for p in model.parameters() if p.requires_grad]
    fused = device.type == "cuda" and all(p.is_cuda for p in params)  # one kernel for the whole update
    optimizer = torch.optim.AdamW(params, lr=cfg["lr"], weight_decay=cfg["wd"], fused=fused or None)
    scheduler = CosineLRScheduler(optimizer, t_initial=epochs, lr_min=cfg["min_lr"],
                                  warmup_t=cfg["warmup"], warmup_lr_init=cfg["warmup_lr"])
    progress = Progress()
    # predicted classes of the latest and of the best evaluation (a checkpoint keeps both, so the
    # best survives a resume; one written before they were kept has none)
    predicted: dict[str, torch.Tensor] = {}
    if checkpoint is not None:  # resume exactly where the checkpoint was taken
        _load_trainable(model, checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        for group in optimizer.param_groups:  # the saved flag is the saving machine's choice, not ours
            group["fused"] = fused or None
        optimizer_state_to_params(optimizer)
        scheduler.load_state_dict(checkpoint["scheduler"])
        progress = Progress(**checkpoint["progress"])
        torch.set_rng_state(checkpoint["rng"]["torch"])
        set_device_rng_state(checkpoint["rng"].get("cuda"), device)
        predicted = {k: v for k, v in checkpoint.get("predictions", {}).items() if torch.is_tensor(v)}
    run.truncate_metrics(progress.global_step)  # drop lines of a killed attempt after the checkpoint

    def save_checkpoint() -> None:
        if not torch.stack([torch.isfinite(p).all() for p in params]).all():  # never save what cannot train on
            raise RunFailed(f"trainable weights became non-finite by epoch {progress.epoch}", progress.epoch)
        run.save_checkpoint({
            "format": CHECKPOINT_FORMAT, "config_hash": cfg["config_hash"],
            "model": trainable_state(model), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "progress": vars(progress).copy(),
            "rng": {"torch": torch.get_rng_state(), "cuda": device_rng_state(device)},
            "predictions": predicted,
        })

    def evaluate_now(epoch: int, limit: int | None) -> tuple[float, torch.Tensor]:
        nonlocal eval_batch
        while True:
            if before_eval is not None:
                before_eval()
            try:
                return evaluate(model, eval_set, eval_batch, device, bf16=bf16, limit=limit)
            except torch.cuda.OutOfMemoryError:
                if eval_batch == opts.eval_batch_size:
                    routing = " (it changes predictions under Lily batch routing)" if uses_batch_routing(model) else ""
                    raise RunFailed(f"CUDA out of memory at evaluation batch size {eval_batch} (epoch {epoch}); "
                                    f"continue with --eval-batch-size {max(1, eval_batch // 2)}{routing}",
                                    epoch) from None
            torch.cuda.empty_cache()
            eval_batch = opts.eval_batch_size  # the automatic large batch did not fit: the given one

    # per-step loss sums and gradient norms stay on the device; read once per epoch
    step_loss = torch.zeros(steps_per_epoch, device=device)
    step_norm = torch.zeros(steps_per_epoch, device=device)
    step_sizes = [min(step_batch, n - s * step_batch) for s in range(steps_per_epoch)]
    epoch_bar = tqdm(range(progress.epoch, epochs), desc="epochs", initial=progress.epoch, total=epochs,
                     disable=None, dynamic_ncols=True)
    with _StopRequest() as stop:
        for epoch in epoch_bar:
            scheduler.step(schedule_epoch(epoch, opts.lr_schedule))  # warmup from warmup_lr, then cosine
            lr = optimizer.param_groups[0]["lr"]
            order = epoch_order(n, cfg["seed"], epoch, train_set.images.device)
            model.train()
            first = progress.step_in_epoch
            step_loss.zero_()
            step_norm.zero_()
            steps = tqdm(range(first, steps_per_epoch), desc=f"epoch {epoch + 1}", leave=False,
                         disable=None, dynamic_ncols=True)
            t0 = time.perf_counter()
            for step in steps:
                idx = order[step * step_batch:(step + 1) * step_batch]
                optimizer.zero_grad(set_to_none=True)
                try:
                    for chunk in idx.split(micro):
                        images, labels = train_set.batch(chunk, device)
                        new_step(model)
                        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                            loss = F.cross_entropy(model(images).float(), labels)
                        if fault_point("nan_loss"):
                            loss = loss * float("nan")
                        (loss * (len(chunk) / len(idx))).backward()  # mean over the whole step batch
                        step_loss[step] += loss.detach() * len(chunk)
                    step_norm[step] = torch.nn.utils.clip_grad_norm_(params, float("inf"))  # measures only
                    optimizer.step()
                except torch.cuda.OutOfMemoryError:
                    raise _out_of_memory(micro, accum, epoch + 1) from None
                progress.global_step += 1
                progress.step_in_epoch = step + 1
                progress.train_images += len(idx)
                progress.epoch_images += len(idx)
                if device.type == "cpu" and not steps.disable:  # free on the CPU; a sync on a GPU
                    steps.set_postfix(loss=f"{step_loss[step].item() / len(idx):.4f}")
                fault_point("train_step")
                if stop.requested:
                    break
            steps.close()
            seconds = _synchronized_elapsed(t0, device)  # the epoch's only wait for the device
            progress.epoch_train_s += seconds
            progress.train_s += seconds
            done = progress.step_in_epoch
            losses, norms = step_loss[first:done].tolist(), step_norm[first:done].tolist()
            _check_steps(losses, norms, step_sizes[first:done], epoch + 1, first, lr)
            for value in losses:  # summed in step order: a resumed epoch adds up to the same float
                progress.epoch_loss_sum += value
            if done < steps_per_epoch:  # stopped mid-epoch
                save_checkpoint()
                raise KeyboardInterrupt

            # end of epoch: log, evaluate when due, checkpoint at every evaluation
            record = {"epoch": epoch + 1, "step": progress.global_step,
                      "loss": progress.epoch_loss_sum / max(1, progress.epoch_images), "lr": lr,
                      "images_per_s": progress.epoch_images / max(progress.epoch_train_s, 1e-9)}
            progress.epoch, progress.step_in_epoch = epoch + 1, 0
            progress.epoch_loss_sum, progress.epoch_images, progress.epoch_train_s = 0.0, 0, 0.0
            if (epoch + 1) % cfg["eval_every"] == 0 or epoch + 1 == epochs:
                final = epoch + 1 == epochs
                limit = None if final or opts.eval_limit is None else min(opts.eval_limit, len(eval_set))
                t0 = time.perf_counter()
                record["eval_acc"], predicted["last"] = evaluate_now(epoch + 1, limit)
                progress.eval_s += time.perf_counter() - t0
                progress.eval_images += limit or len(eval_set)
                record["eval_images"] = limit or len(eval_set)
                progress.evals.append([epoch + 1, record["eval_acc"]])
                if progress.best[1] == epoch + 1:  # the new best (ties keep the earlier one, as best does)
                    predicted["best"] = predicted["last"]
                if on_eval is not None:
                    on_eval(epoch + 1, record["eval_acc"])
            if writer is not None:
                writer.add_scalar("train/loss", record["loss"], epoch + 1)
                writer.add_scalar("train/lr", lr, epoch + 1)
                writer.add_scalar("perf/images_per_s", record["images_per_s"], epoch + 1)
                writer.add_scalar("perf/peak_memory_mb", peak_memory_mb(device), epoch + 1)
                if "eval_acc" in record:
                    writer.add_scalar("eval/accuracy", record["eval_acc"], epoch + 1)
                writer.flush()
            run.append_metrics(record)
            epoch_bar.set_postfix(loss=f"{record['loss']:.4f}", acc=record.get("eval_acc", "-"))
            if "eval_acc" in record:
                tqdm.write(f"epoch {epoch + 1}/{epochs}: loss {record['loss']:.4f}, "
                           f"accuracy {record['eval_acc']:.2f}% ({record['images_per_s']:,.0f} images/s)")
            if "eval_acc" in record or stop.requested:
                save_checkpoint()
            if stop.requested:
                raise KeyboardInterrupt

    best_acc, best_epoch = progress.best
    compiled = compile_counters() if opts.compile else None
    if compiled is not None:
        tqdm.write(f"compile: {compile_summary(compiled)}")
        if compiled["graph_breaks"] or compiled["recompile_limit_hits"] or compiled["gave_up"]:
            warnings.warn("torch.compile left part of the model uncompiled (slower, same results); "
                          "TORCH_LOGS=graph_breaks,recompiles says where", RuntimeWarning, stacklevel=2)
    return TrainOutcome(final_acc=progress.evals[-1][1], best_acc=best_acc, best_epoch=best_epoch,
                        evals=progress.evals, train_s=progress.train_s, eval_s=progress.eval_s,
                        train_images_per_s=progress.train_images / max(progress.train_s, 1e-9),
                        steps=progress.global_step, eval_batch_size=eval_batch,
                        eval_images_per_s=progress.eval_images / max(progress.eval_s, 1e-9), compile=compiled,
                        final_predictions=predicted.get("last"), best_predictions=predicted.get("best"))
