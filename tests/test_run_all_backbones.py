"""./run_all.sh takes any registered backbone alias like the ViT-B path, and --dry-run resolves
every task's run (the alias's full-size backbone, its label) and says what a real run would still
need, without training, fetching or exporting anything."""

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
