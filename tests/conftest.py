"""Shared fixtures, and what makes the suite safe to run in parallel (pytest-xdist, see
pyproject's addopts: ``pytest`` runs on up to 4 worker processes, ``pytest -n 0`` in one).

- ``demo_root``: the generated demo suite, made once per test session and shared by every
  worker (``ensure_demo`` is safe to call from several processes at once: one writes, the
  others wait for it), so no test module pays for its own copy.
- Tests that share a module-scoped fixture run on one worker (an ``xdist_group`` per module),
  so that fixture is built once, not once per worker.
- Each worker gets its share of the cores for torch's threads (and, through the environment,
  for the processes its tests start): two workers with two threads each on two cores would
  spend their time waiting on each other's spinning threads.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
if os.environ.get("PYTEST_XDIST_WORKER") and "OMP_NUM_THREADS" not in os.environ:
    # Set before torch is imported (test modules import it later), so torch and every child
    # process start with it.
    os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // WORKERS))


def shared_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder every worker of this session sees: the session's own base temp folder, or,
    under xdist (whose workers each get a ``popen-gwN`` sub-folder), the folder above it."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo suite (generated data, a few MB), read by the tests that run the real loop."""
    from vtab_lily.data import ensure_demo

    return ensure_demo(shared_tmp(tmp_path_factory) / "vtab-demo")


@pytest.fixture
def dry_run_json(tmp_path: Path, capsys: pytest.CaptureFixture):
    """``dry_run_json(*argv)``: ``python -m vtab_lily.run ARGV --dry-run`` in-process; the JSON it prints."""
    import json

    from vtab_lily import run  # imported here: torch only after the worker's thread count is set

    def dry_run(*argv: str) -> dict:
        assert run.main([*argv, "--dry-run", "--out", str(tmp_path / "runs")]) == 0
        out = capsys.readouterr().out
        return json.loads(out[:out.rindex("}") + 1])

    return dry_run


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = getattr(item, "_fixtureinfo", None)
        if fixtures is None:
            continue
        scopes = {d.scope for defs in fixtures.name2fixturedefs.values() for d in defs}
        if "module" in scopes and not item.get_closest_marker("xdist_group"):
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::")[0]))
