"""The data layer: NOAH list files -> decoded uint8 cache -> in-memory tensors.

Public API (see ARCHITECTURE.md): :func:`load_split` returning a :class:`SplitData`,
:func:`ensure_demo` for the demo suite, and :func:`read_manifest` / :func:`data_fingerprint` for
the data a result was made on. ``python -m vtab_lily.data prepare|verify|demo`` lays out,
checks or generates a data root. Names are imported lazily so that the CLIs and the
demo-suite registration do not pay for importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "load_split": "dataset", "SplitData": "dataset", "decode_split": "dataset",
    "IMAGENET_MEAN": "dataset", "IMAGENET_STD": "dataset",
    "ListEntry": "lists", "SplitList": "lists", "SplitSizeWarning": "lists",
    "parse_list": "lists", "read_list": "lists",
    "ensure_demo": "demo", "DEMO_TASKS": "demo",
    "read_manifest": "manifest", "data_fingerprint": "manifest",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value
