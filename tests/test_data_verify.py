"""``python -m vtab_lily.data verify``: exit 0 when clean, 2 with the reasons when not."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from vtab_lily.data.testing import write_task
from vtab_lily.data.verify import main
from vtab_lily.errors import UserError
from vtab_lily.tasks import Task, register_suite

REPO = Path(__file__).resolve().parents[1]
TASKS = {"alpha": Task("alpha", "Natural", 4, test_size=12), "beta": Task("beta", "Structured", 2, test_size=6)}
register_suite("verifytest", TASKS)


@pytest.fixture(scope="module")
def clean_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("suite")
    for index, task in enumerate(TASKS.values()):
        write_task(root, task.name, task.num_classes, test_size=task.test_size, size=(8, 8), seed=index)
    return root


@pytest.fixture
def root(clean_root, tmp_path):
    copy = tmp_path / "root"
    subprocess.run(["cp", "-r", str(clean_root), str(copy)], check=True)
    return copy


def verify(root, *extra):
    return main(["--root", str(root), "--suite", "verifytest", *extra])


def test_clean_root_exits_0_with_a_table_per_task(clean_root, capsys):
    assert verify(clean_root) == 0
    out = capsys.readouterr().out
    assert "alpha (Natural, 4 classes)" in out and "beta (Structured, 2 classes)" in out
    assert "| train800val200 |     1000 |       1000 |" in out
    assert "all 2 tasks ok" in out


def test_problems_exit_2_and_are_listed_with_file_and_line(root, capsys):
    alpha = root / "alpha"
    lines = (alpha / "train800.txt").read_text().splitlines(keepends=True)
    lines[4] = "images/train800/000004.jpg 4\n"  # label outside [0, 4)
    (alpha / "train800.txt").write_text("".join(lines))
    (alpha / "images/val200/000007.jpg").unlink()
    data = (alpha / "images/test/000002.jpg").read_bytes()
    (alpha / "images/test/000002.jpg").write_bytes(data[: len(data) // 2])
    (alpha / "images/test/000003.jpg").write_bytes(b"")
    assert verify(root) == 2
    out = capsys.readouterr().out
    assert f"{alpha / 'train800.txt'}:5: label 4 outside [0, 4)" in out
    assert f"{alpha / 'val200.txt'}:8: images/val200/000007.jpg: image file does not exist" in out
    assert f"{alpha / 'test.txt'}:3: images/test/000002.jpg: cannot decode image" in out
    assert f"{alpha / 'test.txt'}:4: images/test/000003.jpg: image file is empty" in out
    assert "train800.txt: 799 entries, expected 800" in out  # the bad line is not counted
    assert "| BAD LINES, WRONG SIZE" in out and "| UNREADABLE" in out
    assert "problems in: alpha" in out and "beta" not in out.split("problems in:")[1]


def test_quick_mode_finds_missing_and_empty_files_only(root, capsys):
    (root / "beta/images/test/000001.jpg").write_bytes(b"")
    data = (root / "beta/images/test/000002.jpg").read_bytes()
    (root / "beta/images/test/000002.jpg").write_bytes(data[:50])
    assert verify(root, "--quick", "--tasks", "beta") == 2
    out = capsys.readouterr().out
    assert "000001.jpg: image file is empty" in out and "000002.jpg" not in out


def test_wrong_train_size_fails_but_wrong_test_size_only_warns(root, capsys):
    test_list = root / "beta" / "test.txt"
    test_list.write_text("".join(test_list.read_text().splitlines(keepends=True)[:4]))
    assert verify(root) == 0
    assert "warning:" in capsys.readouterr().out
    val_list = root / "beta" / "val200.txt"
    val_list.write_text("".join(val_list.read_text().splitlines(keepends=True)[:-1]))
    assert verify(root) == 2
    assert "val200.txt: 199 entries, expected 200 for beta/val200" in capsys.readouterr().out


def test_missing_task_and_list_file_are_reported(root, capsys):
    (root / "alpha" / "val200.txt").unlink()
    os.rename(root / "beta", root / "gamma")
    assert verify(root) == 2
    out = capsys.readouterr().out
    assert f"{root / 'alpha' / 'val200.txt'}: list file is missing" in out
    assert "missing from" in out and "beta" in out


def test_missing_root_and_unknown_task_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="data root .*nowhere does not exist"):
        verify(tmp_path / "nowhere")
    with pytest.raises(UserError, match="unknown task 'alpah'.*did you mean 'alpha'"):
        verify(tmp_path, "--tasks", "alpah")


@pytest.mark.parametrize("empty", ["", ",", " "])
def test_an_empty_task_list_is_refused_never_every_task(clean_root, empty):
    """``--tasks ''`` used to verify every task (and ``--tasks ,`` none, saying "all 0 tasks ok")."""
    with pytest.raises(UserError, match=f"--tasks {empty!r} names no task"):
        verify(clean_root, "--tasks", empty)


def test_cli_subprocess_exit_codes(tmp_path):
    # a VTAB task name with a short test split: a warning, not a failure
    write_task(tmp_path, "eurosat", 10, test_size=5, size=(8, 8))
    command = [sys.executable, "-m", "vtab_lily.data", "verify", "--root", str(tmp_path), "--tasks", "eurosat"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    clean = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert clean.returncode == 0, clean.stderr
    assert "5 entries, expected 5400" in clean.stdout and "all 1 tasks ok" in clean.stdout
    (tmp_path / "eurosat/images/test/000000.jpg").write_bytes(b"junk")
    broken = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert broken.returncode == 2
    assert f"{tmp_path / 'eurosat' / 'test.txt'}:1: images/test/000000.jpg" in broken.stdout
    missing = subprocess.run(command[:-3] + [str(tmp_path / "nope")], capture_output=True, text=True, env=env)
    assert missing.returncode == 2 and "error: data root" in missing.stderr
    for bad_workers in ("-1", "0", "many"):
        refused = subprocess.run([*command, "--workers", bad_workers], capture_output=True, text=True, env=env)
        assert refused.returncode == 2 and "--workers" in refused.stderr and "Traceback" not in refused.stderr
    abbreviated = subprocess.run([*command, "--quic"], capture_output=True, text=True, env=env)
    assert abbreviated.returncode == 2  # no abbreviations
    empty = subprocess.run([*command[:-1], ""], capture_output=True, text=True, env=env)
    assert empty.returncode == 2 and empty.stderr.startswith("error: --tasks '' names no task")


def test_quick_mode_refuses_a_list_entry_naming_a_folder(root, capsys):
    image = root / "beta" / "images" / "test" / "000002.jpg"
    image.unlink()
    image.mkdir()
    assert verify(root, "--quick", "--tasks", "beta") == 2
    out = capsys.readouterr().out
    assert "images/test/000002.jpg: is a folder, not an image file" in out
