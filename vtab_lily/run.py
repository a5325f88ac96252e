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

from .build import build_model, resolve_checkpoint  # noqa: F401 - re-exported
from .errors import UserError, run_cli
from .fetch import ensure_ready, file_sha256
from .fsutil import LockBusy, check_creatable_dir
from .official import DEMO, NO_OFFICIAL_SETUP, RECIPES, deviations, method_label  # noqa: F401 - re-exported
from .rundir import RESULT, json_normal
from .runbatch import run_batch
from .runconfig import build_parser, check_args, checked_config, resolve_config  # noqa: F401 - the sweep's
from .runspec import RunSpec, finished, identify, read_options, resolve, spec_of  # noqa: F401 - re-exported
from .tasks import task_names

EXIT_FAILED, EXIT_LOCKED = 1, 75  # 2: UserError and 130: interrupted come from errors.run_cli


def run_dir_for(argv: list[str]) -> Path:
    """The run directory ``python -m vtab_lily.run ARGV`` uses (for the sweep); no weights needed."""
    return resolve(argv).run_dir.path


def _same_as_identified(model: Any, spec: RunSpec) -> None:
    """The real model must be the one the meta build named (else the run folder would lie)."""
    from .adapters import recorded_config

    real = json_normal(recorded_config(model.adapter_config))
    kept = getattr(model, "pre_logits_kept", spec["pre_logits"])
    if real != spec["adapter_config"] or bool(kept) != bool(spec["pre_logits"]):
        raise RuntimeError(f"the loaded model differs from its meta-device description: adapter {real} vs "
                           f"{spec['adapter_config']}, pre_logits {kept} vs {spec['pre_logits']}")


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
    from .backbones import input_stats
    from .data import ensure_demo, load_split
    from .tasks import suite

    root = Path(config["data_root"])
    if config["suite"] == "demo" and (root == Path(DEMO["data_root"]) or not root.exists()):
        check_creatable_dir(root, "--data-root")
        ensure_demo(root)  # generated on demand; an existing custom root is used as it is
    task = suite(config["suite"])[config["task"]]
    kwargs = {"img_size": config["img_size"], "normalize": input_stats(config["normalize"])}
    train_set = load_split(config["data_root"], task, config["train_split"], **kwargs)
    eval_set = load_split(config["data_root"], task, config["eval_split"], **kwargs)
    if config["batch_size"] > len(train_set):
        raise UserError(f"--batch-size {config['batch_size']} is larger than the training split "
                        f"{config['train_split']} of {config['task']} ({len(train_set)} images)")
    return train_set, eval_set


def print_setup(spec: RunSpec) -> None:
    """The dry run's report: the resolved setup, its differences from the official one, counts."""
    from .backbones import backbone_family, describe_input, input_setup
    from .precision import cuda_default_note

    params, devs = spec.params, list(spec.deviations)
    print(json.dumps({"config": spec.config_dict(), "config_hash": spec.config_hash, "run_dir": str(spec.run_dir),
                      "method": spec.label, "deviations": devs, "params": dict(params)}, indent=2))
    print(f"parameters: adapter {params['adapter']:,}, head {params['head']:,}, "
          f"trainable total {params['total']:,}, backbone {params['backbone']:,}")
    print(f"input to {spec['backbone']}: {describe_input(input_setup(spec['backbone'], spec['normalize'], spec['img_size']))}")
    note = cuda_default_note(backbone_family(spec["backbone"]), spec["device"])
    print(f"precision: {spec['precision']}" + (f" ({note})" if note else ""))
    if spec["adapter"] in NO_OFFICIAL_SETUP:  # the adapter's settings are the user's file: only the recipe is compared
        print(f"{spec['adapter']} has no official setup (its settings are the config file's); "
              f"differences from the official recipe: {', '.join(devs) if devs else 'none'}")
    else:
        print(f"differences from the official setup: {', '.join(devs) if devs else 'none'}")
    if spec.get("adapter_task_settings"):
        from .adapters.pertask import describe

        print(f"per-task settings for {spec['task']}: {describe(spec['adapter_task_settings'])}")


def list_backbones() -> str:
    """``--list-backbones``: the registry as a table, then where each published file comes from."""
    from tabulate import tabulate

    from .backbones import backbone_rows
    from .fetch import weights_source

    table, sources = [], []
    for row in backbone_rows():
        size = f"{row['img_size']}" + (f" (pre-trained {row['pretrained_size']})" if row["pretrained_size"] else "")
        norm = row["normalize"] + ("" if row["normalize"] == row["pretrained_norm"] else
                                   f" (pre-trained {row['pretrained_norm']})")
        weights = row["checkpoint_file"] or "none (test config: --checkpoint none)"
        table.append([row["name"], ", ".join(row["aliases"]), row["family"], size, row["patch_size"], norm,
                      f"{row['params'] / 1e6:.1f}M", weights])
        if row["checkpoint_file"]:
            sources.append(f"  {row['name']}: python -m vtab_lily.fetch weights {row['name']}  "
                           f"(from {weights_source(row['name']).where()})")
    head = ["backbone", "aliases", "family", "img size", "patch", "normalisation (default)", "params", "weights file"]
    return "\n".join([tabulate(table, head), "", "parameters without the classification head, at the img size; "
                      "normalisation: the recipe's default (--normalize NAME picks another)", "",
                      "fetch (into backbones/):", *sources])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    opts = read_options(argv)
    if opts.batch:
        extra = [a for a in argv if a not in ("--batch", opts.batch, "--debug", "--fetch", "--preflight")]
        if extra:
            raise UserError(f"--batch FILE takes only --fetch, --preflight and --debug beside it, not {extra[0]}: "
                            "put run options on each line of FILE")
        return run_batch(Path(opts.batch), execute, fetch=opts.fetch, preflight_only=opts.preflight)
    return execute(argv)[0]


def execute(argv: list[str]) -> tuple[int, str]:
    """One run from its arguments: (exit code, one-line status). UserError propagates.

    The arguments are read once into a frozen :class:`RunSpec` (``runspec.resolve``); everything
    below reads the spec."""
    opts = read_options(argv)
    if opts.list_backbones:  # needs no task, weights or data
        print(list_backbones())
        return 0, "listed"
    config = checked_config(opts)
    if opts.list_tasks:
        print("\n".join(task_names(config["suite"])))
        return 0, "listed"
    if not config["task"]:
        raise UserError("--task is required (python -m vtab_lily.tasks lists them)")
    if opts.preflight:  # the weights and data this run needs, nothing else
        ensure_ready([config], fetch=opts.fetch, skip=None if opts.force else finished)
        print("ready: weights and data are there")
        return 0, "ready"
    spec = spec_of(opts, config)
    if spec.action == "check":
        print(f"ok: {spec.label}")
        return 0, "checked"
    if spec.action == "dry-run":  # never needs weights, data or a device
        print_setup(spec)
        return 0, "dry run"
    done = spec.run_dir.read_result()
    if done and not spec.force:  # decided before any weights or data are loaded
        print(f"already complete: {spec.run_dir / RESULT} ({_accuracy_text(done, spec['report'])}); --force to redo")
        return 0, "skipped (complete)"
    check_creatable_dir(spec["out"], "--out")
    ensure_ready([spec.config_dict()], fetch=opts.fetch)
    weights = resolve_checkpoint(spec.config)
    spec = spec.recording(checkpoint_sha256=file_sha256(weights) if weights else None)  # provenance, not hashed
    device = pick_device(spec["device"])
    from .precision import check_device

    check_device(spec["precision"], device)
    if spec["threads"]:
        import torch

        torch.set_num_threads(spec["threads"])
    model = build_model(spec.config, weights)
    _same_as_identified(model, spec)
    train_set, eval_set = load_data(spec.config)
    from .runexec import data_provenance, run_locked

    data = data_provenance(spec.config, (train_set, eval_set), opts.allow_stale_data)  # before any run folder

    try:
        lock = spec.run_dir.lock()
        with lock:
            return run_locked(spec, model, train_set, eval_set, device, data)
    except LockBusy as err:
        print(f"running elsewhere: {err}", file=sys.stderr)
        return EXIT_LOCKED, "running elsewhere"
    except OSError as err:  # the run folder could not be created or locked
        print(f"error: cannot use run folder {spec.run_dir}: {err.strerror or err}", file=sys.stderr)
        return EXIT_FAILED, "failed (run folder)"


def _accuracy_text(result: dict, report: str) -> str:
    acc = result.get("accuracy", {})
    text = f"accuracy {acc.get('final', float('nan')):.2f}%"
    if report == "test-selected" and acc.get("best") is not None:
        text += f", test-selected {acc['best']:.2f}% at epoch {acc.get('best_epoch')}"
    return text


if __name__ == "__main__":
    run_cli(main)
