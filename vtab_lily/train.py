"""The training loop: one function, :func:`train`, readable top to bottom.

AdamW over the trainable parameters, timm's cosine schedule with linear warmup (stepped per
epoch, as in the VTAB-1K recipe), bf16 autocast on CUDA and fp32 on CPU. Batches are indexed
straight from the data layer's in-memory uint8 tensors, shuffled per epoch by a generator
seeded with (seed, epoch), so a resumed run sees the same batches as an uninterrupted one.
Evaluation runs every ``eval_every`` epochs and at the end, and every evaluation saves a
checkpoint (trainable weights, optimizer, scheduler, RNG, progress) that :func:`train`
resumes from. A non-finite loss or gradient norm ends the run with :class:`RunFailed`;
SIGINT/SIGTERM finish the current step, save, and raise ``KeyboardInterrupt``.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from timm.scheduler import CosineLRScheduler
from tqdm import tqdm

from .rundir import RunDir, fault_point

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


@torch.no_grad()
def evaluate(model: torch.nn.Module, data: Any, batch_size: int, device: torch.device) -> float:
    """Top-1 accuracy (%) over ``data`` in fixed order and batches (Lily's routing averages
    over a batch, so predictions depend on the batch composition: keep it reproducible)."""
    model.eval()
    correct = 0
    for idx in torch.arange(len(data)).split(batch_size):
        images, labels = data.batch(idx, device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = model(images)
        correct += (logits.argmax(-1) == labels).sum().item()
    return 100.0 * correct / len(data)


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory so far in MiB: CUDA max allocated on GPU, peak RSS of this process on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _out_of_memory(micro: int, accum: int, epoch: int, phase: str) -> RunFailed:
    return RunFailed(f"CUDA out of memory at batch size {micro} ({phase}, epoch {epoch}); continue with "
                     f"--batch-size {max(1, micro // 2)} --accum-steps {accum * 2} (same effective batch of "
                     f"{micro * accum})", epoch)


def train(model: torch.nn.Module, train_set: Any, eval_set: Any, cfg: dict, run: RunDir,
          device: torch.device, checkpoint: dict | None = None, writer: Any = None,
          on_eval: Callable[[int, float], None] | None = None) -> TrainOutcome:
    """Train ``model`` (already on ``device``) on ``train_set`` and evaluate on ``eval_set``.

    ``cfg`` holds the recipe: epochs, batch_size, accum_steps, lr, wd, warmup, warmup_lr,
    min_lr, seed, eval_every, config_hash. ``checkpoint`` (from :meth:`RunDir.load_checkpoint`)
    resumes a run. ``writer`` is an optional TensorBoard ``SummaryWriter``; ``on_eval`` is
    called after each evaluation (e.g. to log router weights).
    """
    epochs, micro, accum = cfg["epochs"], cfg["batch_size"], cfg["accum_steps"]
    step_batch = micro * accum  # images per optimizer step (the effective batch)
    use_amp = device.type == "cuda"
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg["lr"], weight_decay=cfg["wd"])
    scheduler = CosineLRScheduler(optimizer, t_initial=epochs, lr_min=cfg["min_lr"],
                                  warmup_t=cfg["warmup"], warmup_lr_init=cfg["warmup_lr"])
    progress = Progress()
    if checkpoint is not None:  # resume exactly where the checkpoint was taken
        _load_trainable(model, checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        progress = Progress(**checkpoint["progress"])
        torch.set_rng_state(checkpoint["rng"]["torch"])
        if device.type == "cuda" and checkpoint["rng"]["cuda"]:
            torch.cuda.set_rng_state_all(checkpoint["rng"]["cuda"])
    run.truncate_metrics(progress.global_step)  # drop lines of a killed attempt after the checkpoint

    def save_checkpoint() -> None:
        for p in params:  # never save weights a later resume could not train from
            if not torch.isfinite(p).all():
                raise RunFailed(f"trainable weights became non-finite by epoch {progress.epoch}", progress.epoch)
        run.save_checkpoint({
            "format": CHECKPOINT_FORMAT, "config_hash": cfg["config_hash"],
            "model": trainable_state(model), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "progress": vars(progress).copy(),
            "rng": {"torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else []},
        })

    n = len(train_set)
    steps_per_epoch = math.ceil(n / step_batch)  # the last step of an epoch may be smaller
    epoch_bar = tqdm(range(progress.epoch, epochs), desc="epochs", initial=progress.epoch, total=epochs,
                     disable=None, dynamic_ncols=True)
    with _StopRequest() as stop:
        for epoch in epoch_bar:
            scheduler.step(epoch)  # per-epoch schedule: warmup from warmup_lr, then cosine to min_lr
            lr = optimizer.param_groups[0]["lr"]
            order = torch.randperm(n, generator=torch.Generator().manual_seed(cfg["seed"] * 100_003 + epoch))
            model.train()
            steps = tqdm(range(progress.step_in_epoch, steps_per_epoch), desc=f"epoch {epoch + 1}", leave=False,
                         disable=None, dynamic_ncols=True)
            for step in steps:
                t0 = time.perf_counter()
                idx = order[step * step_batch:(step + 1) * step_batch]
                optimizer.zero_grad(set_to_none=True)
                loss_sum = 0.0
                try:
                    for chunk in idx.split(micro):
                        images, labels = train_set.batch(chunk, device)
                        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                            loss = F.cross_entropy(model(images).float(), labels)
                        if fault_point("nan_loss"):
                            loss = loss * float("nan")
                        (loss * (len(chunk) / len(idx))).backward()  # mean over the whole step batch
                        loss_sum += loss.item() * len(chunk)
                except torch.cuda.OutOfMemoryError:
                    raise _out_of_memory(micro, accum, epoch + 1, "training") from None
                if not math.isfinite(loss_sum):
                    raise RunFailed(f"loss is {loss_sum / len(idx)} at epoch {epoch + 1} step {step + 1} "
                                    f"(lr {lr:.3g}); try a lower --lr", epoch + 1)
                grad_norm = torch.nn.utils.clip_grad_norm_(params, float("inf"))  # measures only
                if not torch.isfinite(grad_norm):
                    raise RunFailed(f"gradient norm is {grad_norm.item()} at epoch {epoch + 1} step {step + 1} "
                                    f"(exploding gradients, lr {lr:.3g}); try a lower --lr", epoch + 1)
                optimizer.step()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                dt = time.perf_counter() - t0
                progress.global_step += 1
                progress.step_in_epoch = step + 1
                progress.epoch_loss_sum += loss_sum
                progress.epoch_images += len(idx)
                progress.epoch_train_s += dt
                progress.train_s += dt
                progress.train_images += len(idx)
                steps.set_postfix(loss=f"{loss_sum / len(idx):.4f}")
                fault_point("train_step")
                if stop.requested and step + 1 < steps_per_epoch:
                    save_checkpoint()
                    raise KeyboardInterrupt
            steps.close()

            # end of epoch: log, evaluate when due, checkpoint at every evaluation
            record = {"epoch": epoch + 1, "step": progress.global_step,
                      "loss": progress.epoch_loss_sum / max(1, progress.epoch_images), "lr": lr,
                      "images_per_s": progress.epoch_images / max(progress.epoch_train_s, 1e-9)}
            progress.epoch, progress.step_in_epoch = epoch + 1, 0
            progress.epoch_loss_sum, progress.epoch_images, progress.epoch_train_s = 0.0, 0, 0.0
            if (epoch + 1) % cfg["eval_every"] == 0 or epoch + 1 == epochs:
                t0 = time.perf_counter()
                try:
                    record["eval_acc"] = evaluate(model, eval_set, micro, device)
                except torch.cuda.OutOfMemoryError:
                    raise _out_of_memory(micro, accum, epoch + 1, "evaluation") from None
                progress.eval_s += time.perf_counter() - t0
                progress.evals.append([epoch + 1, record["eval_acc"]])
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
                           f"accuracy {record['eval_acc']:.2f}%")
            if "eval_acc" in record or stop.requested:
                save_checkpoint()
            if stop.requested:
                raise KeyboardInterrupt

    best_acc, best_epoch = progress.best
    return TrainOutcome(final_acc=progress.evals[-1][1], best_acc=best_acc, best_epoch=best_epoch,
                        evals=progress.evals, train_s=progress.train_s, eval_s=progress.eval_s,
                        train_images_per_s=progress.train_images / max(progress.train_s, 1e-9),
                        steps=progress.global_step)
