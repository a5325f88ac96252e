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
import sys
from pathlib import Path
from typing import Any

from .build import build_model, backbone_kwargs, resolve_checkpoint  # noqa: F401 - re-exported
from .errors import UserError, run_cli
from .fsutil import LockBusy, check_creatable_dir
from .official import DEMO, NO_OFFICIAL_SETUP, RECIPES, deviations, method_label  # noqa: F401 - re-exported
from .rundir import RESULT, RunDir, config_hash, json_normal
from .runbatch import run_batch
from .runconfig import (  # noqa: F401 - build_parser, resolve_config, check_args: used by the sweep
    build_parser,
    check_args,
    official_pre_logits,
    parse,
    resolve_config,
)
from .tasks import task_names

EXIT_FAILED, EXIT_LOCKED = 1, 75  # 2: UserError and 130: interrupted come from errors.run_cli


def identify(config: dict, must_exist: bool = True) -> tuple[dict, RunDir, dict, list[str]]:
    """Resolve everything that names the run without loading weights or data: the model is
    built on the ``meta`` device. Fills ``adapter_config`` and ``pretrained`` into ``config``;
    returns (config, run dir, parameter counts, deviations)."""
    import torch

    from .adapters import apply_adapter, count_parameters, recorded_config
    from .backbones import backbone_family, create_backbone

    weights = resolve_checkpoint(config, must_exist=must_exist)
    with torch.device("meta"):  # pre_logits=True builds the layer's structure: the counts match the real build
        model = create_backbone(config["backbone"], num_classes=config["num_classes"] or 2, checkpoint=None,
                                **backbone_kwargs(config))
        model = apply_adapter(model, config["adapter"], task=config["task"], **config["adapter_options"])
    config["adapter_config"] = json_normal(recorded_config(model.adapter_config))
    if model.adapter_task_settings:  # only where a method has per-task settings: other run hashes stay
        config["adapter_task_settings"] = json_normal(model.adapter_task_settings)
    config["pretrained"] = weights.name if weights else None
    devs = deviations(config, backbone_family(config["backbone"]), official_pre_logits(config))
    return config, RunDir.for_config(config["out"], config), count_parameters(model), devs


def run_dir_for(argv: list[str]) -> Path:
    """The run directory ``python -m vtab_lily.run ARGV`` uses (for the sweep); no weights needed."""
    return identify(check_args(argv), must_exist=False)[1].path


def _same_as_identified(model: Any, config: dict) -> None:
    """The real model must be the one the meta build named (else the run folder would lie)."""
    from .adapters import recorded_config

    real = json_normal(recorded_config(model.adapter_config))
    kept = getattr(model, "pre_logits_kept", config["pre_logits"])
    if real != config["adapter_config"] or bool(kept) != bool(config["pre_logits"]):
        raise RuntimeError(f"the loaded model differs from its meta-device description: adapter {real} vs "
                           f"{config['adapter_config']}, pre_logits {kept} vs {config['pre_logits']}")


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
    label = config["method_name"] or method_label(config["adapter"], config["adapter_config"], devs)
    print(json.dumps({"config": config, "config_hash": config_hash(config), "run_dir": str(run), "method": label,
                      "deviations": devs, "params": params}, indent=2))
    print(f"parameters: adapter {params['adapter']:,}, head {params['head']:,}, "
          f"trainable total {params['total']:,}, backbone {params['backbone']:,}")
    if config["adapter"] in NO_OFFICIAL_SETUP:  # the adapter's settings are the user's file: only the recipe is compared
        print(f"{config['adapter']} has no official setup (its settings are the config file's); "
              f"differences from the official recipe: {', '.join(devs) if devs else 'none'}")
    else:
        print(f"differences from the official setup: {', '.join(devs) if devs else 'none'}")
    if config.get("adapter_task_settings"):
        from .adapters.pertask import describe

        print(f"per-task settings for {config['task']}: {describe(config['adapter_task_settings'])}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse(argv)
    if args.batch:
        if len(argv) != 2 and not (len(argv) == 3 and "--debug" in argv):
            raise UserError("--batch FILE takes no other options: put them on each line of FILE")
        return run_batch(Path(args.batch), execute)
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
    preview = args.dry_run or args.check
    config, run, params, devs = identify(config, must_exist=False)
    if args.check:
        print(f"ok: {config['method_name'] or method_label(config['adapter'], config['adapter_config'], devs)}")
        return 0, "checked"
    if preview:  # never needs weights, data or a device
        print_setup(config, run, params, devs)
        return 0, "dry run"
    done = run.read_result()
    if done and not args.force:  # decided before any weights or data are loaded
        print(f"already complete: {run / RESULT} ({_accuracy_text(done, config['report'])}); --force to redo")
        return 0, "skipped (complete)"
    check_creatable_dir(config["out"], "--out")
    weights = resolve_checkpoint(config)
    device = pick_device(config["device"])
    if config["threads"]:
        import torch

        torch.set_num_threads(config["threads"])
    model = build_model(config, weights)
    _same_as_identified(model, config)
    train_set, eval_set = load_data(config)
    from .runexec import run_locked

    try:
        lock = run.lock()
        with lock:
            return run_locked(args, config, run, model, params, devs, train_set, eval_set, device)
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
