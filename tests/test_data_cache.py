"""The decoded uint8 cache: hit without decoding, miss, invalidation, crash safety, concurrency."""

import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from vtab_lily.data import images as images_module
from vtab_lily.data import load_split
from vtab_lily.data.cache import CacheWarning
from vtab_lily.data.testing import write_task
from vtab_lily.tasks import Task

TEST_SIZE = 24
TINY = Task("tiny", "Natural", num_classes=3, test_size=TEST_SIZE)
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def root(tmp_path):
    write_task(tmp_path, TINY.name, TINY.num_classes, test_size=TEST_SIZE,
               train_sizes={"train800": 0, "val200": 0}, size=(30, 20))
    return tmp_path


@pytest.fixture
def decodes(monkeypatch):
    """Counts calls of decode_image made by load_split."""
    calls = []
    real = images_module.decode_image

    def counting(path, size):
        calls.append(path)
        return real(path, size)

    monkeypatch.setattr(images_module, "decode_image", counting)
    return calls


def cache_files(root: Path) -> list[Path]:
    return sorted((root / ".cache" / TINY.name).glob("*.npy"))


def test_second_load_hits_the_cache_without_decoding(root, decodes):
    first = load_split(root, TINY, "test", img_size=16)
    assert len(decodes) == TEST_SIZE
    [file] = cache_files(root)
    assert file.name.startswith("test-16px-v1-")
    second = load_split(root, TINY, "test", img_size=16)
    assert len(decodes) == TEST_SIZE  # nothing decoded again
    assert torch.equal(first.images, second.images) and torch.equal(first.labels, second.labels)
    shutil.rmtree(root / TINY.name / "images")  # the cache alone is enough now
    third = load_split(root, TINY, "test", img_size=16, normalize=False)
    assert torch.equal(third.images, first.images) and third.normalize is False


def _mapped_files(tensor: torch.Tensor) -> set[str]:
    """Files whose mapping in this process holds ``tensor``'s first byte (Linux /proc)."""
    address = tensor.data_ptr()
    found = set()
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        start, stop = (int(v, 16) for v in fields[0].split("-"))
        if start <= address < stop and len(fields) == 6:
            found.add(fields[5].strip())
    return found


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux /proc to see mappings")
def test_cached_split_is_memory_mapped_not_read(root):
    load_split(root, TINY, "test", img_size=16)  # builds the cache
    [file] = cache_files(root)
    cached = load_split(root, TINY, "test", img_size=16)
    assert str(file.resolve()) in _mapped_files(cached.images)
    before = file.read_bytes()
    cached.images[0].zero_()  # copy-on-write: writable, and the file never changes
    assert file.read_bytes() == before
    batch, _ = cached.batch(torch.tensor([1, 2]))
    assert batch.shape == (2, 3, 16, 16)


def test_cache_is_plain_npy_that_loads_without_pickle(root):
    data = load_split(root, TINY, "test", img_size=16)
    [file] = cache_files(root)
    array = np.load(file, allow_pickle=False)
    assert array.dtype == np.uint8 and array.shape == (TEST_SIZE, 3, 16, 16)
    assert np.array_equal(array, data.images.numpy())


def test_other_size_or_cache_dir_is_a_miss(root, decodes, tmp_path_factory):
    load_split(root, TINY, "test", img_size=16)
    load_split(root, TINY, "test", img_size=8)
    assert len(decodes) == 2 * TEST_SIZE
    assert len(cache_files(root)) == 2
    elsewhere = tmp_path_factory.mktemp("cache")
    load_split(root, TINY, "test", img_size=8, cache_dir=elsewhere)
    assert len(decodes) == 3 * TEST_SIZE
    assert len(list((elsewhere / TINY.name).glob("test-8px-*.npy"))) == 1


def test_changed_list_file_invalidates_the_cache(root, decodes):
    first = load_split(root, TINY, "test", img_size=16)
    [old_file] = cache_files(root)
    list_file = root / TINY.name / "test.txt"
    lines = list_file.read_text().splitlines(keepends=True)
    path, label = lines[0].split()
    lines[0] = f"{path} {(int(label) + 1) % 3}\n"
    list_file.write_text("".join(lines[::-1]))  # new label and new order
    second = load_split(root, TINY, "test", img_size=16)
    assert len(decodes) == 2 * TEST_SIZE
    assert torch.equal(second.images, first.images.flip(0))
    assert second.labels[-1] == (first.labels[0] + 1) % 3
    [new_file] = cache_files(root)
    assert new_file != old_file  # the stale cache was removed


def corrupt_and_reload(root, decodes, damage):
    reference = load_split(root, TINY, "test", img_size=16)
    [file] = cache_files(root)
    damage(file)
    with pytest.warns(CacheWarning, match="ignoring invalid cache file"):
        rebuilt = load_split(root, TINY, "test", img_size=16)
    assert len(decodes) == 2 * TEST_SIZE  # decoded again, not loaded
    assert torch.equal(rebuilt.images, reference.images)
    assert np.array_equal(np.load(file, allow_pickle=False), reference.images.numpy())  # and rewritten whole


def test_truncated_cache_is_ignored_and_rebuilt(root, decodes):
    corrupt_and_reload(root, decodes, lambda f: os.truncate(f, f.stat().st_size - 100))


def test_cache_with_garbage_header_is_ignored_and_rebuilt(root, decodes):
    corrupt_and_reload(root, decodes, lambda f: f.write_bytes(b"\x93NUMPY garbage" + b"\0" * 5000))


def test_cache_with_the_wrong_shape_is_ignored_and_rebuilt(root, decodes):
    corrupt_and_reload(root, decodes, lambda f: np.save(f, np.zeros((TEST_SIZE, 3, 16, 15), np.uint8)))


def test_cache_with_extra_bytes_is_ignored_and_rebuilt(root, decodes):
    corrupt_and_reload(root, decodes, lambda f: f.open("ab").write(b"\0" * 16))


def test_crash_while_writing_leaves_no_cache(root, decodes, monkeypatch):
    def crash(f, array, allow_pickle):
        f.write(b"\x93NUMPY partial")
        raise KeyboardInterrupt  # as if killed mid-write

    monkeypatch.setattr(np.lib.format, "write_array", crash)
    with pytest.raises(KeyboardInterrupt):
        load_split(root, TINY, "test", img_size=16)
    monkeypatch.undo()
    folder = root / ".cache" / TINY.name
    assert cache_files(root) == [] and not list(folder.glob("*tmp*"))
    # a killed process (no cleanup) leaves only a temp file, which nothing reads
    (folder / ".test-16px-v1-0000.npy.tmp-abc").write_bytes(b"\x93NUMPY partial")
    data = load_split(root, TINY, "test", img_size=16)
    assert len(decodes) == TEST_SIZE and len(data) == TEST_SIZE and len(cache_files(root)) == 1


def test_unwritable_cache_dir_warns_and_still_loads(root, decodes):
    blocker = root / "a_file"
    blocker.write_text("not a folder")
    with pytest.warns(CacheWarning):
        data = load_split(root, TINY, "test", img_size=16, cache_dir=blocker)
    assert len(data) == TEST_SIZE and len(decodes) == TEST_SIZE


CONCURRENT = textwrap.dedent("""
    import sys, time
    from vtab_lily.data import images, load_split
    from vtab_lily.tasks import Task
    real, count = images.decode_image, [0]
    def slow(path, size):
        count[0] += 1
        time.sleep(0.02)
        return real(path, size)
    images.decode_image = slow
    while time.time() < float(sys.argv[2]):  # both processes start together
        time.sleep(0.005)
    data = load_split(sys.argv[1], Task("tiny", "Natural", 3, 24), "test", img_size=16, workers=1)
    print(count[0], int(data.images.sum()))
""")


def test_two_processes_building_the_same_cache(root):
    start_at = str(time.time() + 4.0)  # after both have imported torch
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", CONCURRENT, str(root), start_at], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    results = [out.split() for out, _ in outputs]
    decoded = sorted(int(r[0]) for r in results)
    assert decoded == [0, TEST_SIZE]  # one built the cache, the other waited and read it
    assert results[0][1] == results[1][1]
    [file] = cache_files(root)
    assert np.load(file, allow_pickle=False).shape == (TEST_SIZE, 3, 16, 16)
