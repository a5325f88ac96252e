"""One fine-tuning run: ``python -m vtab_lily.run --backbone vit --adapter lily --task dtd``.

Resolves the full config (the official setup of the backbone family and adapter by default;
every difference from it is listed), checks every input before any work (names, numbers,
adapter options, data, checkpoint, batch size, output folders), then owns
``<out>/<backbone>/<adapter>/<task>/<config hash>/`` under a lock: rerunning the same command
resumes from the last checkpoint, a finished run is skipped before any weights are loaded
(``--force`` redoes it), and a run that failed (``failed.json``) resumes from its last good
checkpoint (``--force`` starts it clean). ``--batch FILE`` runs many in one process.

Exit codes: 0 done or skipped, 1 the run failed (non-finite loss, out of memory, disk write),
2 bad input (nothing written), 75 the run is locked by another process, 130 interrupted
(Ctrl-C stops after the current step and saves a checkpoint first).
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path
from typing import Any

from .errors import UserError, run_cli
from .fetch import ensure_ready, file_sha256
from .fsutil import LockBusy, check_creatable_dir
from .official import DEMO, NO_OFFICIAL_SETUP, RECIPES, deviations, method_label, official_precision  # noqa: F401
from .rundir import RESULT, RunDir, config_hash, json_normal
from .runbatch import run_batch
from .runconfig import (  # noqa: F401 - build_parser, resolve_config, check_args: used by the sweep
    build_parser,
    check_args,
    official_pre_logits,
    parse,
    resolve_checkpoint,
    resolve_config,
)
from .tasks import task_names

EXIT_FAILED, EXIT_LOCKED = 1, 75  # 2: UserError and 130: interrupted come from errors.run_cli


def _backbone_kwargs(config: dict) -> dict:
    return {"img_size": config["img_size"], "drop_path": config["drop_path"], "pre_logits": config["pre_logits"]}


def identify(config: dict, must_exist: bool = True) -> tuple[dict, RunDir, dict, list[str]]:
    """Resolve everything that names the run without loading weights or data: the model is
    built on the ``meta`` device. Fills ``adapter_config`` and ``pretrained`` into ``config``;
    returns (config, run dir, parameter counts, deviations)."""
    import torch

    from .adapters import apply_adapter, count_parameters, recorded_config
    from .backbones import backbone_family, create_backbone
    from .precision import device_has_tf32

    weights = resolve_checkpoint(config, must_exist=must_exist)
    with torch.device("meta"):  # pre_logits=True builds the layer's structure: the counts match the real build
        model = create_backbone(config["backbone"], num_classes=config["num_classes"] or 2, checkpoint=None,
                                **_backbone_kwargs(config))
        model = apply_adapter(model, config["adapter"], task=config["task"], **config["adapter_options"])
    config["adapter_config"] = json_normal(recorded_config(model.adapter_config))
    if model.adapter_task_settings:  # only where a method has per-task settings: other run hashes stay
        config["adapter_task_settings"] = json_normal(model.adapter_task_settings)
    config["pretrained"] = weights.name if weights else None
    family = backbone_family(config["backbone"])
    devs = deviations(config, family, official_pre_logits(config),
                      official_precision(family, device_has_tf32(config["device"])))
    return config, RunDir.for_config(config["out"], config), count_parameters(model), devs


def _finished(config: dict) -> bool:
    """A complete run is skipped before its weights or data are read: it needs neither."""
    if not (Path(config["out"]) / config["backbone"] / config["adapter"] / str(config["task"])).is_dir():
        return False  # no run of this task at all (cheap: no model is built)
    return identify(dict(config), must_exist=False)[1].read_result() is not None


def run_dir_for(argv: list[str]) -> Path:
    """The run directory ``python -m vtab_lily.run ARGV`` uses (for the sweep); no weights needed."""
    return identify(check_args(argv), must_exist=False)[1].path


# One backbone's loaded weights (without the head), reused by the runs of one process.
_WEIGHTS: dict[tuple, dict] = {}


def build_model(config: dict, weights: Path | None) -> Any:
    """Seeded backbone (weights cached per process) + adapter.

    The random draws are the same with or without the cache: ``create_backbone`` initialises
    every layer, loads the weights and draws the head last, and the cached path builds the
    same way without a file, then copies the cached tensors (all but the head)."""
    from .adapters import apply_adapter
    from .backbones import create_backbone

    name, classes, kwargs = config["backbone"], config["num_classes"] or 2, _backbone_kwargs(config)
    seed_everything(config["seed"])  # adapter and head init depend on it
    model = None
    if weights is not None:
        stat = weights.stat()
        key = (name, str(weights.resolve()), stat.st_mtime_ns, stat.st_size, json.dumps(kwargs, sort_keys=True))
        if key in _WEIGHTS:
            model = create_backbone(name, num_classes=classes, checkpoint=None, **kwargs)
            missing, unexpected = model.load_state_dict(_WEIGHTS[key], strict=False)
            if unexpected or set(missing) != set(_head_keys(model)):  # layout differs: load the file
                model = None
                seed_everything(config["seed"])
    if model is None:
        model = create_backbone(name, num_classes=classes, checkpoint=weights, **kwargs)
        if weights is not None:
            head = set(_head_keys(model))
            _WEIGHTS.clear()  # one backbone at a time: bounded memory
            _WEIGHTS[key] = {k: v.detach().clone() for k, v in model.state_dict().items() if k not in head}
    return apply_adapter(model, config["adapter"], task=config.get("task"), **config["adapter_options"])


def _same_as_identified(model: Any, config: dict) -> None:
    """The real model must be the one the meta build named (else the run folder would lie)."""
    from .adapters import recorded_config

    real = json_normal(recorded_config(model.adapter_config))
    kept = getattr(model, "pre_logits_kept", config["pre_logits"])
    if real != config["adapter_config"] or bool(kept) != bool(config["pre_logits"]):
        raise RuntimeError(f"the loaded model differs from its meta-device description: adapter {real} vs "
                           f"{config['adapter_config']}, pre_logits {kept} vs {config['pre_logits']}")


def _head_keys(model: Any) -> list[str]:
    head = model.get_classifier()
    prefix = next(name for name, module in model.named_modules() if module is head)
    return [k for k in model.state_dict() if k.startswith(prefix + ".")]


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


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
        check_creatable_dir(root, "--data-root")
        ensure_demo(root)  # generated on demand; an existing custom root is used as it is
    task = suite(config["suite"])[config["task"]]
    kwargs = {"img_size": config["img_size"], "normalize": config["normalize"]}
    train_set = load_split(config["data_root"], task, config["train_split"], **kwargs)
    eval_set = load_split(config["data_root"], task, config["eval_split"], **kwargs)
    if config["batch_size"] > len(train_set):
        raise UserError(f"--batch-size {config['batch_size']} is larger than the training split "
                        f"{config['train_split']} of {config['task']} ({len(train_set)} images)")
    return train_set, eval_set


def print_setup(config: dict, run: RunDir, params: dict, devs: list[str]) -> None:
    """The dry run's report: the resolved setup, its differences from the official one, counts."""
    from .backbones import backbone_family
    from .precision import cuda_default_note

    label = run_label(config, devs)
    print(json.dumps({"config": config, "config_hash": config_hash(config), "run_dir": str(run), "method": label,
                      "deviations": devs, "params": params}, indent=2))
    print(f"parameters: adapter {params['adapter']:,}, head {params['head']:,}, "
          f"trainable total {params['total']:,}, backbone {params['backbone']:,}")
    note = cuda_default_note(backbone_family(config["backbone"]), config["device"])
    print(f"precision: {config['precision']}" + (f" ({note})" if note else ""))
    if config["adapter"] in NO_OFFICIAL_SETUP:  # the adapter's settings are the user's file: only the recipe is compared
        print(f"{config['adapter']} has no official setup (its settings are the config file's); "
              f"differences from the official recipe: {', '.join(devs) if devs else 'none'}")
    else:
        print(f"differences from the official setup: {', '.join(devs) if devs else 'none'}")
    if config.get("adapter_task_settings"):
        from .adapters.pertask import describe

        print(f"per-task settings for {config['task']}: {describe(config['adapter_task_settings'])}")


def run_label(config: dict, devs: list[str]) -> str:
    """The method label of a resolved config: its ``--method-name``, else the adapter's settings,
    the deviations and a precision other than fp32."""
    return config["method_name"] or method_label(config["adapter"], config["adapter_config"], devs,
                                                 config["precision"])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse(argv)
    if args.batch:
        extra = [a for a in argv if a not in ("--batch", args.batch, "--debug", "--fetch", "--preflight")]
        if extra:
            raise UserError(f"--batch FILE takes only --fetch, --preflight and --debug beside it, not {extra[0]}: "
                            "put run options on each line of FILE")
        return run_batch(Path(args.batch), execute, finished=_finished, fetch=args.fetch,
                         preflight_only=args.preflight)
    return execute(argv)[0]


def execute(argv: list[str]) -> tuple[int, str]:
    """One run from its arguments: (exit code, one-line status). UserError propagates."""
    args = parse(argv)
    config = check_args(argv)
    if args.list_tasks:
        print("\n".join(task_names(config["suite"])))
        return 0, "listed"
    if not config["task"]:
        raise UserError("--task is required (python -m vtab_lily.tasks lists them)")
    if args.preflight:  # the weights and data this run needs, nothing else
        ensure_ready([config], fetch=args.fetch, skip=None if args.force else _finished)
        print("ready: weights and data are there")
        return 0, "ready"
    preview = args.dry_run or args.check
    config, run, params, devs = identify(config, must_exist=False)
    if args.check:
        print(f"ok: {run_label(config, devs)}")
        return 0, "checked"
    if preview:  # never needs weights, data or a device
        print_setup(config, run, params, devs)
        return 0, "dry run"
    done = run.read_result()
    if done and not args.force:  # decided before any weights or data are loaded
        print(f"already complete: {run / RESULT} ({_accuracy_text(done, config['report'])}); --force to redo")
        return 0, "skipped (complete)"
    check_creatable_dir(config["out"], "--out")
    ensure_ready([config], fetch=args.fetch)
    weights = resolve_checkpoint(config)
    config["checkpoint_sha256"] = file_sha256(weights) if weights else None  # provenance, not hashed
    device = pick_device(config["device"])
    from .precision import check_device

    check_device(config["precision"], device)
    if config["threads"]:
        import torch

        torch.set_num_threads(config["threads"])
    model = build_model(config, weights)
    _same_as_identified(model, config)
    train_set, eval_set = load_data(config)
    from .runexec import data_provenance, run_locked

    data = data_provenance(config, (train_set, eval_set), args.allow_stale_data)  # before any run folder

    try:
        lock = run.lock()
        with lock:
            return run_locked(args, config, run, model, params, devs, train_set, eval_set, device, data)
    except LockBusy as err:
        print(f"running elsewhere: {err}", file=sys.stderr)
        return EXIT_LOCKED, "running elsewhere"
    except OSError as err:  # the run folder could not be created or locked
        print(f"error: cannot use run folder {run}: {err.strerror or err}", file=sys.stderr)
        return EXIT_FAILED, "failed (run folder)"


def _accuracy_text(result: dict, report: str) -> str:
    acc = result.get("accuracy", {})
    text = f"accuracy {acc.get('final', float('nan')):.2f}%"
    if report == "test-selected" and acc.get("best") is not None:
        text += f", test-selected {acc['best']:.2f}% at epoch {acc.get('best_epoch')}"
    return text


if __name__ == "__main__":
    run_cli(main)
