"""What every benchmark item receives: device, sizes and a progress logger."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Callable

import torch

from .sizes import Sizes


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass
class Context:
    device: torch.device
    sizes: Sizes
    log: Callable[[str], None] = field(default=_stderr)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"
