"""The shipped sweep files (vtab_lily/configs/*.toml): every one parses, has the right types and
names only known options; those whose adapter the runner has are resolved, trial by trial, by
the runner's own checks (the dry-run's checks)."""

from __future__ import annotations

from pathlib import Path

import pytest

from vtab_lily.errors import UserError
from vtab_lily.sweep.api import check_trials
from vtab_lily.sweep.locate import RunLocator
from vtab_lily.sweep.spec import build_spec, check_config_types, format_value, load_toml

CONFIGS = Path(__file__).resolve().parents[1] / "vtab_lily" / "configs"
SHIPPED = sorted(CONFIGS.glob("*.toml"))

# Adapter -> the option names its sweep files may use. The integrator keeps this in step with the
# adapter registry (a new baseline's TOML is checked against it until the runner has the adapter,
# then against the runner itself in test_runner_accepts_every_trial_of_its_registered_adapters).
RECIPE = {"lr", "wd", "epochs", "batch_size", "warmup", "drop_path", "normalize"}
KNOWN = {
    "lily": {"scale", "ne", "ne_a", "ne_b", "rank", "targets", "routing", "router"},
    "lora": {"rank", "alpha", "targets", "variant"},
    "adaptformer": {"rank", "scale", "placement"},
    "convpass": {"rank", "scale"},
    "repadapter": {"rank", "scale"},
    "fact-tt": {"rank", "scale"},
    "fact-tk": {"rank", "scale"},
    "vpt-deep": {"length"},
    "vpt-shallow": {"length"},
    "houlsby": {"rank", "scale"},
    "pfeiffer": {"rank", "scale"},
    "dora": {"rank", "alpha"},
    "bitfit": set(),
    "ln-tune": set(),
    "ssf": set(),
    "additional-scan": {"states"},
}
# issue 15: one paper-grid file per method
EXPECTED = {"lily", "lora", "adaptformer", "vpt-deep", "vpt-shallow", "bitfit", "ln-tune", "ssf", "houlsby",
            "pfeiffer", "convpass", "fact-tt", "fact-tk", "repadapter", "dora", "additional-scan"}


def runner_has(adapter: str) -> bool:
    from vtab_lily.run import build_parser, resolve_config

    try:
        resolve_config(build_parser().parse_args(["--adapter", adapter, "--task", "dtd"]))
    except UserError as err:
        if "unknown adapter" in str(err):
            return False
        raise
    return True


def test_every_method_has_a_paper_grid():
    adapters = {load_toml(path)["adapter"] for path in SHIPPED if path.name.endswith("-paper.toml")}
    assert adapters == EXPECTED


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_file_parses_with_known_names(path):
    config = load_toml(path)
    check_config_types(config, str(path))
    assert isinstance(config.get("backbone"), str) and config["adapter"] in KNOWN, path.name
    grid = config.get("grid", {})
    assert grid, f"{path.name}: empty grid"
    allowed = KNOWN[config["adapter"]] | RECIPE
    for key, values in grid.items():
        assert key in allowed, f"{path.name}: grid key {key!r} is not an option of {config['adapter']}"
        values = values if isinstance(values, list) else [values]
        texts = [format_value(v, f"{path.name}: grid.{key}") for v in values]
        assert len(set(texts)) == len(texts) and all(isinstance(v, (int, float, str)) for v in values)
    for key in config.get("run", {}):
        assert key in allowed, f"{path.name}: run option {key!r} is not an option of {config['adapter']}"
    assert path.read_text().startswith("#"), f"{path.name}: say where the search space comes from"


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_runner_accepts_every_trial_of_its_registered_adapters(path):
    """Files of adapters the runner has: every trial resolved as the sweep's own pre-flight check
    does (names exact, values through the runner's number checks). Files of adapters not yet in
    the runner were checked above against KNOWN; this one then only confirms the runner refuses
    the name, so a file cannot silently stay unchecked once its adapter lands."""
    config = load_toml(path)
    if not runner_has(config["adapter"]):
        assert config["adapter"] in KNOWN
        return
    spec = build_spec(config, str(path))
    check_trials(spec, "runs", RunLocator())
    assert spec.points() and len(spec.tasks) in (4, 19)
