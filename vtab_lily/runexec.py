"""The part of one run that holds its directory's lock: resume, train, record (run.py calls it).

Besides the training loop's checkpoint and metrics it writes, at each evaluation, the trainable
tensors (``snapshots/epoch_XXXX.pt``) and, for Lily, the router's mean expert weights over that
evaluation (``router_history.json``; the last one is ``router_weights.json``).
"""

from __future__ import annotations

import sys
from datetime import datetime, timezone
from typing import Any

from . import __version__, predictions, provenance
from .backbones import input_setup
from .data.manifest import list_sha256
from .memory import MemoryMeter
from .precision import use_precision
from .rundir import CHECKPOINT, FAILED, PREDICTIONS, RESULT, RunDir, trials_per_gpu
from .runspec import RunSpec

EXIT_FAILED = 1


def versions() -> dict:
    return {**provenance.versions(("torch", "timm")), "vtab_lily": __version__}


def utc_now() -> str:
    """ISO 8601 in UTC with a Z, so results from machines in other time zones sort correctly."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


SNAPSHOT_MAX_PARAMS = 10_000_000


class EvalRecorder:
    """``before_eval``/``on_eval`` hooks for the training loop: TensorBoard router scalars,
    router history (Lily) and a snapshot of the trainable tensors at each evaluation."""

    def __init__(self, model: Any, run: RunDir, writer: Any, config: dict, start_epoch: int):
        self.model, self.run, self.writer, self.config = model, run, writer, config
        self.lily = config["adapter"] == "lily"
        # full fine-tuning (86M parameters per snapshot) and any method past 10M trainable
        # parameters (Affix with its projection: 116M) keep no snapshots
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        self.snapshots = config["adapter"] != "full" and trainable <= SNAPSHOT_MAX_PARAMS
        old = run.read_router_history() if start_epoch > 0 else None
        self.history = {"sites": [], "experts": 0, "epochs": [], "weights": []}
        if old is not None and not (isinstance(old.get("epochs"), list) and isinstance(old.get("weights"), list)
                                    and len(old["epochs"]) == len(old["weights"])):
            print(f"warning: {run / 'router_history.json'}: malformed, the router history restarts here", file=sys.stderr)
            old = None
        if old:  # keep the evaluations the checkpoint covers
            kept = [i for i, e in enumerate(old["epochs"]) if isinstance(e, int) and e <= start_epoch]
            self.history = {"sites": old.get("sites", []), "experts": old.get("experts", 0),
                            "epochs": [old["epochs"][i] for i in kept], "weights": [old["weights"][i] for i in kept]}

    def before_eval(self) -> None:
        if self.lily:
            from .adapters import reset_router_weights

            reset_router_weights(self.model)  # the window is this evaluation only

    def on_eval(self, epoch: int, acc: float) -> None:
        if self.lily:
            self._routers(epoch)
        if self.snapshots:
            from .train import trainable_state

            self.run.save_snapshot(epoch, trainable_state(self.model))

    def _routers(self, epoch: int) -> None:
        from .adapters import lily_router_weights

        weights = {site: [float(w) for w in ws] for site, ws in lily_router_weights(self.model).items()}
        if self.writer is not None:
            for site, ws in weights.items():
                for i, w in enumerate(ws):
                    self.writer.add_scalar(f"router/{site}/expert{i}", w, epoch)
        if weights:
            self.history["sites"] = list(weights)
            self.history["experts"] = max(len(w) for w in weights.values())
            self.history["epochs"].append(epoch)
            self.history["weights"].append(list(weights.values()))
            self.run.write_router_history(self.history)


def router_weights_json(model: Any) -> dict | None:
    """``{"sites", "experts", "weights"}`` from the Lily routers' last recorded window."""
    from .adapters import lily_router_weights

    weights = {site: [float(w) for w in ws] for site, ws in lily_router_weights(model).items()}
    if not weights:
        return None
    return {"sites": list(weights), "experts": max(len(w) for w in weights.values()),
            "weights": list(weights.values())}


def kernels_for(config: dict, device: Any) -> dict | None:
    """The Vim scan/conv path on ``device`` (``backbones.scan_paths``), None for ViT."""
    from . import backbones

    if backbones.backbone_family(config["backbone"]) != "vim":
        return None
    return dict(backbones.scan_paths(device))


def data_provenance(config: dict, loaded: tuple = (), allow_stale: bool = False) -> dict:
    """Fingerprint, encoding and source of the data the run read (``loaded``: its SplitData),
    checked against the task's manifest before any training: a difference (or a malformed
    manifest) is a UserError unless ``allow_stale`` (``--allow-stale-data``, then recorded)."""
    from .data.readcheck import check_read_data

    return check_read_data(config["data_root"], config["task"], loaded, allow=allow_stale)


def run_locked(spec: RunSpec, model: Any, train_set: Any, eval_set: Any, device: Any,
               data: dict | None = None) -> tuple[int, str]:
    """Train and record the run ``spec`` names, holding its folder's lock (resume, fail, succeed).
    ``data``: the checked provenance of the loaded splits (:func:`data_provenance`)."""
    from .train import RunFailed, train
    from .train_setup import on_device

    run, config = spec.run_dir, spec.config
    done = run.read_result()
    if done and not spec.force:  # another process finished it while we were loading
        print(f"already complete: {run / RESULT}")
        return 0, "skipped (complete)"
    if spec.force:
        run.reset()
    run.remove_stale_temp_files()  # we hold the lock: their writers are dead
    failed = run.read_failed()
    if failed:
        print(f"previous attempt failed at epoch {failed.get('epoch')}: {failed.get('reason')}; "
              "resuming from its last good checkpoint (--force starts clean)", file=sys.stderr)
        run.clear_failed()
    run.write_config(spec.config_dict())
    checkpoint = run.load_checkpoint()
    if checkpoint is not None and checkpoint.get("config_hash") != spec.config_hash:
        print(f"warning: {run / CHECKPOINT} belongs to another config; starting from scratch", file=sys.stderr)
        checkpoint = None
    progress = checkpoint["progress"] if checkpoint else {}
    start, step = progress.get("epoch", 0), progress.get("step_in_epoch", 0)
    state = "new" if not checkpoint else (f"resuming in epoch {start + 1} at step {step + 1}" if step
                                          else f"resuming after epoch {start}")
    print(f"run {run} ({state}): {config['backbone']} {config['adapter']} on {config['task']}, "
          f"{spec.params['total']:,} trainable parameters, {device}")
    if config.get("adapter_task_settings"):
        from .adapters.pertask import describe

        print(f"per-task settings: {describe(config['adapter_task_settings'])}")
    if data is None:
        data = data_provenance(config, (train_set, eval_set), spec.options.allow_stale_data)
    if data.get("stale_manifest"):
        print(f"warning: --allow-stale-data: recording the data as read ({data['fingerprint']}), not the "
              f"manifest's {data['stale_manifest']['fingerprint']}", file=sys.stderr)
    kernels = kernels_for(config, device)
    if kernels:
        print(f"Vim kernels on {device}: scan {kernels['scan']}, conv {kernels['conv']}")

    model.to(device)
    meter = MemoryMeter(device)  # the splits' bytes on the GPU are counted apart from the method's
    train_dev, eval_dev = meter.place(lambda split: on_device(split, device), train_set, eval_set)
    writer = None
    if config["tensorboard"]:
        from torch.utils.tensorboard import SummaryWriter

        tb_dir = run.tensorboard_dir(spec.label, config["seed"])  # named by method and seed
        writer = SummaryWriter(str(tb_dir), purge_step=start + 1)  # drop a killed attempt's later events
    recorder = EvalRecorder(model, run, writer, config, start)
    recipe = dict(spec.config_dict(), config_hash=spec.config_hash)
    try:
        with use_precision(config["precision"]):  # torch's TF32 switches for this run only
            outcome = train(model, train_dev, eval_dev, recipe, run, device, checkpoint, writer, recorder.on_eval,
                            before_eval=recorder.before_eval)
        routers = router_weights_json(model) if config["adapter"] == "lily" else None
        if routers:
            run.write_router_weights(routers)
        predicted = write_predictions(run, spec, outcome, eval_set)  # before result.json: a result names it
        run.write_result(build_result(spec, outcome, device, kernels, data, meter.record(), predicted))
    except RunFailed as err:
        _record_failure(run, err.reason, err.epoch)
        print(f"error: run failed at epoch {err.epoch}: {err.reason} (recorded in {run / FAILED})", file=sys.stderr)
        return EXIT_FAILED, f"failed at epoch {err.epoch}: {err.reason}"
    except OSError as err:  # disk full, read-only folder: the previous checkpoint stays intact
        reason = f"write failed: {err}"
        _record_failure(run, reason, None)
        print(f"error: {reason}; the last checkpoint in {run} is kept, no result recorded", file=sys.stderr)
        return EXIT_FAILED, f"failed: {reason}"
    finally:
        if writer is not None:
            writer.close()
    split = config["eval_split"]
    selected = f"test-selected {outcome.best_acc:.2f}% at epoch {outcome.best_epoch}" if split == "test" else \
        f"best on {split} {outcome.best_acc:.2f}% at epoch {outcome.best_epoch}"
    if config["report"] == "test-selected":
        print(f"done: {selected} (paper rule); final {split} accuracy {outcome.final_acc:.2f}%, "
              f"{outcome.train_s:.1f} s training -> {run / RESULT}")
    else:
        print(f"done: {split} accuracy {outcome.final_acc:.2f}% ({selected}), "
              f"{outcome.train_s:.1f} s training -> {run / RESULT}")
    return 0, f"done: final {outcome.final_acc:.2f}%, {selected}"


def write_predictions(run: RunDir, spec: RunSpec, outcome: Any, eval_set: Any) -> dict | None:
    """Write ``predictions.npz`` (:mod:`vtab_lily.predictions`) and return result.json's entry for it;
    None, with no file left behind, when the final evaluation's classes are unknown (a run resumed
    from a checkpoint written before they were kept, after its last evaluation)."""
    final, best, n = outcome.final_predictions, outcome.best_predictions, len(eval_set)
    why = ""
    if final is None or len(final) != n:
        why = "resumed from a checkpoint that predates them"
    elif eval_set.origin is None:
        why = "the evaluation split was not loaded from a list file"
    elif (spec.config.get("num_classes") or 0) > predictions.MAX_CLASS + 1:
        why = f"{spec.config['num_classes']} classes do not fit int16"
    if why:
        (run / PREDICTIONS).unlink(missing_ok=True)  # a killed earlier attempt's file is not this result's
        print(f"note: no per-example predictions recorded ({why})", file=sys.stderr)
        return None
    note = ""
    if best is None:
        note = "resumed from a checkpoint written before predictions were kept, after the selected evaluation"
    elif len(best) != n:
        note = f"the selected evaluation covered only the first {len(best)} of {n} examples (eval_limit)"
        best = None
    digest = list_sha256(eval_set.origin.split_list)
    labels = eval_set.labels.numpy()
    run.write_predictions(predictions.encode(labels, final.numpy(), None if best is None else best.numpy(),
                                             spec.config_hash, digest))
    return predictions.record(n, spec.config["eval_split"], digest, note)


def _record_failure(run: RunDir, reason: str, epoch: int | None) -> None:
    try:
        run.write_failed(reason, epoch)
    except OSError as err:  # the disk may be the problem; the message below still says what happened
        print(f"warning: could not write {run / FAILED}: {err}", file=sys.stderr)


def build_result(spec: RunSpec, outcome: Any, device: Any, kernels: dict | None, data: dict, memory: dict,
                 predicted: dict | None = None) -> dict:
    """result.json as specified in ARCHITECTURE.md (schema 1, round-2 keys optional for readers)."""
    config = spec.config_dict()
    result = {
        "schema": 1, "status": "complete",
        "backbone": config["backbone"], "adapter": config["adapter"], "task": config["task"],
        "suite": config["suite"], "protocol": config["protocol"], "seed": config["seed"],
        "method": spec.label, "method_hash": spec.method_hash, "deviations": list(spec.deviations),
        "config": config, "config_hash": spec.config_hash,
        "accuracy": {"final": outcome.final_acc, "best": outcome.best_acc, "best_epoch": outcome.best_epoch,
                     "eval_split": config["eval_split"], "best_is_test_selected": config["eval_split"] == "test",
                     "reported": config["report"]},
        "params": dict(spec.params), "precision": config["precision"], "data": data,
        "input": input_setup(config["backbone"], config["normalize"], config["img_size"]),  # normalisation by name
        "time": {"train_s": round(outcome.train_s, 3), "eval_s": round(outcome.eval_s, 3),
                 "train_images_per_s": round(outcome.train_images_per_s, 2),
                 "eval_images_per_s": round(outcome.eval_images_per_s, 2), "eval_batch_size": outcome.eval_batch_size},
        "memory": memory,
        "device": str(device), "versions": versions(), "git_commit": provenance.git_commit(),
        "finished_at": utc_now(),
    }
    shared = trials_per_gpu() if device.type == "cuda" else 1
    if shared > 1:  # contended: the leaderboard keeps these times out of its solo column
        result["time"]["trials_per_gpu"] = shared
    if kernels:
        result["kernels"] = kernels
    if predicted is not None:  # predictions.npz (absent: a resumed run that could not know them)
        result["predictions"] = predicted
    if getattr(outcome, "compile", None) is not None:  # what torch.compile did (train_setup.compile_counters)
        result["compile"] = outcome.compile
    return result
