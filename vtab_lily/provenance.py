"""Where a figure came from: package versions and the git commit of this checkout."""

from __future__ import annotations

import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path


def versions(packages: tuple[str, ...]) -> dict[str, str]:
    """``{"python": ..., package: version or "not installed"}``.

    A package already imported reports its module's ``__version__``, which keeps local labels
    the distribution metadata lacks (torch's ``+cu130`` / ``+cpu`` build).
    """
    out = {"python": platform.python_version()}
    for name in packages:
        loaded = getattr(sys.modules.get(name.replace("-", "_")), "__version__", None)
        if isinstance(loaded, str):
            out[name] = loaded
            continue
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def git_commit(short: bool = False) -> str | None:
    """The commit of the checkout this package runs from, or None outside a git checkout."""
    command = ["git", "rev-parse", *(["--short"] if short else []), "HEAD"]
    try:
        out = subprocess.run(command, cwd=Path(__file__).resolve().parent, timeout=10, capture_output=True, text=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None
