"""Pre-flight: before any work, every checkpoint and data piece a set of runs needs.

``run_all.sh`` (through ``python -m vtab_lily.fetch check``), ``python -m vtab_lily.run`` (one run
or ``--batch``) and the sweep call :func:`ensure_ready` once with the resolved configs of all
their runs: one message lists every missing piece with the one command that fetches it, or
(``fetch=True``) fetches them first. The demo suite and the demo's pre-trained tiny ViT are made on
demand and never missing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from ..data.pretext import WEIGHTS_FILE
from ..errors import UserError
from ..tasks import VTAB_TASKS, get_task
from .core import fetch
from .data import fetch_data
from .sources import DATA_DIR, WEIGHTS_DIR, data_source, human_size, weights_source

DEFAULT_DATA_ROOT = DATA_DIR / "vtab-1k"


def checkpoint_path(backbone: str, given: str | None) -> tuple[Path | None, str]:
    """The weights file a run reads (None: random init) and how it was chosen (for messages).
    The runner's ``resolve_checkpoint`` and the pre-flight both use it."""
    from ..backbones import get_spec

    if isinstance(given, str) and given.lower() == "none":
        return None, "random init"
    if given:
        return Path(given), "the file given by --checkpoint"
    file = get_spec(backbone).checkpoint_file
    if file is None:
        raise UserError(f"backbone {backbone} has no published weights (a test config): pass --checkpoint none for "
                        "random init, or --checkpoint PATH")
    return WEIGHTS_DIR / file, f"where {backbone}'s weights are expected"


@dataclass(frozen=True)
class Piece:
    kind: str  # "weights" | "data"
    what: str
    target: Path  # the file or data root it is expected at
    command: str | None  # the one command that fetches it (None: only by hand)
    manual: str  # the way by hand
    name: str = ""  # backbone or data set name
    tasks: tuple[str, ...] = ()


def _weights_piece(config: dict) -> Piece | None:
    path, how = checkpoint_path(config["backbone"], config.get("checkpoint"))
    if path is None or path.is_file() or path.name == WEIGHTS_FILE:  # the demo backbone is made on first use
        return None
    if config.get("checkpoint"):  # the user's own file: nothing to fetch
        return Piece("weights", f"{config['backbone']} weights {path} ({how})", path, None,
                     "pass an existing file to --checkpoint (or leave it out for the published weights; "
                     "backbones/README.md says where to get them)")
    source = weights_source(config["backbone"])
    return Piece("weights", f"{config['backbone']} weights {path} (~{human_size(source.approx_bytes)})", path,
                 f"python -m vtab_lily.fetch weights {source.name}",
                 f"download {source.where()} into {path.parent}/", name=source.name)


def _needed_lists(config: dict) -> list[str]:
    return sorted({f"{config['train_split']}.txt", f"{config['eval_split']}.txt"})


def missing_pieces(configs: Iterable[dict]) -> list[Piece]:
    """Every missing checkpoint and data piece of ``configs`` (resolved run configs), each once."""
    weights: dict[Path, Piece] = {}
    tasks: dict[Path, set[str]] = {}
    for config in configs:
        piece = _weights_piece(config)
        if piece:
            weights.setdefault(piece.target, piece)
        if config.get("suite") == "vtab" and config.get("task"):
            root = Path(config["data_root"])
            folder = root / get_task(config["task"]).name
            if not all((folder / name).is_file() for name in _needed_lists(config)):
                tasks.setdefault(root, set()).add(config["task"])
    pieces = list(weights.values())
    archive = data_source("vtab-1k")
    for root, names in tasks.items():
        flag = "" if root == DEFAULT_DATA_ROOT else f" --root {root}"
        ordered = tuple(sorted(names))
        which = (f"all {len(ordered)} VTAB-1K tasks" if len(ordered) == len(VTAB_TASKS) else
                 f"VTAB-1K task{'s' if len(ordered) > 1 else ''} {', '.join(ordered)}")
        pieces.append(Piece(
            "data", f"{which} in {root} (the archive is ~{human_size(archive.approx_bytes)})", root,
            f"python -m vtab_lily.fetch data vtab-1k{flag}",
            f"download {archive.where()}, then python -m vtab_lily.data prepare --from vtab-1k.zip --root {root}",
            name="vtab-1k", tasks=ordered))
    return pieces


def missing_message(pieces: list[Piece], fetch_flag: str | None = "--fetch") -> str:
    lines = [f"missing before any run can start ({len(pieces)}):"]
    for piece in pieces:
        lines.append(f"  - {piece.what}")
        lines.append(f"      fetch: {piece.command}" if piece.command else "      (nothing to fetch)")
        lines.append(f"      or by hand: {piece.manual}")
    if fetch_flag and any(p.command for p in pieces):
        lines.append(f"or rerun with {fetch_flag} to fetch them first")
    return "\n".join(lines)


def fetch_pieces(pieces: list[Piece], progress: bool = True) -> None:
    for piece in pieces:
        if piece.command is None:
            continue
        if piece.kind == "weights":
            fetch(weights_source(piece.name), piece.target.parent, progress=progress)
        else:
            fetch_data(piece.name, piece.target, tasks=list(piece.tasks), progress=progress)


def ensure_ready(configs: Iterable[dict], fetch: bool = False, skip: Callable[[dict], bool] | None = None,
                 fetch_flag: str | None = "--fetch", progress: bool = True) -> None:
    """UserError naming every missing piece, unless ``fetch`` fetches them first. ``skip(config)``
    (e.g. a finished run) drops a config; it is only asked when something is missing."""
    configs = list(configs)
    pieces = missing_pieces(configs)
    if pieces and skip is not None:
        configs = [c for c in configs if not skip(c)]
        pieces = missing_pieces(configs)
    if not pieces:
        return
    if not fetch:
        raise UserError(missing_message(pieces, fetch_flag))
    fetch_pieces(pieces, progress=progress)
    left = missing_pieces(configs)
    if left:
        raise UserError("still " + missing_message(left, None))
