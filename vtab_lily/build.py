"""A run's model from its resolved config: where the backbone weights are, whether they hold a
pre_logits layer, and the seeded backbone + adapter (weights cached per process).

It sits below both the runner (``run.py`` builds the model it trains) and the analysis
(``analyze/load.py`` rebuilds a finished run's model from its config.json), which share it.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from .data.pretext import WEIGHTS_FILE
from .errors import UserError
from .fetch.preflight import checkpoint_path, missing_message, missing_pieces


def backbone_kwargs(config: dict) -> dict:
    return {"img_size": config["img_size"], "drop_path": config["drop_path"], "pre_logits": config["pre_logits"]}


def resolve_checkpoint(config: dict, must_exist: bool = True) -> Path | None:
    """The backbone weights file (None: random init); UserError when it is missing and needed,
    naming the command that fetches it (``vtab_lily.fetch``) and the way by hand. The demo's
    pre-trained tiny ViT is made here when needed and not there (or not valid)."""
    path, _ = checkpoint_path(config["backbone"], config["checkpoint"])
    if must_exist and path is not None and path.name == WEIGHTS_FILE:
        from .backbones.demo_weights import ensure_demo_weights

        return ensure_demo_weights(path)
    if must_exist and path is not None and not path.is_file():
        raise UserError(missing_message(missing_pieces([{**config, "task": None}])))
    return path


def checkpoint_has_pre_logits(path: Path) -> bool | None:
    """Whether a weights file holds a pre_logits layer (None: cannot tell without it). Reads
    only the file's index (npz directory, safetensors header, memory-mapped torch file)."""
    if not path.is_file():
        return None
    try:
        if path.suffix == ".npz":
            import numpy as np

            with np.load(path) as npz:
                keys = list(npz.files)
        elif path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), "pt") as f:
                keys = list(f.keys())
        else:
            import torch

            try:  # memory-mapped: reads the index only
                state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError:  # a legacy (non-zip) torch file cannot be mapped
                state = torch.load(path, map_location="cpu", weights_only=True)
            state = state.get("model", state) if isinstance(state, dict) else {}
            keys = list(state) if isinstance(state, dict) else []
    except Exception as err:  # noqa: BLE001 - the real load reports the file's problem in detail
        raise UserError(f"backbone checkpoint {path} is unreadable: {err.__class__.__name__}: {err}") from None
    return any("pre_logits" in key for key in keys)


# One backbone's loaded weights (without the head), reused by the runs of one process.
_WEIGHTS: dict[tuple, dict] = {}


def build_model(config: dict, weights: Path | None) -> Any:
    """Seeded backbone (weights cached per process) + adapter.

    The random draws are the same with or without the cache: ``create_backbone`` initialises
    every layer, loads the weights and draws the head last, and the cached path builds the
    same way without a file, then copies the cached tensors (all but the head)."""
    from .adapters import apply_adapter
    from .backbones import create_backbone

    name, classes, kwargs = config["backbone"], config["num_classes"] or 2, backbone_kwargs(config)
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
