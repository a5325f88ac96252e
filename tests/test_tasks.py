import subprocess
import sys

import pytest

from vtab_lily.errors import UserError
from vtab_lily.tasks import ALIASES, GROUPS, VTAB_TASKS, get_task, task_names


def test_nineteen_tasks_in_vtab_order_and_groups():
    names = task_names()
    assert len(names) == 19
    assert names[0] == "cifar" and names[-1] == "smallnorb_ele"
    counts = {g: sum(t.group == g for t in VTAB_TASKS.values()) for g in GROUPS}
    assert counts == {"Natural": 7, "Specialized": 4, "Structured": 8}
    # Groups are contiguous in VTAB order (leaderboard columns rely on it).
    groups = [VTAB_TASKS[n].group for n in names]
    assert groups == sorted(groups, key=GROUPS.index)


def test_class_counts_and_sizes_from_registry():
    sun = get_task("sun397")
    assert sun.num_classes == 397 and sun.test_size == 21_750
    assert sun.expected_size("train800") == 800
    assert sun.expected_size("val200") == 200
    assert sun.expected_size("train800val200") == 1000
    assert sun.expected_size("test") == 21_750
    assert get_task("patch_camelyon").num_classes == 2


def test_aliases_resolve():
    for alias, target in ALIASES.items():
        assert get_task(alias).name == target
    assert get_task("cifar100").name == "cifar"
    assert get_task("oxford_pet").name == "oxford_iiit_pet"


def test_unknown_task_suggests_closest():
    with pytest.raises(UserError, match=r"did you mean 'dtd'"):
        get_task("dtdd")
    with pytest.raises(UserError, match="unknown task"):
        get_task("imagenet")


def test_cli_prints_table():
    out = subprocess.run([sys.executable, "-m", "vtab_lily.tasks"], capture_output=True, text=True, check=True).stdout
    assert "diabetic_retinopathy" in out and "Specialized" in out and "42670" in out
    assert "cifar100 -> cifar" in out
