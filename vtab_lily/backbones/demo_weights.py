"""The demo's pre-trained tiny ViT: made on first use, cached as a safetensors file.

Real PEFT adapts a pre-trained backbone; a frozen *random* one carries too little signal for
the methods that only read or add to its features (the linear probe and AdaptFormer stayed at
chance on the demo's ``orientation`` task, docs/demo.md). So the demo pre-trains its
``vit-tiny-test`` briefly and deterministically on a pretext set that shares nothing with the
demo tasks (``vtab_lily.data.pretext``: six texture families), like a real backbone's
supervised pre-training, and every demo run on ViT starts from those weights.

The file's name carries the recipe's version (``vit-tiny-test-textures-v1.safetensors``), so
runs record which demo backbone they used in ``pretrained`` (part of their identity) and its
bytes in ``checkpoint_sha256``. Making it is deterministic on one machine (one thread, fixed
seeds); it is written atomically under a lock on its folder (two runs at once: one makes it,
the other waits and reads it), and a file that is unreadable or not this recipe's is made again.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import save

from ..data.parallel import folder_lock
from ..data.pretext import FAMILIES, VERSION, WEIGHTS_FILE, pretext_set
from ..errors import UserError
from ..fsutil import atomic_write_bytes
from . import create_backbone

BACKBONE = "vit-tiny-test"
# The pre-training recipe: AdamW with a linear warmup then a constant lr, random batches of the
# pretext set, every weight trained (a fresh head of one output per texture family).
RECIPE = {"images": 2048, "steps": 200, "batch_size": 64, "lr": 1e-3, "warmup_steps": 20, "wd": 0.05, "seed": 0}
FILE = WEIGHTS_FILE
# One metadata entry: safetensors writes several in a varying order, and the file's bytes (its
# sha256, which runs record) must be the same every time it is made.
METADATA = {"recipe": json.dumps({"pretext": f"textures v{VERSION}", "families": list(FAMILIES), **RECIPE},
                                 sort_keys=True)}


def is_demo_weights(path: Path) -> bool:
    """Whether ``path`` names the demo backbone's file (made on demand rather than fetched)."""
    return Path(path).name == FILE


def pretrain() -> dict[str, torch.Tensor]:
    """The pre-trained backbone's state dict (no head). One thread and fixed seeds, with the
    caller's RNG state and thread count restored afterwards."""
    images, labels = pretext_set(RECIPE["images"], RECIPE["seed"])
    x, y = torch.from_numpy(images).float().div_(255.0), torch.from_numpy(labels)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RECIPE["seed"])
            model = create_backbone(BACKBONE, num_classes=len(FAMILIES), img_size=None, drop_path=0.0)
            model.train()
            opt = torch.optim.AdamW(model.parameters(), lr=RECIPE["lr"], weight_decay=RECIPE["wd"])
            order = torch.Generator().manual_seed(RECIPE["seed"])
            for step in range(RECIPE["steps"]):
                for group in opt.param_groups:
                    group["lr"] = RECIPE["lr"] * min(1.0, (step + 1) / RECIPE["warmup_steps"])
                idx = torch.randint(0, len(x), (RECIPE["batch_size"],), generator=order)
                loss = F.cross_entropy(model(x[idx]), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            if not torch.isfinite(loss):
                raise RuntimeError(f"demo backbone pre-training diverged (loss {loss.item()})")
    finally:
        torch.set_num_threads(threads)
    head = {name for name in model.state_dict() if name.startswith("head.")}
    return {name: t.detach().contiguous() for name, t in model.state_dict().items() if name not in head}


def _valid(path: Path) -> bool:
    """A readable safetensors file of this recipe (its metadata and its tensors' shapes)."""
    try:
        with safe_open(str(path), "pt") as f:
            if f.metadata() != METADATA:
                return False
            for key in f.keys():
                if not torch.isfinite(f.get_tensor(key)).all():
                    return False
            return True
    except (OSError, SafetensorError, ValueError, RuntimeError):
        return False


def ensure_demo_weights(path: str | os.PathLike) -> Path:
    """Make the demo backbone's file at ``path`` unless a valid one is there; return ``path``."""
    path = Path(path)
    if path.is_file() and _valid(path):
        return path
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with folder_lock(folder):
            if path.is_file() and _valid(path):  # made by another process while this one waited
                return path
            if path.exists():
                print(f"demo backbone {path} is unreadable or from another recipe: making it again", file=sys.stderr)
            print(f"making the demo backbone {path}: {BACKBONE} pre-trained on generated textures "
                  f"({RECIPE['steps']} steps, once)", file=sys.stderr)
            start = time.perf_counter()
            data = save(pretrain(), metadata=METADATA)
            atomic_write_bytes(path, data)
            print(f"demo backbone made in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    except OSError as err:
        raise UserError(f"cannot write the demo backbone {path}: {err.strerror or err} (run from a folder where "
                        f"{folder}/ is writable, or pass --checkpoint FILE / --checkpoint none)") from None
    return path

