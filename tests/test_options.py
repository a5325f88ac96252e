"""Options are declared once (``vtab_lily/options.py`` for the runner, ``options.setting`` fields
for an adapter) and everything else derives from the declaration: the parser, the bound checks,
the label, the hashes and the dry run."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from vtab_lily import options, rundir
from vtab_lily.adapters import ADAPTERS, AdaptFormerConfig
from vtab_lily.errors import UserError
from vtab_lily.official import RECIPE_KEYS
from vtab_lily.options import setting
from vtab_lily.run import execute
from vtab_lily.runconfig import check_args
from vtab_lily.runspec import resolve

REPO = Path(__file__).resolve().parents[1]


def test_the_parser_the_hash_and_the_labels_follow_the_declarations():
    parser_dests = {a.dest for a in options.build_parser()._actions if a.dest != "help"}
    flagged = {f.name for f in options.declarations() if f.metadata["flag"] is not None}
    assert parser_dests == flagged
    assert set(rundir.LOCAL_KEYS) == set(options.names("local")) | {"adapter_options", "report", "checkpoint_sha256"}
    assert RECIPE_KEYS == options.names("recipe", "setup")
    assert set(rundir.SETUP_KEYS) == set(options.names("setup")) | {"pretrained"}


@pytest.mark.parametrize("argv, message", [
    (["--epochs", "0"], "--epochs must be >= 1, got 0"),
    (["--epochs", "100001"], "--epochs must be <= 100,000"),
    (["--seed", "-1"], r"--seed must be in \[0, 2\*\*32\)"),
    (["--lr", "nan"], "--lr must be a finite number > 0"),
    (["--drop-path", "1"], "--drop-path must be below 1"),
    (["--threads", "0"], "--threads must be >= 1"),
    (["--dropout", "1"], "--dropout must be below 1"),
])
def test_declared_bounds_are_checked(argv, message):
    with pytest.raises(UserError, match=message):
        check_args(["--task", "dtd", *argv])


def test_placement_paper_is_adaptformers_paper_placement_not_a_per_task_value():
    # 'paper' is the per-task word only for the flags whose reader takes it (--rank, --scale)
    out = subprocess.run([sys.executable, "-m", "vtab_lily.run", "--adapter", "adaptformer", "--placement", "paper",
                          "--task", "dtd", "--check"], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok: adaptformer r=8 s=0.1 placement=paper"
    with pytest.raises(UserError, match="no published per-task rank"):
        check_args(["--adapter", "adaptformer", "--rank", "paper", "--task", "dtd"])


@dataclasses.dataclass
class WithInitStd(AdaptFormerConfig):
    """AdaptFormer plus one numeric option, declared the way a new option is: one field."""

    init_std: float = setting(0.0, at_least=0, at_most=1, unrecorded_default=True, help="test option")


def test_a_new_numeric_adapter_option_is_one_declaration(monkeypatch, capsys):
    base = resolve(["--adapter", "adaptformer", "--task", "dtd"])
    monkeypatch.setitem(ADAPTERS, "adaptformer", WithInitStd)
    same = resolve(["--adapter", "adaptformer", "--task", "dtd"])  # at its default: old runs keep their names
    assert (same.label, same.method_hash, same.config_hash) == (base.label, base.method_hash, base.config_hash)
    tuned = resolve(["--adapter", "adaptformer", "--task", "dtd", "--adapter-opt", "init_std=0.01"])
    assert tuned.label == "adaptformer r=8 s=0.1 init_std=0.01" and tuned.deviations == ("init_std=0.01",)
    assert tuned.method_hash != base.method_hash and tuned.config_hash != base.config_hash
    with pytest.raises(UserError, match="adaptformer: init_std must be <= 1, got 2.0"):
        resolve(["--adapter", "adaptformer", "--task", "dtd", "--adapter-opt", "init_std=2"])
    assert execute(["--adapter", "adaptformer", "--task", "dtd", "--adapter-opt", "init_std=0.01", "--dry-run"])[0] == 0
    shown = json.loads(capsys.readouterr().out.split("\nparameters:")[0])
    assert shown["config"]["adapter_config"]["init_std"] == 0.01 and shown["method"] == tuned.label


def test_the_spec_is_frozen_and_downstream_gets_copies():
    spec = resolve(["--task", "dtd"])
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.label = "x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        spec.config["lr"] = 1.0  # type: ignore[index]
    copy = spec.config_dict()
    copy["adapter_config"]["rank"] = 1
    assert spec.config["adapter_config"]["rank"] == 32


def test_houlsby_init_std_the_option_added_as_one_declaration():
    import torch

    from vtab_lily.adapters import apply_adapter
    from vtab_lily.backbones import create_backbone

    def built():
        torch.manual_seed(0)
        return create_backbone("vit-tiny-test", num_classes=3, img_size=32).eval()

    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    expected = built()(x)
    identity = apply_adapter(built(), "houlsby").eval()
    near = apply_adapter(built(), "houlsby", init_std=0.01).eval()
    torch.testing.assert_close(identity(x), expected)  # the default starts exactly as the backbone
    assert not torch.allclose(near(x), expected) and torch.allclose(near(x), expected, atol=0.5)
    spec = resolve(["--adapter", "pfeiffer", "--task", "dtd", "--adapter-opt", "init_std=0.01"])
    assert spec.label == "pfeiffer r=8 s=1 mlp init_std=0.01" and spec.deviations == ("init_std=0.01",)
    with pytest.raises(UserError, match="houlsby: init_std must be <= 1"):
        check_args(["--adapter", "houlsby", "--task", "dtd", "--adapter-opt", "init_std=1.5"])


def test_the_sweep_checks_an_adapter_options_declared_bounds_before_anything_runs(tmp_path):
    out = subprocess.run([sys.executable, "-m", "vtab_lily.sweep", "--backbone", "vit", "--adapter", "houlsby",
                          "--grid", "init_std=0,2", "--tasks", "dtd", "--dry-run", "--out", str(tmp_path / "runs")],
                         capture_output=True, text=True, cwd=REPO, timeout=300)
    assert out.returncode == 2 and "init_std=2: houlsby: init_std must be <= 1, got 2.0" in out.stderr
    assert not (tmp_path / "runs").exists()
