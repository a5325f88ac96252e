"""The README is the front door and docs/ holds the rest: every page is reachable from the README,
every relative link points at a file of the repository, no page cites a file outside it, and the
runner commands they show are valid command lines (checked as ``--check`` checks them)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from vtab_lily import options
from vtab_lily.runconfig import check_args

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def code_lines(page: Path) -> list[str]:
    """Shell lines of the page's ```bash blocks, continuation lines joined, comments dropped."""
    out, block, text = [], False, page.read_text(encoding="utf-8")
    for line in text.replace("\\\n", " ").splitlines():
        if line.strip().startswith("```"):
            block = not block
            continue
        if block:
            command = line.split(" #")[0].strip()
            if command and not command.startswith("#"):
                out.append(command)
    return out


def test_the_readme_is_short_and_links_every_doc_page():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 150
    linked = set(LINK.findall(readme))
    missing = [p.name for p in PAGES[1:] if f"docs/{p.name}" not in linked]
    assert missing == [], f"docs pages not linked from README.md: {missing}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_links_point_into_the_repository_and_nothing_cites_files_outside_it(page):
    text = page.read_text(encoding="utf-8")
    assert "REFERENCE" not in text and "../shared" not in text, f"{page.name} cites a file users do not have"
    broken = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        path = (page.parent / target.split("#")[0]).resolve()
        if not path.exists() or REPO not in path.parents:
            broken.append(target)
    assert broken == [], f"{page.name}: links to missing files {broken}"


def runner_argv(line: str) -> list[str] | None:
    """``./run_all.sh vit lily --paper`` or ``python -m vtab_lily.run ...`` as one run's arguments."""
    words = shlex.split(line.split("&&")[-1])
    if words[:1] == ["./run_all.sh"]:
        backbone, adapter, *rest = words[1:]
        argv = ["--backbone", backbone, "--adapter", adapter]
        while rest:
            word = rest.pop(0)
            if word == "--tasks":
                argv += ["--task", rest.pop(0).split(",")[0]]
            else:
                argv.append(word)
        return argv if "--task" in argv else argv + ["--task", "colours" if "--demo" in argv else "dtd"]
    if words[:3] == ["python", "-m", "vtab_lily.run"]:
        return [w for w in words[3:] if w not in ("--dry-run", "--check")]
    return None


def test_the_runner_commands_of_the_readme_and_docs_are_valid():
    checked = 0
    for page in PAGES:
        for line in code_lines(page):
            argv = runner_argv(line)
            if argv is not None:
                check_args(argv)  # a UserError names the page's bad command
                checked += 1
    assert checked >= 8


def test_the_command_line_page_names_every_option():
    text = (REPO / "docs" / "command-line.md").read_text(encoding="utf-8")
    missing = [options.flag_of(f) for f in options.declarations()
               if f.metadata["flag"] is not None and options.flag_of(f) not in text]
    assert missing == [], f"docs/command-line.md does not mention {missing}"


def test_the_demo_needs_none_of_the_test_extras(tmp_path):
    # command 1 installs the package alone: a demo run (tiny, one task) with PEFT, Ray, Triton and
    # transformers made unimportable, then its leaderboard
    import subprocess
    import sys

    code = ("import sys\n"
            "for name in ('peft', 'ray', 'triton', 'transformers'):\n"
            "    sys.modules[name] = None\n"
            "from vtab_lily.run import main\n"
            f"code = main(['--demo', '--task', 'colours', '--epochs', '1', '--img-size', '16', '--rank', '4',\n"
            f"             '--data-root', {str(tmp_path / 'demo')!r}, '--out', {str(tmp_path / 'runs')!r}])\n"
            "from vtab_lily.leaderboard.__main__ import main as board\n"
            f"board(['--runs', {str(tmp_path / 'runs')!r}, '--out', {str(tmp_path / 'boards')!r}])\n"
            "assert not any(sys.modules.get(n) for n in ('peft', 'ray', 'triton', 'transformers'))\n"
            "sys.exit(code)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=600,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert out.returncode == 0, out.stderr[-2000:]
    assert list((tmp_path / "runs").rglob("result.json")) and (tmp_path / "boards" / "vit-tiny-test.md").is_file()
