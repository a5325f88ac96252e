"""The 19 VTAB-1K tasks: folder names, groups, class counts and split sizes.

The class count always comes from here, never from the labels of a list file (sun397's
1,000 training images cover only 325 of its 397 classes). ``python -m vtab_lily.tasks``
prints the registry.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import UserError, unknown_name

GROUPS = ("Natural", "Specialized", "Structured")

# The four list files of the NOAH layout and their expected sizes (test varies per task).
SPLIT_SIZES = {"train800": 800, "val200": 200, "train800val200": 1000}
SPLITS = ("train800", "val200", "train800val200", "test")
# --protocol -> (train split, evaluation split)
PROTOCOLS = {"test": ("train800val200", "test"), "val": ("train800", "val200")}


@dataclass(frozen=True)
class Task:
    name: str  # folder name under the data root
    group: str
    num_classes: int
    test_size: int

    def expected_size(self, split: str) -> int:
        return self.test_size if split == "test" else SPLIT_SIZES[split]


_TABLE = [
    ("cifar", "Natural", 100, 10_000),
    ("caltech101", "Natural", 102, 6_084),
    ("dtd", "Natural", 47, 1_880),
    ("oxford_flowers102", "Natural", 102, 6_149),
    ("oxford_iiit_pet", "Natural", 37, 3_669),
    ("svhn", "Natural", 10, 26_032),
    ("sun397", "Natural", 397, 21_750),
    ("patch_camelyon", "Specialized", 2, 32_768),
    ("eurosat", "Specialized", 10, 5_400),
    ("resisc45", "Specialized", 45, 6_300),
    ("diabetic_retinopathy", "Specialized", 5, 42_670),
    ("clevr_count", "Structured", 8, 15_000),
    ("clevr_dist", "Structured", 6, 15_000),
    ("dmlab", "Structured", 6, 22_735),
    ("kitti", "Structured", 4, 711),
    ("dsprites_loc", "Structured", 16, 73_728),
    ("dsprites_ori", "Structured", 16, 73_728),
    ("smallnorb_azi", "Structured", 18, 12_150),
    ("smallnorb_ele", "Structured", 9, 12_150),
]

VTAB_TASKS: dict[str, Task] = {row[0]: Task(*row) for row in _TABLE}
ALIASES = {"cifar100": "cifar", "oxford_pet": "oxford_iiit_pet"}

# The demo suite (drawn by vtab_lily/data/demo.py), declared here as data so that the registry
# never imports the data layer (which imports this module).
DEMO_TEST_SIZE = 300
DEMO_TASKS: dict[str, Task] = {name: Task(name, group, k, DEMO_TEST_SIZE) for name, group, k in [
    ("colours", "Natural", 8), ("cells", "Specialized", 2), ("orientation", "Structured", 6),
    ("count", "Structured", 5)]}

# Registries of suites in the same layout; tests may register more.
_SUITES: dict[str, dict[str, Task]] = {"vtab": VTAB_TASKS, "demo": DEMO_TASKS}


def register_suite(name: str, tasks: dict[str, Task]) -> None:
    _SUITES[name] = dict(tasks)


def suite(name: str = "vtab") -> dict[str, Task]:
    if name not in _SUITES:
        raise unknown_name("task suite", name, _SUITES)
    return _SUITES[name]


def get_task(name: str, suite_name: str = "vtab") -> Task:
    """Look a task up by folder name or alias; unknown names get a close-match suggestion."""
    tasks = suite(suite_name)
    name = ALIASES.get(name, name) if suite_name == "vtab" else name
    if name not in tasks:
        raise unknown_name("task", name, tasks)
    return tasks[name]


def split_task_list(text: str, option: str = "--tasks") -> list[str]:
    """``"dtd, svhn"`` -> ``["dtd", "svhn"]`` (stray commas ignored). A list that names no task
    (``''``, ``','``) is a UserError naming ``option``: leaving the option out means every task,
    an empty value never does."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise UserError(f"{option} {text!r} names no task; give task names (python -m vtab_lily.tasks lists "
                        f"them) or leave {option} out for every task")
    return names


def task_names(suite_name: str = "vtab") -> list[str]:
    return list(suite(suite_name))


def format_table(tasks: dict[str, Task]) -> str:
    from tabulate import tabulate

    rows = [(t.name, t.group, t.num_classes, t.expected_size("train800val200"), t.test_size) for t in tasks.values()]
    return tabulate(rows, headers=["task", "group", "classes", "train800val200", "test"], tablefmt="github")


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m vtab_lily.tasks", description="List the VTAB-1K tasks.",
                                     allow_abbrev=False)
    parser.add_argument("--suite", default="vtab", help="vtab (default) or demo")
    args = parser.parse_args(argv)
    print(format_table(suite(args.suite)))
    if args.suite == "vtab":
        print("\naliases: " + ", ".join(f"{a} -> {t}" for a, t in ALIASES.items()))
    return 0


if __name__ == "__main__":
    from .errors import run_cli

    run_cli(main)
