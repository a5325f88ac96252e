"""Downloads of the published weights and VTAB-1K, and the runs' pre-flight check.

Public API (see ARCHITECTURE.md): :func:`fetch` (one :class:`Source` into a folder, checked and
resumable), :func:`fetch_data` (the archive, then ``prepare``), :func:`ensure_ready` /
:func:`missing_pieces` (everything a set of runs needs, before any work), :func:`file_sha256`
(a checkpoint's hash for the run's provenance) and :func:`checkpoint_path`.
``python -m vtab_lily.fetch`` is the command line.
"""

from __future__ import annotations

from .core import fetch, plan
from .data import fetch_data
from .files import FetchError, file_sha256
from .preflight import Piece, checkpoint_path, ensure_ready, missing_pieces
from .sources import Source, data_source, weights_source

__all__ = ["FetchError", "Piece", "Source", "checkpoint_path", "data_source", "ensure_ready", "fetch", "fetch_data",
           "file_sha256", "missing_pieces", "plan", "weights_source"]
