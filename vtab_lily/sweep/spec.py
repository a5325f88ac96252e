"""What a sweep is: a grid of run options over tasks and seeds, and how to pick per task.

A :class:`SweepSpec` comes from command-line flags, a TOML file (``--config``), or both
(flags win). It only describes the sweep; :mod:`.plan` turns it into trials. Every name is
checked exactly against ``python -m vtab_lily.run``'s own options (:mod:`.runopts`).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UserError, unknown_name
from ..tasks import get_task, task_names
from . import runopts

SELECT_MODES = ("val", "test-best", "none")
BACKENDS = ("local", "ray")
RESERVED_RUN_OPTIONS = tuple(runopts.RESERVED)
# Left out of the sweep id: they never change a number (paths and weights stay in: other data
# or weights is another sweep, though the label, which names the method, leaves paths out).
_NOT_IN_ID = ("threads", "device", "debug", "tensorboard", "no-tensorboard")
_KEY = re.compile(r"^[a-z][a-z0-9_-]*$")
MAX_SEEDS, MAX_POINTS, MAX_SEED = 1000, 10000, 2**32 - 1


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
    paper: bool = False  # --paper on every run; also export the test-selected number (not in the id)
    notes: tuple[str, ...] = field(default=(), compare=False)  # what build_spec changed, to print

    @property
    def suite(self) -> str:
        return "demo" if self.demo else "vtab"

    def points(self) -> list[dict[str, str]]:
        """The grid points in grid order (first key slowest), which also breaks ties."""
        keys = list(self.grid)
        return [dict(zip(keys, values)) for values in itertools.product(*(self.grid[k] for k in keys))]

    def identity(self) -> dict[str, Any]:
        """What the sweep computes: values as the run parses them, machine settings left out."""
        return {"backbone": self.backbone, "adapter": self.adapter, "grid": canonical_grid(self.grid),
                "tasks": self.tasks, "seeds": self.seeds, "select": self.select, "select_seeds": self.select_seeds,
                "demo": self.demo, "run_args": [[n, v] for n, v in canonical_fixed(self.run_args) if n not in _NOT_IN_ID]}

    def sweep_id(self) -> str:
        """Stable name of the sweep folder: the same spec always maps to the same folder."""
        digest = hashlib.sha256(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()[:8]
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{self.backbone}-{self.adapter}-{self.select}").lstrip(".")
        return f"{name[:80]}-{digest}"  # a folder name: never a path, whatever the names hold


def show_value(value: Any) -> str:
    """A parsed value, spelled one way: 1.0 -> "1", (k, v) -> "k,v", True -> "true"."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        text = repr(value)
        return text[:-2] if text.endswith(".0") else text
    if isinstance(value, (list, tuple)):
        return ",".join(show_value(v) for v in value)
    return str(value)


def canonical_grid(grid: dict[str, list[str]]) -> dict[str, list[str]]:
    return {key: [show_value(runopts.normal_value(key, grid_action(key), v, "grid")) for v in values]
            for key, values in grid.items()}


def grid_action(key: str) -> Any:
    return runopts.run_actions().get(runopts.flag_name(key))


def canonical_fixed(run_args: list[str]) -> list[tuple[str, str | None]]:
    """Fixed run options as sorted (name, value) pairs, values spelled one way."""
    pairs = []
    for name, value in runopts.parse_fixed(run_args):
        action = runopts.run_actions()[name]
        if value is not None and callable(action.type):  # typed (numbers, lists): one spelling
            value = show_value(runopts.normal_value(name, action, value, "run options"))
        pairs.append((name, value))
    return sorted(pairs, key=lambda p: (p[0], p[1] or ""))


def option_flag(key: str) -> str:
    return "--" + runopts.flag_name(key)


def format_value(value: Any, where: str) -> str:
    """A TOML or flag value as the run command line spells it (a list of strings -> "a,b")."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        value = ",".join(v.strip() for v in value)
    if isinstance(value, (int, float, str)):
        text = str(value).strip()
        if not text:
            raise UserError(f"{where}: empty value")
        if "\n" in text or "\r" in text:
            raise UserError(f"{where}: a value may not contain a line break")
        return text
    raise UserError(f"{where}: expected a number, a string or true/false, got {type(value).__name__} {value!r}")


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
    """A TOML ``[run]`` table -> run options: ``epochs = 2`` -> --epochs 2; ``x = true`` -> --x;
    ``normalize = false`` -> --no-normalize (a plain on-switch set to false is left out)."""
    args: list[str] = []
    for key, value in table.items():
        here = f"{where}: run.{key}"
        name = runopts.flag_name(key)
        action = runopts.check_fixed_name(name, here)
        if runopts.off_flag(action) is not None:  # --normalize: true / false, or a name
            if not isinstance(value, (bool, str)):
                raise UserError(f"{here}: expected true or false, or a name, got {value!r}")
        elif runopts.is_flag(action) != isinstance(value, bool):
            want = "true or false" if runopts.is_flag(action) else "a value (--" + name + " is not an on/off switch)"
            raise UserError(f"{here}: expected {want}, got {value!r}")
        if isinstance(value, bool):
            args += runopts.option_args(key, "true" if value else "false")
        else:
            args += [option_flag(key), format_value(value, here)]
    return args


def resolve_tasks(tasks: Any, suite: str, where: str) -> list[str]:
    if not isinstance(tasks, (str, list)) or (isinstance(tasks, list) and not all(isinstance(t, str) for t in tasks)):
        raise UserError(f"{where}: expected 'all', a comma-separated string or a list of task names, got {tasks!r}")
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


def resolve_seeds(seeds: Any, where: str) -> list[int]:
    """``3`` -> [0, 1, 2]; ``"0,5"`` or ``[0, 5]`` -> [0, 5]."""
    if isinstance(seeds, str):
        parts = [p.strip() for p in seeds.split(",")]
        if not all(re.fullmatch(r"\d{1,12}", p) for p in parts):
            raise UserError(f"{where}: seeds must be a count (3) or a list (0,1,2), got {seeds!r}")
        seeds = int(parts[0]) if len(parts) == 1 else [int(p) for p in parts]
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        if not 1 <= seeds <= MAX_SEEDS:
            raise UserError(f"{where}: the seed count must be between 1 and {MAX_SEEDS}, got {seeds}")
        return list(range(seeds))
    if not isinstance(seeds, list) or not seeds or len(seeds) > MAX_SEEDS or not all(
            isinstance(s, int) and not isinstance(s, bool) and 0 <= s <= MAX_SEED for s in seeds):
        raise UserError(f"{where}: seeds must be a count or a list of integers 0..{MAX_SEED}, got {seeds!r}")
    return list(dict.fromkeys(seeds))


def load_toml(path: str | Path) -> dict[str, Any]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    path = Path(path)
    if path.is_dir():
        try:
            inside = sorted(p.name for p in path.glob("*.toml") if p.is_file())
        except OSError:
            inside = []
        hint = f"; it holds {', '.join(inside[:5])}{', ...' if len(inside) > 5 else ''}" if inside else ""
        raise UserError(f"--config {path}: is a directory, not a TOML file{hint} "
                        "(e.g. --config vtab_lily/configs/lily-vit-paper.toml)")
    if path.exists() and not path.is_file():
        raise UserError(f"--config {path}: not a regular file; give a TOML file")
    if not path.is_file():
        raise UserError(f"--config {path}: no such file")
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as err:
        raise UserError(f"{path}: {err}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: cannot read ({err})") from None


# setting -> (TOML types allowed, how to say it)
CONFIG_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "backbone": ((str,), "a string"), "adapter": ((str,), "a string"),
    "tasks": ((str, list), "'all', a string or a list of strings"),
    "seeds": ((int, str, list), "a count or a list of integers"),
    "select": ((str,), "a string"), "select_seeds": ((int,), "an integer"),
    "demo": ((bool,), "true or false (unquoted)"), "paper": ((bool,), "true or false (unquoted)"),
    "grid": ((dict,), "a table, e.g. [grid] scale = [0.1, 1]"),
    "run": ((dict,), "a table of run options, e.g. [run] epochs = 100"),
}
CONFIG_KEYS = tuple(CONFIG_TYPES)


def check_config_types(config: dict[str, Any], where: str) -> None:
    """Every top-level setting known and of its type; grid values scalars or lists of scalars."""
    for key, value in config.items():
        if key not in CONFIG_TYPES:
            raise UserError(f"{where}: {unknown_name('sweep setting', key, CONFIG_KEYS)}")
        types, how = CONFIG_TYPES[key]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise UserError(f"{where}: {key} must be {how}, got {type(value).__name__} {value!r}")
    for key, values in config.get("grid", {}).items():
        for value in values if isinstance(values, list) else [values]:
            format_value(value, f"{where}: grid.{key}")


def _check_adapter_field(key: str, adapter: Any, where: str) -> None:
    """A grid key that is no run option goes to the adapter (``--adapter-opt``): it must be one of its fields."""
    import dataclasses

    from ..adapters import ADAPTERS
    from ..errors import suggest

    cls = ADAPTERS.get(adapter) if isinstance(adapter, str) else None
    if cls is None or not dataclasses.is_dataclass(cls):
        return  # an unknown adapter is reported with its own message
    fields = [f.name for f in dataclasses.fields(cls)]
    if key not in fields:
        hint = suggest(key, fields) or runopts.run_option_hint(runopts.flag_name(key))
        raise UserError(f"{where}: grid key {key!r} is neither a run option nor an option of adapter {adapter!r}"
                        f"{hint}")


def _adapter_value(key: str, adapter: Any, text: str, where: str) -> Any:
    """Grid value ``text`` of adapter option ``key`` as the runner's ``--adapter-opt`` reads it
    (``paper`` where the adapter has a per-task table, else the field's type), or a UserError now
    rather than one failed trial per task later."""
    import dataclasses
    import typing

    from ..adapters import ADAPTERS
    from ..runconfig import adapter_option_value, unsigned_zero

    cls = ADAPTERS.get(adapter) if isinstance(adapter, str) else None
    if cls is None or not dataclasses.is_dataclass(cls):
        return text  # an unknown adapter is reported with its own message
    try:
        value = adapter_option_value(adapter, key, text, typing.get_type_hints(cls)[key])
    except UserError as err:
        raise UserError(f"{where}: {key} = {text!r}: {err}") from None
    return runopts.normal_value(key, None, value, where) if isinstance(value, str) else unsigned_zero(value)


def build_grid(config: dict[str, Any], flags: dict[str, Any], where: str) -> tuple[dict[str, list[str]], list[str]]:
    """The grid (keys checked, values deduplicated by what the run parses them to) and notes."""
    grid: dict[str, list[str]] = {}
    for key, values in config.get("grid", {}).items():
        values = values if isinstance(values, list) else [values]
        grid[key] = [format_value(v, f"{where}: grid.{key}") for v in values]
    flagged: set[str] = set()
    for key, values in flags.get("grid", []):
        if key in flagged:
            raise UserError(f"--grid {key}=... is given twice; give all its values in one flag")
        flagged.add(key)
        grid[key] = values  # a flag replaces that key of the file's grid
    if not grid:
        raise UserError(f"{where}: empty grid; give --grid NAME=V1,V2 (e.g. --grid scale=0.1,1)")
    notes: list[str] = []
    for key, values in grid.items():
        if not _KEY.match(key):
            raise UserError(f"{where}: grid key {key!r} is not a run option name")
        action = runopts.check_grid_key(key, where)
        if action is None:
            _check_adapter_field(key, flags.get("adapter") or config.get("adapter"), where)
        if not values:
            raise UserError(f"{where}: grid.{key} has no values")
        kept: dict[str, str] = {}
        for text in values:
            value = runopts.normal_value(key, action, text, f"{where}: grid")
            if action is None:  # an adapter option: as the runner reads it (5 and 5.0 differ for an int)
                value = _adapter_value(key, flags.get("adapter") or config.get("adapter"), text, f"{where}: grid")
            normal = json.dumps(value, default=str)
            if normal in kept:
                notes.append(f"grid.{key}: {text!r} is the same value as {kept[normal]!r}; running it once")
            else:
                kept[normal] = text
        grid[key] = list(kept.values())
    count = 1
    for values in grid.values():
        count *= len(values)
    if count > MAX_POINTS:
        raise UserError(f"{where}: the grid has {count} points; at most {MAX_POINTS}")
    return grid, notes


def build_spec(config: dict[str, Any], where: str, *, flags: dict[str, Any] | None = None) -> SweepSpec:
    """Merge a TOML mapping (``where`` names its file) with flag values (flags win)."""
    check_config_types(config, where)
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    merged = {**config, **{k: v for k, v in flags.items() if k not in ("grid", "run_args")}}
    grid, notes = build_grid(config, flags, where)

    run_args = run_args_from_table(config.get("run", {}), where) + list(flags.get("run_args", []))
    check_run_args(run_args, grid)

    for key in ("backbone", "adapter"):
        if not isinstance(merged.get(key), str) or not merged[key].strip():
            raise UserError(f"{where}: missing --{key}")
    select = merged.get("select", "val")
    if select not in SELECT_MODES:
        raise UserError(f"{where}: {unknown_name('selection mode', str(select), SELECT_MODES)}")
    demo, paper = merged.get("demo", False), merged.get("paper", False)
    for key, value in (("demo", demo), ("paper", paper)):
        if not isinstance(value, bool):
            raise UserError(f"{where}: {key} must be true or false, got {value!r}")
    seeds = resolve_seeds(merged.get("seeds", 1), f"{where}: seeds")
    select_seeds = merged.get("select_seeds", 1)
    if not isinstance(select_seeds, int) or isinstance(select_seeds, bool) or not 1 <= select_seeds <= len(seeds):
        raise UserError(f"{where}: select_seeds must be between 1 and the number of seeds ({len(seeds)}), "
                        f"got {select_seeds!r}")
    tasks = resolve_tasks(merged.get("tasks", "all"), "demo" if demo else "vtab", f"{where}: tasks")
    return SweepSpec(
        backbone=merged["backbone"].strip(), adapter=merged["adapter"].strip(), grid=grid, tasks=tasks, seeds=seeds,
        select=select, select_seeds=select_seeds, demo=demo, run_args=run_args, paper=paper, notes=tuple(notes),
    )


def check_run_args(run_args: list[str], grid: dict[str, list[str]]) -> None:
    """Fixed run options: exact names of the runner's options, none the sweep or the grid sets."""
    taken = {runopts.flag_name(k) for k in grid}
    for name, value in runopts.parse_fixed(run_args):
        if name in taken or (name.startswith("no-") and name[3:] in taken):
            raise UserError(f"run option '--{name}' is also a grid key; drop one of them")
        action = runopts.run_actions()[name]
        if value is not None and callable(action.type):  # numbers: parsed and finite (paths stay free text)
            runopts.normal_value(name, action, value, "run option")
        if name == runopts.ADAPTER_OPT and value is not None and value.partition("=")[0] in grid:
            raise UserError(f"run option '--adapter-opt {value}' is also a grid key; drop one of them")
