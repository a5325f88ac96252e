"""One fine-tuning run: ``python -m vtab_lily.run --backbone vit --adapter lily --task dtd``.

Resolves the full config (recipe defaults per backbone family), checks every input before any
work (names, adapter options, data, checkpoint, batch size), then owns
``<out>/<backbone>/<adapter>/<task>/<config hash>/`` under a lock: rerunning the same command
resumes from the last checkpoint, a finished run is skipped (``--force`` redoes it), and a run
that failed (``failed.json``) resumes from its last good checkpoint, the one saved at the last
evaluation before the failure (``--force`` starts it clean).

Exit codes: 0 done or skipped, 1 the run failed (non-finite loss, out of memory, disk write),
2 bad input (nothing written), 75 the run is locked by another process, 130 interrupted
(Ctrl-C stops after the current step and saves a checkpoint first).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

from . import __version__, provenance
from .errors import UserError, run_cli, unknown_name
from .fsutil import LockBusy
from .rundir import CHECKPOINT, FAILED, RESULT, TB, RunDir, config_hash, json_normal, method_hash
from .tasks import PROTOCOLS, get_task, task_names

EXIT_FAILED, EXIT_LOCKED = 1, 75  # 2: UserError and 130: interrupted come from errors.run_cli
ADAPTER_NAMES = ("lily", "lora", "adaptformer", "linear", "full")
ADAPTER_OPTIONS = ("rank", "ne", "ne_a", "ne_b", "scale", "targets", "router", "routing", "alpha")

# The VTAB-1K recipe per backbone family (REFERENCE.md section 3): AdamW, cosine with linear
# warmup from warmup_lr to lr, then down to min_lr.
RECIPES = {
    "vit": {"lr": 1e-3, "wd": 1e-4, "warmup": 10, "drop_path": 0.1},
    "vim": {"lr": 1.25e-3, "wd": 1e-3, "warmup": 5, "drop_path": 0.05},
}
WARMUP_LR, MIN_LR = 1e-6, 1e-5
# --demo: the generated demo suite and tiny random-init backbones, a schedule short enough for
# all demo tasks to finish on 2 CPU cores in a few minutes.
# The frozen tiny backbones are random, so the adapters need a higher lr, and no warmup epoch.
DEMO = {"data_root": "data/vtab-demo", "img_size": 32, "epochs": 10, "warmup": 0, "eval_every": 5,
        "batch_size": 64, "checkpoint": "none", "lr": 1e-2, "drop_path": 0.0, "threads": 1}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m vtab_lily.run", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--backbone", default="vit", help="backbone name, or the short names vit (vit-b16-in21k; "
                   "demo: vit-tiny-test) and vim (vim-s; demo: vim-tiny-test)")
    p.add_argument("--adapter", default="lily", help="|".join(ADAPTER_NAMES) + " (linear: head only)")
    p.add_argument("--task", help="task folder name (python -m vtab_lily.tasks lists them)")
    a = p.add_argument_group("adapter options (unset ones take the adapter's defaults)")
    a.add_argument("--rank", type=int)
    a.add_argument("--ne", type=int, help="Lily: A groups and B experts")
    a.add_argument("--ne-a", type=int, help="Lily: number of A groups")
    a.add_argument("--ne-b", type=int, help="Lily: number of B experts")
    a.add_argument("--scale", type=float)
    a.add_argument("--targets", type=lambda s: tuple(t.strip() for t in s.split(",") if t.strip()),
                   help="comma-separated targets, e.g. k,v,mlp")
    a.add_argument("--router", help="Lily: per_site | single | none")
    a.add_argument("--routing", help="Lily: sample | eq2 | batch")
    a.add_argument("--alpha", type=float, help="LoRA alpha")
    r = p.add_argument_group("recipe (unset: the backbone family's VTAB-1K defaults)")
    r.add_argument("--epochs", type=int, default=None, help="default 100 (demo: %d)" % DEMO["epochs"])
    r.add_argument("--batch-size", type=int, default=None, help="micro-batch size, default 64")
    r.add_argument("--accum-steps", type=int, default=1, help="micro-batches per optimizer step")
    r.add_argument("--lr", type=float, help="ViT 1e-3, Vim 1.25e-3")
    r.add_argument("--wd", type=float, help="ViT 1e-4, Vim 1e-3")
    r.add_argument("--warmup", type=int, help="warmup epochs: ViT 10, Vim 5")
    r.add_argument("--drop-path", type=float, help="ViT 0.1, Vim 0.05")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=True,
                   help="ImageNet mean/std normalisation of the inputs")
    r.add_argument("--img-size", type=int, help="default 224 (demo: 32)")
    r.add_argument("--protocol", choices=sorted(PROTOCOLS), default="test",
                   help="test: train800val200 -> test; val: train800 -> val200")
    r.add_argument("--eval-every", type=int, default=None, help="epochs between evaluations, default 10")
    w = p.add_argument_group("where and how")
    w.add_argument("--data-root", help="suite root, default data/vtab-1k (demo: data/vtab-demo)")
    w.add_argument("--checkpoint", help="backbone weights file; default: the backbone's file under backbones/ "
                   "(see backbones/README.md); 'none' for random init (demo and tests)")
    w.add_argument("--out", default="runs", help="runs folder")
    w.add_argument("--method-name", help="label of the method in result.json and the leaderboard (default: "
                   "from the adapter config, e.g. 'lily r=32 ne=4 s=1 k,v,mlp'); part of the run's identity")
    w.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    w.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's; demo: 1, faster "
                   "for tiny models and when several runs share the cores)")
    w.add_argument("--demo", action="store_true", help="demo suite (generated on demand), tiny backbone, "
                   "32 px, short schedule")
    w.add_argument("--dry-run", action="store_true", help="build the model, print config and parameter counts")
    w.add_argument("--force", action="store_true", help="redo a finished or failed run from scratch")
    w.add_argument("--no-tensorboard", dest="tensorboard", action="store_false")
    w.add_argument("--list-tasks", action="store_true", help="check the other arguments, print the task names")
    w.add_argument("--debug", action="store_true", help="full tracebacks")
    return p


def _positive(name: str, value: Any, minimum: float = 1) -> None:
    if value is None or value < minimum:
        raise UserError(f"--{name.replace('_', '-')} must be >= {minimum}, got {value}")


def resolve_config(args: argparse.Namespace) -> dict:
    """Every option after defaults, with the task optional (``--list-tasks``). No I/O."""
    from .backbones import backbone_family, resolve_backbone_name

    backbone = resolve_backbone_name(args.backbone, demo=args.demo)  # vit / vim short names
    if args.adapter not in ADAPTER_NAMES:
        raise unknown_name("adapter", args.adapter, ADAPTER_NAMES)
    suite_name = "demo" if args.demo else "vtab"
    task = get_task(args.task, suite_name) if args.task else None
    recipe = RECIPES[backbone_family(backbone)] | (DEMO if args.demo else {})
    pick = lambda key, default: default if getattr(args, key) is None else getattr(args, key)  # noqa: E731
    options = {k: getattr(args, k) for k in ADAPTER_OPTIONS if getattr(args, k) is not None}
    train_split, eval_split = PROTOCOLS[args.protocol]
    config = {
        "backbone": backbone, "adapter": args.adapter, "adapter_options": options, "method_name": args.method_name,
        "task": task.name if task else None, "suite": suite_name,
        "num_classes": task.num_classes if task else None,
        "protocol": args.protocol, "train_split": train_split, "eval_split": eval_split,
        "epochs": pick("epochs", recipe.get("epochs", 100)),
        "batch_size": pick("batch_size", recipe.get("batch_size", 64)), "accum_steps": args.accum_steps,
        "lr": pick("lr", recipe["lr"]), "wd": pick("wd", recipe["wd"]), "warmup": pick("warmup", recipe["warmup"]),
        "warmup_lr": WARMUP_LR, "min_lr": MIN_LR, "drop_path": pick("drop_path", recipe["drop_path"]),
        "seed": args.seed, "normalize": args.normalize, "img_size": pick("img_size", recipe.get("img_size", 224)),
        "eval_every": pick("eval_every", recipe.get("eval_every", 10)),
        # machine-local (not hashed): where things are and where it runs
        "data_root": pick("data_root", recipe.get("data_root", "data/vtab-1k")), "out": args.out,
        "device": args.device, "threads": pick("threads", recipe.get("threads")),
        "checkpoint": pick("checkpoint", recipe.get("checkpoint")), "tensorboard": args.tensorboard,
    }
    for key in ("epochs", "batch_size", "accum_steps", "img_size", "eval_every"):
        _positive(key, config[key])
    if config["threads"] is not None:
        _positive("threads", config["threads"])
    for key in ("lr", "wd", "drop_path"):
        _positive(key, config[key], 0)
    _positive("warmup", config["warmup"], 0)
    if config["drop_path"] >= 1:
        raise UserError(f"--drop-path must be below 1, got {config['drop_path']}")
    return config


def resolve_checkpoint(config: dict) -> Path | None:
    """The backbone weights file to load (None: random init); a clear error when it is missing."""
    from .backbones import get_spec

    given = config["checkpoint"]
    if isinstance(given, str) and given.lower() == "none":
        return None
    if given:
        path, how = Path(given), "the file given by --checkpoint"
    else:
        file = get_spec(config["backbone"]).checkpoint_file
        if file is None:
            raise UserError(f"backbone {config['backbone']} has no published weights (a test config): "
                            "pass --checkpoint none for random init, or --checkpoint PATH")
        path, how = Path("backbones") / file, f"where {config['backbone']}'s weights are expected"
    if not path.is_file():
        raise UserError(f"backbone checkpoint {path} not found ({how}); see backbones/README.md for how to get it, "
                        "or pass --checkpoint PATH (--checkpoint none: random init, for tests only)")
    return path


def build_model(config: dict, weights: Path | None) -> tuple[Any, dict, dict]:
    """Seeded backbone + adapter. Returns (model, resolved adapter config, parameter counts)."""
    import dataclasses

    from .adapters import apply_adapter, count_parameters
    from .backbones import create_backbone

    seed_everything(config["seed"])  # adapter and head init depend on it
    model = create_backbone(config["backbone"], num_classes=config["num_classes"] or 2, checkpoint=weights,
                            img_size=config["img_size"], drop_path=config["drop_path"])
    model = apply_adapter(model, config["adapter"], **config["adapter_options"])  # validates the options
    adapter_config = json_normal(dataclasses.asdict(model.adapter_config))
    return model, adapter_config, count_parameters(model)


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def method_label(adapter: str, adapter_config: dict) -> str:
    """Short human label, e.g. ``lily r=32 ne=4 s=1 k,v,mlp``."""
    short = {"rank": "r", "scale": "s"}
    cfg = dict(adapter_config)
    if cfg.get("ne_a") is not None and cfg.get("ne_a") == cfg.get("ne_b"):
        cfg["ne"] = cfg.pop("ne_a")
        cfg.pop("ne_b")
    parts = [adapter]
    for key, value in cfg.items():
        if value is None or isinstance(value, dict) or key in ("routing", "router", "dropout"):
            continue
        if isinstance(value, (list, tuple)):
            parts.append(",".join(map(str, value)))
        else:
            value = f"{value:g}" if isinstance(value, float) else value
            parts.append(f"{short.get(key, key)}={value}")
    return " ".join(parts)


def pick_device(name: str) -> Any:
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device: unknown device {name!r} (auto, cpu, cuda, cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available here (use --device cpu or auto)")
    return device


def load_data(config: dict) -> tuple[Any, Any]:
    from .data import ensure_demo, load_split
    from .tasks import suite

    root = Path(config["data_root"])
    if config["suite"] == "demo" and (root == Path(DEMO["data_root"]) or not root.exists()):
        ensure_demo(root)  # generated on demand; an existing custom root is used as it is
    task = suite(config["suite"])[config["task"]]
    kwargs = {"img_size": config["img_size"], "normalize": config["normalize"]}
    train_set = load_split(config["data_root"], task, config["train_split"], **kwargs)
    eval_set = load_split(config["data_root"], task, config["eval_split"], **kwargs)
    if config["batch_size"] > len(train_set):
        raise UserError(f"--batch-size {config['batch_size']} is larger than the training split "
                        f"{config['train_split']} of {config['task']} ({len(train_set)} images)")
    return train_set, eval_set


def versions() -> dict:
    return {**provenance.versions(("torch", "timm")), "vtab_lily": __version__}


def router_weights_json(model: Any) -> dict | None:
    """``{"sites", "experts", "weights"}`` from the Lily routers' last recorded mean weights."""
    from .adapters import lily_router_weights

    weights = {site: [float(w) for w in ws] for site, ws in lily_router_weights(model).items()}
    if not weights:
        return None
    return {"sites": list(weights), "experts": max(len(w) for w in weights.values()),
            "weights": list(weights.values())}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = resolve_config(args)
    if args.list_tasks:
        print("\n".join(task_names(config["suite"])))
        return 0
    if not config["task"]:
        raise UserError("--task is required (python -m vtab_lily.tasks lists them)")
    device = pick_device(config["device"])
    if config["threads"]:
        import torch

        torch.set_num_threads(config["threads"])
    weights = resolve_checkpoint(config)
    model, adapter_config, params = build_model(config, weights)  # validates the adapter options
    config["adapter_config"] = adapter_config
    config["pretrained"] = weights.name if weights else None
    run = RunDir.for_config(config["out"], config)
    done = run.read_result()
    if done and not args.force and not args.dry_run:
        print(f"already complete: {run / RESULT} (accuracy {done['accuracy']['final']:.2f}%); --force to redo")
        return 0
    if args.dry_run:  # no data needed
        print(json.dumps({"config": config, "config_hash": config_hash(config), "run_dir": str(run), "params": params},
                         indent=2))
        print(f"parameters: adapter {params['adapter']:,}, head {params['head']:,}, "
              f"trainable total {params['total']:,}, backbone {params['backbone']:,}")
        return 0
    train_set, eval_set = load_data(config)
    try:
        with run.lock():
            return _run_locked(args, config, run, model, params, train_set, eval_set, device)
    except LockBusy as err:
        print(f"running elsewhere: {err}", file=sys.stderr)
        return EXIT_LOCKED


def _run_locked(args: argparse.Namespace, config: dict, run: RunDir, model: Any, params: dict,
                train_set: Any, eval_set: Any, device: Any) -> int:
    from .train import RunFailed, train

    done = run.read_result()
    if done and not args.force:  # another process finished it while we were loading
        print(f"already complete: {run / RESULT}")
        return 0
    if args.force:
        run.reset()
    run.remove_stale_temp_files()  # we hold the lock: their writers are dead
    failed = run.read_failed()
    if failed:
        print(f"previous attempt failed at epoch {failed.get('epoch')}: {failed.get('reason')}; "
              "resuming from its last good checkpoint (--force starts clean)", file=sys.stderr)
        run.clear_failed()
    run.write_config(config)
    checkpoint = run.load_checkpoint()
    if checkpoint is not None and checkpoint.get("config_hash") != config_hash(config):
        print(f"warning: {run / CHECKPOINT} belongs to another config; starting from scratch", file=sys.stderr)
        checkpoint = None
    start = checkpoint["progress"]["epoch"] if checkpoint else 0
    print(f"run {run} ({'resuming after epoch %d' % start if checkpoint else 'new'}): {config['backbone']} "
          f"{config['adapter']} on {config['task']}, {params['total']:,} trainable parameters, {device}")

    model.to(device)
    train_dev = train_set.to(device) if device.type == "cuda" else train_set  # whole train split on GPU
    writer = None
    if config["tensorboard"]:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(run / TB), purge_step=start + 1)  # drop a killed attempt's later events
    on_eval = _router_logger(model, writer, config["epochs"]) if config["adapter"] == "lily" else None
    recipe = dict(config, config_hash=config_hash(config))
    try:
        outcome = train(model, train_dev, eval_set, recipe, run, device, checkpoint, writer, on_eval)
        routers = router_weights_json(model) if config["adapter"] == "lily" else None
        if routers:
            run.write_router_weights(routers)
        run.write_result(build_result(config, params, outcome, device))
    except RunFailed as err:
        _record_failure(run, err.reason, err.epoch)
        print(f"error: run failed at epoch {err.epoch}: {err.reason} (recorded in {run / FAILED})", file=sys.stderr)
        return EXIT_FAILED
    except OSError as err:  # disk full, read-only folder: the previous checkpoint stays intact
        reason = f"write failed: {err}"
        _record_failure(run, reason, None)
        print(f"error: {reason}; the last checkpoint in {run} is kept, no result recorded", file=sys.stderr)
        return EXIT_FAILED
    finally:
        if writer is not None:
            writer.close()
    selected = "test-selected" if config["eval_split"] == "test" else f"on {config['eval_split']}"
    print(f"done: {config['eval_split']} accuracy {outcome.final_acc:.2f}% (best {outcome.best_acc:.2f}% at epoch "
          f"{outcome.best_epoch}, {selected}), {outcome.train_s:.1f} s training -> {run / RESULT}")
    return 0


def _record_failure(run: RunDir, reason: str, epoch: int | None) -> None:
    try:
        run.write_failed(reason, epoch)
    except OSError as err:  # the disk may be the problem; the message below still says what happened
        print(f"warning: could not write {run / FAILED}: {err}", file=sys.stderr)


def _router_logger(model: Any, writer: Any, total_epochs: int) -> Any:
    """TensorBoard scalars of Lily's mean expert weights per site at each evaluation; the window
    is every forward pass since the previous evaluation (training epochs and this evaluation)."""
    from .adapters import lily_router_weights, reset_router_weights

    def log(epoch: int, acc: float) -> None:
        if writer is not None:
            for site, weights in lily_router_weights(model).items():
                for i, w in enumerate(weights):
                    writer.add_scalar(f"router/{site}/expert{i}", float(w), epoch)
        if epoch < total_epochs:  # keep the last window for router_weights.json
            reset_router_weights(model)

    return log


def build_result(config: dict, params: dict, outcome: Any, device: Any) -> dict:
    """result.json as specified in ARCHITECTURE.md."""
    from .train import peak_memory_mb

    return {
        "schema": 1, "status": "complete",
        "backbone": config["backbone"], "adapter": config["adapter"], "task": config["task"],
        "suite": config["suite"], "protocol": config["protocol"], "seed": config["seed"],
        "method": config["method_name"] or method_label(config["adapter"], config["adapter_config"]),
        "method_hash": method_hash(config),
        "config": config, "config_hash": config_hash(config),
        "accuracy": {"final": outcome.final_acc, "best": outcome.best_acc, "best_epoch": outcome.best_epoch,
                     "eval_split": config["eval_split"], "best_is_test_selected": config["eval_split"] == "test"},
        "params": params,
        "time": {"train_s": round(outcome.train_s, 3), "eval_s": round(outcome.eval_s, 3),
                 "train_images_per_s": round(outcome.train_images_per_s, 2)},
        "memory": {"peak_mb": round(peak_memory_mb(device), 1),
                   "kind": "cuda_max_allocated" if device.type == "cuda" else "cpu_peak_rss"},
        "device": str(device), "versions": versions(), "git_commit": provenance.git_commit(),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


if __name__ == "__main__":
    run_cli(main)
