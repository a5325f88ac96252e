"""Hub fetches through the real huggingface_hub client, pointed (HF_ENDPOINT) at a local server
that answers as the Hub does: sha256 and size from the LFS metadata are checked, a cut
connection is resumed by the client, and a wrong hash, a wrong size, a 404 or offline mode
leave nothing under the target name."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fetch_server import FetchServer
from vtab_lily.fetch import FetchError, Source, fetch

REPO = Path(__file__).resolve().parents[1]
DATA = os.urandom(200_000)
SHA = hashlib.sha256(DATA).hexdigest()
SOURCE = Source("vim-x", "vim_x.pth", len(DATA), repo_id="org/Vim-x")


@pytest.fixture
def hub(monkeypatch):
    server = FetchServer()
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    yield server
    server.close()


def test_hub_download_is_checked_against_the_lfs_sha256(hub, tmp_path, capsys):
    hub.add("org/Vim-x/vim_x.pth", DATA)
    record = fetch(SOURCE, tmp_path, progress=False)
    assert (tmp_path / "vim_x.pth").read_bytes() == DATA
    assert record["sha256"] == SHA and record["verified"] == "hub-lfs-sha256"
    assert "matches the Hub's published sha256" in capsys.readouterr().out
    assert not (tmp_path / ".fetch" / "hub" / "org--Vim-x" / "vim_x.pth").exists()  # moved, not copied


def test_hub_wrong_hash_is_refused_and_deleted(hub, tmp_path):
    hub.add("org/Vim-x/vim_x.pth", DATA, sha256="ab" * 32)
    with pytest.raises(FetchError, match="does not match the published abab"):
        fetch(SOURCE, tmp_path, progress=False)
    assert not (tmp_path / "vim_x.pth").exists()
    assert not (tmp_path / ".fetch" / "hub" / "org--Vim-x" / "vim_x.pth").exists()


def test_hub_wrong_size_is_refused(hub, tmp_path):
    hub.add("org/Vim-x/vim_x.pth", DATA, size=len(DATA) + 10)
    with pytest.raises(FetchError, match="vim_x.pth"):
        fetch(SOURCE, tmp_path, progress=False)
    assert not (tmp_path / "vim_x.pth").exists()


def test_hub_404_names_the_url(hub, tmp_path):
    with pytest.raises(FetchError, match=r"org/Vim-x/resolve/main/vim_x.pth: 404 not found.*\n  or: download"):
        fetch(SOURCE, tmp_path, progress=False)


def test_hub_cut_connection_is_resumed_by_the_client(hub, tmp_path):
    from huggingface_hub import constants

    block = constants.DOWNLOAD_CHUNK_SIZE  # the client writes (and so resumes) in blocks of this size
    data = os.urandom(block + 300_000)
    served = hub.add("org/Vim-x/vim_x.pth", data, cut_after=block + 100_000)
    fetch(Source("vim-x", "vim_x.pth", len(data), repo_id="org/Vim-x"), tmp_path, progress=False)
    assert (tmp_path / "vim_x.pth").read_bytes() == data
    assert ("GET", f"bytes={block}-") in served.requests  # the rest only, not the file again


def test_offline_names_the_url_and_the_folder(hub, tmp_path, monkeypatch):
    served = hub.add("org/Vim-x/vim_x.pth", DATA)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FetchError, match=rf"offline .*download {hub.url}/org/Vim-x/resolve/main/vim_x.pth by hand "
                                         rf".*put it at {tmp_path}/vim_x.pth"):
        fetch(SOURCE, tmp_path, progress=False)
    assert served.requests == []  # not one request


def test_cli_dry_run_and_fetch_of_a_registered_backbone(hub, tmp_path):
    """``python -m vtab_lily.fetch weights vim-t`` as a user types it, the Hub at HF_ENDPOINT."""
    data = os.urandom(50_000)
    hub.add("hustvl/Vim-tiny-midclstok/vim_t_midclstok_76p1acc.pth", data)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "vtab_lily.fetch", "weights", "vim-t", "--no-progress"]
    dry = subprocess.run([*cmd, "--dry-run"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert dry.returncode == 0, dry.stderr
    assert f"{hub.url}/hustvl/Vim-tiny-midclstok/resolve/main/vim_t_midclstok_76p1acc.pth" in dry.stdout
    assert "-> backbones/vim_t_midclstok_76p1acc.pth  (50 kB; sha256 from the Hub's LFS metadata)" in dry.stdout
    assert not (tmp_path / "backbones").exists()  # a dry run writes nothing
    real = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert real.returncode == 0, real.stderr
    assert (tmp_path / "backbones" / "vim_t_midclstok_76p1acc.pth").read_bytes() == data
    assert hashlib.sha256(data).hexdigest() in real.stdout
    missing = subprocess.run([sys.executable, "-m", "vtab_lily.fetch", "weights", "vim-q"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "unknown backbone 'vim-q'" in missing.stderr and "Traceback" not in missing.stderr
