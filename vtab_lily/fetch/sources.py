"""What can be fetched: the published backbone weights and the VTAB-1K archive.

A :class:`Source` says where a file comes from (a Hugging Face Hub repo, or a plain HTTPS URL
such as Google's ViT bucket), the name it lands under, and its approximate size for
``--dry-run`` when the server cannot be asked. Weights land under ``backbones/``, the file name
the runner looks for (``BackboneSpec.checkpoint_file``); the archive under ``data/``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError, unknown_name

WEIGHTS_DIR = Path("backbones")  # the runner's default checkpoint folder (relative to where it runs)
DATA_DIR = Path("data")
HUB = "https://huggingface.co/"
STORAGE = "https://storage.googleapis.com"  # Google's bucket of the ViT weights
STORAGE_ENV = "VTAB_LILY_STORAGE_ENDPOINT"  # a mirror of it (as HF_ENDPOINT is of the Hub)


@dataclass(frozen=True)
class Source:
    name: str  # what the user types: a backbone name, or "vtab-1k"
    file: str  # the file name it lands under
    approx_bytes: int  # for --dry-run offline; the download checks the server's exact size
    url: str = ""  # plain HTTPS (no published hash: the first download's sha256 is recorded)
    repo_id: str = ""  # Hugging Face Hub (its LFS metadata carries sha256 and size)
    repo_type: str = "model"
    revision: str = "main"
    remote: str = ""  # the file's path in the Hub repo when it is not ``file`` (timm's model.safetensors)

    @property
    def on_hub(self) -> bool:
        return bool(self.repo_id)

    @property
    def remote_file(self) -> str:
        return self.remote or self.file

    def where(self, endpoint: str | None = None) -> str:
        """The URL it is downloaded from (and a user could download by hand)."""
        if not self.on_hub:
            mirror = os.environ.get(STORAGE_ENV, "").rstrip("/")
            return mirror + self.url[len(STORAGE):] if mirror and self.url.startswith(STORAGE) else self.url
        base = (endpoint or os.environ.get("HF_ENDPOINT") or HUB).rstrip("/") + "/"  # a mirror, read now
        kind = "datasets/" if self.repo_type == "dataset" else ""
        return f"{base}{kind}{self.repo_id}/resolve/{self.revision}/{self.remote_file}"


# Sizes as the Hub and Google's bucket list them (Dec 2026); the download checks the exact ones.
VTAB_1K = Source("vtab-1k", "vtab-1k.zip", 4_660_000_000, repo_id="XiN0919/VTAB-1k", repo_type="dataset")
_APPROX = {"vit-b16-in21k": 412_000_000, "vit-b16-in1k": 346_000_000, "vim-s": 413_000_000, "vim-t": 115_000_000,
           # ViT-L_16.npz: float32 backbone, pre_logits and the 21,843-class head (~326M values)
           "vit-l16-in21k": 1_310_000_000, "dinov2-b14": 346_000_000, "dinov2-s14": 88_000_000,
           "clip-b16": 345_000_000, "mae-b16": 343_000_000}


def weights_source(backbone: str) -> Source:
    """The source of ``backbone``'s published weights (aliases such as ``vit`` accepted)."""
    from ..backbones import BACKBONES, get_spec

    spec = get_spec(backbone)
    if spec.checkpoint_file is None:
        raise UserError(f"backbone {spec.name} has no published weights (a test config: it runs from random "
                        "init, --checkpoint none)")
    approx = _APPROX.get(spec.name, 0)
    if spec.hub:
        return Source(spec.name, spec.checkpoint_file, approx, repo_id=spec.hub, remote=spec.hub_file or "")
    if not spec.source.startswith("https://"):
        fetchable = [n for n, s in BACKBONES.items() if s.checkpoint_file]
        raise UserError(f"backbone {spec.name}: no download source is known; fetchable: {', '.join(fetchable)}")
    return Source(spec.name, spec.checkpoint_file, approx, url=spec.source)


def fetchable_backbones() -> list[str]:
    from ..backbones import BACKBONES

    return [name for name, spec in BACKBONES.items() if spec.checkpoint_file and not spec.test_only]


DATASETS = {"vtab-1k": VTAB_1K}


def data_source(name: str) -> Source:
    if name not in DATASETS:
        raise unknown_name("data set", name, DATASETS)
    return DATASETS[name]


def human_size(n: int | None) -> str:
    if n is None:
        return "size unknown"
    for unit, scale, digits in (("GB", 1e9, 2), ("MB", 1e6, 0), ("kB", 1e3, 0)):
        if n >= scale:
            return f"{n / scale:.{digits}f} {unit}"
    return f"{n} B"
