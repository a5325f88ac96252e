"""What a sweep is: a grid of run options over tasks and seeds, and how to pick per task.

A :class:`SweepSpec` comes from command-line flags, a TOML file (``--config``), or both
(flags win). It only describes the sweep; :mod:`.plan` turns it into trials.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UserError, unknown_name
from ..tasks import get_task, task_names

SELECT_MODES = ("val", "test-best", "none")
BACKENDS = ("local", "ray")
# Options the sweep sets itself on every run; they may not appear in the grid or run args.
RESERVED_RUN_OPTIONS = ("backbone", "adapter", "task", "protocol", "seed", "out", "demo", "method-name", "force")
_KEY = re.compile(r"^[a-z][a-z0-9_-]*$")


@dataclass(frozen=True)
class SweepSpec:
    """One sweep: every grid point on every task, selected per task as ``select`` says."""

    backbone: str
    adapter: str
    grid: dict[str, list[str]]  # run option -> values, as command-line strings, in order
    tasks: list[str]
    seeds: list[int]
    select: str = "val"
    select_seeds: int = 1  # how many of ``seeds`` (the first ones) score each grid point
    demo: bool = False
    run_args: list[str] = field(default_factory=list)  # fixed options for every run

    @property
    def suite(self) -> str:
        return "demo" if self.demo else "vtab"

    def points(self) -> list[dict[str, str]]:
        """The grid points in grid order (first key slowest), which also breaks ties."""
        keys = list(self.grid)
        return [dict(zip(keys, values)) for values in itertools.product(*(self.grid[k] for k in keys))]

    def identity(self) -> dict[str, Any]:
        return asdict(self)

    def sweep_id(self) -> str:
        """Stable name of the sweep folder: the same spec always maps to the same folder."""
        digest = hashlib.sha256(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()[:8]
        return f"{self.backbone}-{self.adapter}-{self.select}-{digest}"


def option_flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def format_value(value: Any, where: str) -> str:
    """A TOML or flag value as the run command line spells it."""
    if isinstance(value, bool) or isinstance(value, (list, dict)):
        raise UserError(f"{where}: expected a number or a string, got {value!r}")
    if isinstance(value, (int, float, str)):
        text = str(value).strip()
        if not text:
            raise UserError(f"{where}: empty value")
        return text
    raise UserError(f"{where}: unsupported value {value!r}")


def parse_grid_flag(text: str) -> tuple[str, list[str]]:
    """``scale=0.01,0.1,1`` -> ("scale", ["0.01", "0.1", "1"])."""
    key, sep, values = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise UserError(f"--grid {text!r}: expected NAME=V1,V2,... (e.g. --grid scale=0.01,0.1,1,10)")
    items = [v.strip() for v in values.split(",")]
    if not values.strip() or any(not v for v in items):
        raise UserError(f"--grid {text!r}: empty value in the list")
    return key, items


def run_args_from_table(table: dict[str, Any], where: str) -> list[str]:
    """A TOML ``[run]`` table -> run options: ``epochs = 2`` -> --epochs 2; ``x = true`` -> --x."""
    args: list[str] = []
    for key, value in table.items():
        if value is True:
            args.append(option_flag(key))
        elif value is False:
            continue
        else:
            args += [option_flag(key), format_value(value, f"{where}: run.{key}")]
    return args


def resolve_tasks(tasks: str | list[str], suite: str, where: str) -> list[str]:
    names = tasks.split(",") if isinstance(tasks, str) else list(tasks)
    names = [n.strip() for n in names if n.strip()]
    if not names:
        raise UserError(f"{where}: no tasks given")
    if names == ["all"]:
        return task_names(suite)
    resolved = []
    for name in names:
        try:
            resolved.append(get_task(name, suite).name)
        except UserError as err:
            raise UserError(f"{where}: {err}") from None
    return list(dict.fromkeys(resolved))


def resolve_seeds(seeds: int | str | list[int], where: str) -> list[int]:
    """``3`` -> [0, 1, 2]; ``"0,5"`` or ``[0, 5]`` -> [0, 5]."""
    if isinstance(seeds, str):
        parts = [p.strip() for p in seeds.split(",")]
        if not all(re.fullmatch(r"\d+", p) for p in parts):
            raise UserError(f"{where}: seeds must be a count (3) or a list (0,1,2), got {seeds!r}")
        seeds = int(parts[0]) if len(parts) == 1 else [int(p) for p in parts]
    if isinstance(seeds, bool):
        raise UserError(f"{where}: seeds must be a count or a list, got {seeds!r}")
    if isinstance(seeds, int):
        if seeds < 1:
            raise UserError(f"{where}: the seed count must be at least 1, got {seeds}")
        return list(range(seeds))
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds):
        raise UserError(f"{where}: seeds must be non-negative integers, got {seeds!r}")
    return list(dict.fromkeys(seeds))


def load_toml(path: str | Path) -> dict[str, Any]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--config {path}: no such file")
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as err:
        raise UserError(f"{path}: {err}") from None


CONFIG_KEYS = ("backbone", "adapter", "tasks", "seeds", "select", "select_seeds", "demo", "grid", "run")


def build_spec(config: dict[str, Any], where: str, *, flags: dict[str, Any] | None = None) -> SweepSpec:
    """Merge a TOML mapping (``where`` names its file) with flag values (flags win)."""
    for key in config:
        if key not in CONFIG_KEYS:
            raise UserError(f"{where}: {unknown_name('sweep setting', key, CONFIG_KEYS)}")
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    merged = {**config, **{k: v for k, v in flags.items() if k not in ("grid", "run_args")}}

    grid: dict[str, list[str]] = {}
    table = config.get("grid", {})
    if not isinstance(table, dict):
        raise UserError(f"{where}: 'grid' must be a table, e.g. [grid] scale = [0.1, 1]")
    for key, values in table.items():
        values = values if isinstance(values, list) else [values]
        grid[key] = [format_value(v, f"{where}: grid.{key}") for v in values]
    for key, values in flags.get("grid", []):
        grid[key] = values  # a flag replaces that key of the file's grid
    if not grid:
        raise UserError(f"{where}: empty grid; give --grid NAME=V1,V2 (e.g. --grid scale=0.1,1)")
    for key, values in grid.items():
        if not _KEY.match(key) or key.replace("_", "-") in RESERVED_RUN_OPTIONS:
            raise UserError(f"{where}: grid key {key!r} is not a tunable run option")
        if not values:
            raise UserError(f"{where}: grid.{key} has no values")
        if len(set(values)) != len(values):
            raise UserError(f"{where}: grid.{key} repeats a value: {values}")

    run_table = config.get("run", {})
    if not isinstance(run_table, dict):
        raise UserError(f"{where}: 'run' must be a table of run options, e.g. [run] epochs = 100")
    run_args = run_args_from_table(run_table, where) + list(flags.get("run_args", []))
    check_run_args(run_args, grid)

    for key in ("backbone", "adapter"):
        if not isinstance(merged.get(key), str) or not merged[key]:
            raise UserError(f"{where}: missing --{key}")
    select = merged.get("select", "val")
    if select not in SELECT_MODES:
        raise UserError(f"{where}: {unknown_name('selection mode', str(select), SELECT_MODES)}")
    demo = bool(merged.get("demo", False))
    seeds = resolve_seeds(merged.get("seeds", 1), f"{where}: seeds")
    select_seeds = merged.get("select_seeds", 1)
    if not isinstance(select_seeds, int) or isinstance(select_seeds, bool) or not 1 <= select_seeds <= len(seeds):
        raise UserError(f"{where}: select_seeds must be between 1 and the number of seeds ({len(seeds)})")
    tasks = resolve_tasks(merged.get("tasks", "all"), "demo" if demo else "vtab", f"{where}: tasks")
    return SweepSpec(
        backbone=merged["backbone"], adapter=merged["adapter"], grid=grid, tasks=tasks, seeds=seeds,
        select=select, select_seeds=select_seeds, demo=demo, run_args=run_args,
    )


def check_run_args(run_args: list[str], grid: dict[str, list[str]]) -> None:
    """Fixed run options may not set what the grid or the sweep itself sets."""
    taken = {k.replace("_", "-") for k in grid}
    for arg in run_args:
        if not arg.startswith("--"):
            continue
        name = arg[2:].split("=", 1)[0]
        if name in RESERVED_RUN_OPTIONS:
            raise UserError(f"run option {arg!r}: the sweep sets --{name} itself; use the sweep's own flag")
        if name in taken:
            raise UserError(f"run option {arg!r} is also a grid key; drop one of them")

