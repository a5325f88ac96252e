"""./run_all.sh takes any registered backbone alias like the ViT-B path, and --dry-run resolves
every task's run (the alias's full-size backbone, its label) and says what a real run would still
need, without training, fetching or exporting anything; every backbone it accepts is documented
(docs/backbones.md: alias, demo config, family, size, patch, normalisation, fetch command;
backbones/README.md: the file expected)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ALIAS, FULL = "dinov2-b", "dinov2-b14"


def test_run_all_dry_run_resolves_an_alias_and_writes_nothing(tmp_path: Path) -> None:
    out, boards = tmp_path / "runs", tmp_path / "boards"
    env = {**os.environ, "LEADERBOARD_DIR": str(boards)}  # run from tmp_path: no backbones/, no data/
    proc = subprocess.run([str(REPO / "run_all.sh"), ALIAS, "lily", "--tasks", "dtd", "--dry-run", "--out", str(out)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr
    assert f"=== [1/1] {ALIAS} lily dtd" in proc.stdout
    assert f'"backbone": "{FULL}"' in proc.stdout  # the alias resolved to the full-size backbone
    assert f'"run_dir": "{out / FULL / "lily" / "dtd"}/' in proc.stdout
    assert "dry run: 1 task(s) resolved; nothing was trained, fetched or exported" in proc.stdout
    assert "a real run would stop there" in proc.stdout  # its weights are not here: the fetch command is named
    assert "fetch" in proc.stderr
    assert not out.exists() and not boards.exists()


def _table_rows(page: Path) -> dict[str, list[str]]:
    """The overview table of ``page`` (the one headed ``| backbone | alias |``): each row's cells
    by its first cell, unquoted."""
    lines = page.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| backbone | alias |"))
    rows = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        rows[cells[0].strip("`")] = cells
    return rows


def test_every_registered_backbone_is_documented_with_its_facts() -> None:
    from vtab_lily.backbones import ALIASES, BACKBONES

    docs = _table_rows(REPO / "docs" / "backbones.md")
    readme = (REPO / "backbones" / "README.md").read_text(encoding="utf-8")
    for name, spec in BACKBONES.items():
        if spec.test_only:
            assert f"`{name}`" in (REPO / "docs" / "backbones.md").read_text(encoding="utf-8") and f"`{name}`" in readme
            continue
        _, alias, demo, family, size, norm, feeds, _, _, fetch = docs[name]
        for short, (full, tiny) in ALIASES.items():
            if full == name:
                assert f"`{short}`" in alias and demo == f"`{tiny}`", name
        assert (family, size, norm) == (spec.family, f"{spec.img_size} / {spec.patch_size}", spec.norm), name
        assert feeds == ("none (0..1)" if spec.recipe_norm == "none" else spec.recipe_norm), name
        assert fetch == f"`python -m vtab_lily.fetch weights {name}`", name
        assert f"`{spec.checkpoint_file}`" in readme, name  # the file expected under backbones/
