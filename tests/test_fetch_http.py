"""Plain HTTPS fetches (Google's ViT bucket) against a local server: a full download, resume after
a cut connection, a wrong hash, a 404, a stalled server, a full disk and two fetches at once.
Nothing half-downloaded ever appears under the target name."""

from __future__ import annotations

import errno
import hashlib
import os
import threading

import pytest

from fetch_server import FetchServer
from vtab_lily.fetch import FetchError, Source, fetch
from vtab_lily.fetch import http as fetch_http
from vtab_lily.fetch.files import file_sha256, read_record

DATA = os.urandom(300_000)  # ~5 blocks of the server's 64 kB writes
SHA = hashlib.sha256(DATA).hexdigest()


@pytest.fixture
def server():
    s = FetchServer()
    yield s
    s.close()


def source(server: FetchServer, name: str = "w.npz") -> Source:
    return Source("test", name, len(DATA), url=f"{server.url}/{name}")


def test_full_download_records_and_shows_the_hash(server, tmp_path, capsys):
    server.add("w.npz", DATA)
    record = fetch(source(server), tmp_path, progress=False)
    assert (tmp_path / "w.npz").read_bytes() == DATA
    assert record["sha256"] == SHA and record["size"] == len(DATA) and record["verified"] == "first-download"
    assert f"sha256 {SHA}" in capsys.readouterr().out  # shown, so two people can compare
    assert read_record(tmp_path / "w.npz")["sha256"] == SHA
    assert file_sha256(tmp_path / "w.npz") == SHA
    assert not (tmp_path / ".fetch" / "w.npz.part").exists()
    # a second fetch finds it and downloads nothing
    served = server.files["w.npz"]
    before = len(served.requests)
    assert fetch(source(server), tmp_path, progress=False)["sha256"] == SHA
    assert len(served.requests) == before


def test_cut_connection_resumes_with_a_range_request(server, tmp_path):
    served = server.add("w.npz", DATA, cut_after=100_000)
    with pytest.raises(FetchError, match="rerun to resume"):
        fetch(source(server), tmp_path, progress=False, retries=0)
    assert not (tmp_path / "w.npz").exists()  # never the half file under the real name
    part = tmp_path / ".fetch" / "w.npz.part"
    assert part.stat().st_size == 100_000
    record = fetch(source(server), tmp_path, progress=False, retries=0)  # the rerun asks for the rest only
    assert served.requests[-1] == ("GET", "bytes=100000-")
    assert (tmp_path / "w.npz").read_bytes() == DATA and record["sha256"] == SHA


def test_cut_connection_is_retried_within_one_fetch(server, tmp_path):
    served = server.add("w.npz", DATA, cut_after=70_000, cuts=2)
    fetch(source(server), tmp_path, progress=False, retries=3)
    assert (tmp_path / "w.npz").read_bytes() == DATA
    assert [r for _, r in served.requests] == [None, "bytes=70000-", "bytes=140000-"]


def test_file_changed_on_the_server_is_not_spliced(server, tmp_path):
    server.add("w.npz", DATA, cut_after=100_000)
    with pytest.raises(FetchError):
        fetch(source(server), tmp_path, progress=False, retries=0)
    new = os.urandom(len(DATA))  # a new version under the same URL: its ETag differs
    served = server.add("w.npz", new)
    fetch(source(server), tmp_path, progress=False, retries=0)
    assert (tmp_path / "w.npz").read_bytes() == new  # If-Range made the server send it whole
    assert served.requests[-1] == ("GET", "bytes=100000-")


def test_part_of_unknown_version_starts_over(server, tmp_path):
    served = server.add("w.npz", DATA)
    part = tmp_path / ".fetch" / "w.npz.part"
    part.parent.mkdir()
    part.write_bytes(b"x" * 5000)  # no record of which version it holds
    fetch(source(server), tmp_path, progress=False)
    assert (tmp_path / "w.npz").read_bytes() == DATA
    assert served.requests == [("GET", None)]


def test_wrong_hash_deletes_the_download(server, tmp_path):
    server.add("w.npz", DATA)
    with pytest.raises(FetchError, match="does not match the published"):
        fetch_http.download(source(server).url, tmp_path / "w.npz", sha256="0" * 64, progress=False)
    assert not (tmp_path / ".fetch" / "w.npz.part").exists() and not (tmp_path / "w.npz").exists()


def test_part_longer_than_the_file_starts_over(server, tmp_path):
    server.add("w.npz", DATA)
    part = tmp_path / ".fetch" / "w.npz.part"
    part.parent.mkdir()
    part.write_bytes(DATA + b"extra")  # the server answers 416: not the file, start over
    fetch(source(server), tmp_path, progress=False)
    assert (tmp_path / "w.npz").read_bytes() == DATA


def test_404_names_the_url_and_the_way_by_hand(server, tmp_path):
    with pytest.raises(FetchError, match=r"w.npz: 404 not found.*\n  or: download .*w.npz by hand"):
        fetch(source(server), tmp_path, progress=False)
    assert not (tmp_path / "w.npz").exists()


def test_stalled_server_times_out_and_keeps_the_bytes(server, tmp_path):
    server.add("w.npz", DATA, stall=5)
    with pytest.raises(FetchError, match="(?i)timed out.*after 1 attempts.*rerun to resume"):
        fetch(source(server), tmp_path, progress=False, timeout=0.5, retries=0)
    assert not (tmp_path / "w.npz").exists()
    assert (tmp_path / ".fetch" / "w.npz.part").stat().st_size == 65536  # the first block, kept for the resume


def test_full_disk_keeps_a_clean_prefix_and_resumes(server, tmp_path, monkeypatch):
    server.add("w.npz", DATA)
    real_write, written = os.write, []

    def write(fd, data):  # the disk fills after 150 kB (at most 50 kB more of this block fit)
        room = 150_000 - sum(written)
        if room <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        n = real_write(fd, bytes(data)[:room])
        written.append(n)
        return n

    monkeypatch.setattr(fetch_http.os, "write", write)
    with pytest.raises(FetchError, match="disk is full.*rerun to resume"):
        fetch(source(server), tmp_path, progress=False)
    assert not (tmp_path / "w.npz").exists()
    part = tmp_path / ".fetch" / "w.npz.part"
    assert part.read_bytes() == DATA[:150_000]  # exactly the bytes that reached the disk
    monkeypatch.setattr(fetch_http.os, "write", real_write)
    fetch(source(server), tmp_path, progress=False)
    assert (tmp_path / "w.npz").read_bytes() == DATA


def test_not_enough_space_is_refused_before_downloading(server, tmp_path, monkeypatch):
    server.add("w.npz", DATA)
    monkeypatch.setattr("shutil.disk_usage", lambda _: type("U", (), {"free": 1000})())
    with pytest.raises(FetchError, match=r"needs 0.00 GB more .* only 0.00 GB free"):
        fetch(source(server), tmp_path, progress=False)
    assert not (tmp_path / "w.npz").exists()


def test_two_fetches_of_one_file_download_it_once(server, tmp_path):
    served = server.add("w.npz", DATA, throttle=0.05)
    results, errors = [], []

    def one() -> None:
        try:
            results.append(fetch(source(server), tmp_path, progress=False))
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=one) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    assert [r["sha256"] for r in results] == [SHA, SHA]
    assert [m for m, _ in served.requests].count("GET") == 1  # the second waited, then found the file
    assert (tmp_path / "w.npz").read_bytes() == DATA


def test_no_network_fails_at_once_naming_the_way_by_hand(tmp_path):
    import time

    start = time.monotonic()
    with pytest.raises(FetchError, match=r"cannot reach http://127.0.0.1:1/w.npz.*\n  or: download .* by hand .*"
                                         r"put it at .*w.npz"):
        fetch(Source("test", "w.npz", 1, url="http://127.0.0.1:1/w.npz"), tmp_path, progress=False)
    assert time.monotonic() - start < 5  # no retries against a machine that is not there


def test_target_that_is_a_folder_is_refused(server, tmp_path):
    server.add("w.npz", DATA)
    (tmp_path / "w.npz").mkdir()
    with pytest.raises(FetchError, match="exists and is not a file"):
        fetch(source(server), tmp_path, progress=False)
    assert server.files["w.npz"].requests == []
