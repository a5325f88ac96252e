"""Sweeps: grids of ordinary runs over tasks and seeds, on this machine or a Ray cluster.

``python -m vtab_lily.sweep --help`` for the command line; :func:`run_sweep` from Python.
Importing this package imports neither torch nor Ray.
"""

from __future__ import annotations

from typing import Any

__all__ = ["SweepSpec", "build_spec", "load_toml", "run_sweep", "plan_summary"]


def __getattr__(name: str) -> Any:  # lazy: keep `import vtab_lily.sweep` cheap
    if name in ("SweepSpec", "build_spec", "load_toml"):
        from . import spec

        return getattr(spec, name)
    if name in ("run_sweep", "plan_summary"):
        from . import api

        return getattr(api, name)
    raise AttributeError(name)
