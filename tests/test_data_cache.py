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
from PIL import Image

from vtab_lily.data import images as images_module
from vtab_lily.data import load_split
from vtab_lily.data.cache import CacheWarning
from vtab_lily.data.testing import write_task
from vtab_lily.errors import UserError
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
    assert file.name.startswith("test-16px-v2-")
    second = load_split(root, TINY, "test", img_size=16)
    assert len(decodes) == TEST_SIZE  # nothing decoded again
    assert torch.equal(first.images, second.images) and torch.equal(first.labels, second.labels)
    third = load_split(root, TINY, "test", img_size=16, normalize=False)
    assert torch.equal(third.images, first.images) and third.normalize is False
    assert len(decodes) == TEST_SIZE


def test_an_image_replaced_under_the_same_name_is_noticed(root, decodes):
    first = load_split(root, TINY, "test", img_size=16).images.clone()
    image = root / TINY.name / "images" / "test" / "000003.jpg"
    stamp = image.stat()
    Image.new("RGB", (30, 20), (255, 0, 0)).save(image, "JPEG")
    os.utime(image, ns=(stamp.st_atime_ns, stamp.st_mtime_ns + 1_000_000))  # same second on coarse clocks
    second = load_split(root, TINY, "test", img_size=16)
    assert len(decodes) == 2 * TEST_SIZE  # the key changed: decoded again
    assert not torch.equal(second.images[3], first[3])
    assert torch.equal(second.images[4], first[4])
    assert len(cache_files(root)) == 1  # the stale cache was dropped
    v1 = cache_files(root)[0].with_name("test-16px-v1-0123456789abcdef.npy")  # left by an older version
    v1.write_bytes(b"old")
    os.utime(image, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))  # same size class, other mtime: a miss again
    load_split(root, TINY, "test", img_size=16)
    assert len(decodes) == 3 * TEST_SIZE and not v1.exists()


def test_images_needed_for_the_key_are_named_when_missing(root):
    load_split(root, TINY, "test", img_size=16)
    shutil.rmtree(root / TINY.name / "images")
    with pytest.raises(UserError, match="test.txt:1: images/test/000000.jpg: image file does not exist"):
        load_split(root, TINY, "test", img_size=16)


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
    reference.images = reference.images.clone()  # off the mapping: the file is damaged below
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
    real = images_module.decode_image

    def crash(path, size):
        if path.name == "000010.jpg":
            raise KeyboardInterrupt  # as if killed mid-write
        return real(path, size)

    monkeypatch.setattr(images_module, "decode_image", crash)
    with pytest.raises(KeyboardInterrupt):
        load_split(root, TINY, "test", img_size=16)
    monkeypatch.undo()
    folder = root / ".cache" / TINY.name
    assert cache_files(root) == [] and not list(folder.glob("*tmp*"))
    # a killed process (no cleanup) leaves only a temp file, which nothing reads
    (folder / ".test-16px-v2-0000.npy.tmp-abc").write_bytes(b"\x93NUMPY partial")
    data = load_split(root, TINY, "test", img_size=16)
    assert len(data) == TEST_SIZE and len(cache_files(root)) == 1


def test_unwritable_cache_dir_is_an_error_naming_it(root, decodes):
    blocker = root / "a_file"
    blocker.write_text("not a folder")
    needed = f"{TEST_SIZE * 3 * 16 * 16 + 128:,} bytes"
    with pytest.raises(UserError, match=f"cannot create the decoded-image cache folder {blocker}.*{needed}"):
        load_split(root, TINY, "test", img_size=16, cache_dir=blocker)
    assert decodes == []  # refused before decoding anything


def test_full_disk_is_an_error_with_the_bytes_needed(root, decodes, monkeypatch):
    import errno

    def no_space(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", no_space)
    needed = TEST_SIZE * 3 * 16 * 16 + 128  # pixels + the .npy header
    with pytest.raises(UserError, match=f"test-16px-v2-.*No space left on device.*needs {needed:,} bytes"):
        load_split(root, TINY, "test", img_size=16)
    assert decodes == [] and cache_files(root) == []
    assert not list((root / ".cache" / TINY.name).glob("*tmp*"))


def test_cache_dir_from_the_environment(root, tmp_path_factory, monkeypatch):
    elsewhere = tmp_path_factory.mktemp("envcache")
    monkeypatch.setenv("VTAB_LILY_CACHE_DIR", str(elsewhere))
    load_split(root, TINY, "test", img_size=16)
    [file] = elsewhere.glob(f"*/{TINY.name}/test-16px-*.npy")
    assert file.parent.parent.name.startswith(root.name + "-") and cache_files(root) == []
    other = root.parent / "copy"
    shutil.copytree(root, other, ignore=shutil.ignore_patterns(".cache"))
    load_split(other, TINY, "test", img_size=16)  # same task name, another root: its own folder
    assert file.exists() and len(list(elsewhere.glob(f"*/{TINY.name}/test-16px-*.npy"))) == 2


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


PEAK = textwrap.dedent("""
    import resource, sys
    from pathlib import Path
    import numpy as np
    from vtab_lily.data import images
    from vtab_lily.data.cache import build_cache
    from vtab_lily.data.lists import parse_list

    def fake_decode(path, size):  # the pipeline's memory is under test, not PIL's speed: no files needed
        return np.full((3, size, size), int(path.stem[-5:]) % 251, dtype=np.uint8)

    images.decode_image = fake_decode
    root, size = Path(sys.argv[1]), int(sys.argv[2])
    task_dir = root / "big"
    warm, _ = parse_list(task_dir / "warm.txt", task_dir, 2)
    build_cache(root / "warm.npy", warm, size, workers=2, progress=False)  # threads, imports
    split, problems = parse_list(task_dir / "test.txt", task_dir, 2)
    assert not problems, problems
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    build_cache(root / "test.npy", split, size, workers=2, progress=False)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert "torch" not in sys.modules  # building needs no torch
    print((after - before) * 1024)

    # prepare's TFDS writer over the same number of images (encoding stubbed: its loop is under test)
    from vtab_lily.data import write_tfds
    from vtab_lily.tasks import get_task
    class Source:
        def __len__(self):
            return len(split)
        def __iter__(self):
            return ((np.full((size, size, 3), i % 251, np.uint8), i % 10) for i in range(len(split)))
    write_tfds.save_image = lambda image, path, encoding: None
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    lines = write_tfds.write_split(root / "prep", get_task("eurosat"), "test", Source(), workers=2, progress=False)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert len(lines) == len(split) and lines[-1] == f"images/test/{len(split) - 1:06d}.png 9\\n"
    print((after - before) * 1024)
""")


def test_caching_a_20000_image_split_has_bounded_peak_memory(tmp_path):
    n, size = 20_000, 64
    full_bytes = n * 3 * size * size  # 246 MB: what holding the split in memory would cost
    task_dir = tmp_path / "big"
    task_dir.mkdir()
    for count, name in ((n, "test"), (50, "warm")):
        (task_dir / f"{name}.txt").write_text("".join(f"images/{name}{i:05d}.png {i % 2}\n" for i in range(count)))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", PEAK, str(tmp_path), str(size)], capture_output=True, text=True,
                         env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    caching, writing = (int(v) for v in out.stdout.split())
    assert caching < 96 << 20 < full_bytes // 2, f"peak RSS grew by {caching / 2**20:.0f} MiB while caching"
    assert writing < 96 << 20, f"peak RSS grew by {writing / 2**20:.0f} MiB while writing a prepared split"
    array = np.load(tmp_path / "test.npy", mmap_mode="r")
    assert array.shape == (n, 3, size, size)
    for i in (0, 12_345, n - 1):  # every image landed in its own slot, in list order
        assert (array[i] == i % 251).all()
