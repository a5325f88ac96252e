"""One run, resolved once: what ``python -m vtab_lily.run ARGV`` means (so does a ``--batch`` line
and a sweep trial, which are the same arguments).

:func:`resolve` reads the arguments against their declarations (``options``), fills in the
official setup of the backbone family and adapter, checks every bound (``runconfig``), builds the
model on the ``meta`` device to resolve the adapter's settings for the task (per-task ``paper``
values included), and names the run: deviations, method label, method hash, config hash, run
folder. The :class:`RunSpec` it returns is frozen; what comes after it (dry run, model building,
training, result.json, the sweep's run folders) reads the spec, never the arguments. Needs no
weights file, no data and no device.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from . import options
from .build import backbone_kwargs, resolve_checkpoint
from .errors import UserError
from .official import deviations, official_precision, run_label
from .rundir import LOCAL_KEYS, RunDir, config_hash, json_normal, method_hash
from .runconfig import checked_config, official_normalize, official_pre_logits, parse

ACTIONS = ("run", "dry-run", "check", "list-tasks")


@dataclass(frozen=True)
class RunSpec:
    """A fully resolved run. ``config`` is config.json's content (read-only; ``config_dict()``
    gives a copy to write); the rest is derived from it once, here. ``options`` are the arguments
    as typed, for the flags that say what to do rather than what to compute (``--force``...)."""

    config: Mapping[str, Any]
    deviations: tuple[str, ...]
    label: str
    method_hash: str
    config_hash: str
    run_dir: RunDir
    params: Mapping[str, int]
    options: options.RunOptions = options.RunOptions()  # as typed (frozen): the action flags live here

    @property
    def action(self) -> str:
        return action_of(self.options)

    @property
    def force(self) -> bool:
        return self.options.force

    def __getitem__(self, key: str) -> Any:
        return self.config[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.config.get(key, default)

    def recording(self, **values: Any) -> "RunSpec":
        """The same run with machine-local facts added to its config (``checkpoint_sha256``: which
        bytes were loaded); only keys the hashes leave out, so the run's names cannot change."""
        named = set(values) - set(LOCAL_KEYS)
        if named:
            raise ValueError(f"recording() takes local keys only, not {sorted(named)}")
        return replace(self, config=MappingProxyType({**self.config, **values}))

    def config_dict(self) -> dict:
        """A deep copy of the config, as config.json and result.json hold it."""
        return copy.deepcopy(dict(self.config))


def action_of(opts: options.RunOptions) -> str:
    return "list-tasks" if opts.list_tasks else "check" if opts.check else "dry-run" if opts.dry_run else "run"


def identify(config: dict, must_exist: bool = True) -> tuple[dict, RunDir, dict, list[str]]:
    """Resolve what names the run without loading weights or data: the model is built on the
    ``meta`` device. Fills ``adapter_config`` (and ``adapter_task_settings``, ``pretrained``) into
    ``config``; returns (config, run dir, parameter counts, deviations)."""
    import torch

    from .adapters import apply_adapter, count_parameters, recorded_config
    from .backbones import backbone_family, create_backbone
    from .precision import device_has_tf32

    weights = resolve_checkpoint(config, must_exist=must_exist)
    with torch.device("meta"):  # pre_logits=True builds the layer's structure: the counts match the real build
        model = create_backbone(config["backbone"], num_classes=config["num_classes"] or 2, checkpoint=None,
                                **backbone_kwargs(config))
        try:
            model = apply_adapter(model, config["adapter"], task=config["task"], **config["adapter_options"])
        except UserError as err:  # say which pair ("affix on dinov2-b14: ..."), unless the message already does
            said = str(err)
            if config["backbone"] not in said:
                said = f"--adapter {config['adapter']} on --backbone {config['backbone']}: {said}"
            raise UserError(said) from None
    config["adapter_config"] = json_normal(recorded_config(model.adapter_config))
    if model.adapter_task_settings:  # only where a method has per-task settings: other run hashes stay
        config["adapter_task_settings"] = json_normal(model.adapter_task_settings)
    config["pretrained"] = weights.name if weights else None
    family = backbone_family(config["backbone"])
    devs = deviations(config, family, official_pre_logits(config),
                      official_precision(family, device_has_tf32(config["device"])),
                      official_normalize(config["backbone"]))
    return config, RunDir.for_config(config["out"], config), count_parameters(model), devs


def finished(config: dict) -> bool:
    """Whether the run of a checked config is complete (then it needs neither weights nor data)."""
    if not (Path(config["out"]) / config["backbone"] / config["adapter"] / str(config["task"])).is_dir():
        return False  # no run of this task at all (cheap: no model is built)
    return identify(dict(config), must_exist=False)[1].read_result() is not None


def read_options(argv: list[str]) -> options.RunOptions:
    """The arguments as typed, each read as its declaration says (argparse errors are UserErrors)."""
    return options.RunOptions(**vars(parse(argv)))


def spec_of(opts: options.RunOptions, config: dict | None = None) -> RunSpec:
    """The frozen spec of ``opts`` (``config``: ``checked_config(opts)`` when already made)."""
    config = checked_config(opts) if config is None else config
    if not config["task"]:
        raise UserError("--task is required (python -m vtab_lily.tasks lists them)")
    config, run_dir, params, devs = identify(config, must_exist=False)
    label = run_label(config, devs)
    return RunSpec(config=MappingProxyType(config), deviations=tuple(devs), label=label,
                   method_hash=method_hash(config), config_hash=config_hash(config), run_dir=run_dir,
                   params=MappingProxyType(dict(params)), options=opts)


def resolve(argv: list[str]) -> RunSpec:
    """The frozen spec of one run's arguments (a task is required)."""
    return spec_of(read_options(argv))
