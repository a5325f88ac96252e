import re

from vtab_lily import provenance


def test_versions_name_installed_and_missing_packages():
    out = provenance.versions(("torch", "no-such-package-vtab-lily"))
    assert re.match(r"\d+\.\d+", out["python"]) and re.match(r"\d+\.\d+", out["torch"])
    assert out["no-such-package-vtab-lily"] == "not installed"


def test_git_commit_is_a_hash_or_none():
    full, short = provenance.git_commit(), provenance.git_commit(short=True)
    assert full is None or re.fullmatch(r"[0-9a-f]{40}", full)
    assert short is None or (full is not None and full.startswith(short))


def test_imported_package_reports_its_loaded_version():
    import torch

    assert provenance.versions(("torch",))["torch"] == torch.__version__
