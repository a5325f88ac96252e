"""``python -m vtab_lily.data prepare``: NOAH archives (zip, tar, folders) extracted safely, TFDS sources
written through the tfds module's contract (a fake module here), checked file by file, crash-safe."""

import os
import shutil
import sys
import tarfile
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vtab_lily.data import archive, data_fingerprint, read_manifest
from vtab_lily.data.prepare import main as prepare_main
from vtab_lily.data.prepare import prepare
from vtab_lily.data.testing import write_task
from vtab_lily.data.verify import main as verify_main
from vtab_lily.errors import UserError

PX = 16  # fingerprint pixels in most tests (the CLI always uses 224): keeps the tests quick


@pytest.fixture(scope="module")
def noah(tmp_path_factory) -> Path:
    """A NOAH tree with cifar (named by its alias cifar100) and dtd."""
    tree = tmp_path_factory.mktemp("noah") / "vtab-1k"
    write_task(tree, "cifar100", 100, test_size=7, size=(9, 7), seed=1)
    write_task(tree, "dtd", 47, test_size=5, size=(8, 8), seed=2)
    return tree


def make_zip(path: Path, tree: Path, prefix: str = "vtab-1k", extra: dict[str, bytes] | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for file in sorted(tree.rglob("*")):
            if file.is_file():
                rel = file.relative_to(tree).as_posix()
                zf.write(file, f"{prefix}/{rel}" if prefix else rel)
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return path


def run_prepare(sources, root, **kw):
    return prepare([str(s) for s in sources], root, progress=False, pixels_px=PX, **kw)


def listed(task_dir: Path, split: str) -> list[tuple[str, int]]:
    lines = (task_dir / f"{split}.txt").read_text().splitlines()
    return [(line.rsplit(" ", 1)[0], int(line.rsplit(" ", 1)[1])) for line in lines]


def test_zip_with_an_alias_is_prepared_file_by_file(noah, tmp_path, capsys):
    source = make_zip(tmp_path / "vtab-1k.zip", noah, extra={"__MACOSX/vtab-1k/._x": b"junk", "README.txt": b"hi"})
    root = tmp_path / "data"
    rows = run_prepare([source], root)
    assert [r.status for r in rows.values() if r.task in ("cifar", "dtd")] == ["prepared", "prepared"]
    assert not (root / "cifar100").exists() and not (root / ".staging").exists()
    for src_name, task in (("cifar100", "cifar"), ("dtd", "dtd")):
        src, dst = noah / src_name, root / task
        for split in ("train800", "val200", "train800val200", "test"):
            assert listed(dst, split) == listed(src, split)  # membership, order and labels
        files = sorted(p.relative_to(src) for p in src.rglob("*") if p.is_file())
        assert files == sorted(p.relative_to(dst) for p in dst.rglob("*") if p.is_file() and p.name != "manifest.json")
        assert all((dst / f).read_bytes() == (src / f).read_bytes() for f in files)  # pixels untouched
        manifest = read_manifest(root, task)
        assert manifest["encoding"] == "jpeg" and manifest["splits"]["test"]["n"] == len(listed(src, "test"))
        assert manifest["source"] == f"zip {source.name}" and rows[task].fingerprint == manifest["fingerprint"]
    assert data_fingerprint(root, "cifar100") == data_fingerprint(root, "cifar")  # aliases resolve
    assert "not in the sources" in rows["kitti"].status and not rows["kitti"].problems  # 2 of 19: a note
    assert verify_main(["--root", str(root), "--tasks", "cifar,dtd"]) == 0
    assert f"fingerprint: {data_fingerprint(root, 'dtd')}" in capsys.readouterr().out


@pytest.mark.parametrize("evil", ["vtab-1k/../../evil.txt", "/tmp/evil-abs.txt", "vtab-1k/cifar100/../../../evil.txt",
                                  "C:/evil.txt", "..\\..\\evil.txt"])
def test_an_entry_leaving_the_target_refuses_the_archive(noah, tmp_path, evil):
    source = make_zip(tmp_path / "evil.zip", noah, extra={evil: b"owned"})
    root = tmp_path / "deep" / "data"
    with pytest.raises(UserError, match=f"{source}: entry .* (leaves the target|absolute path)"):
        run_prepare([source], root)
    assert not list(tmp_path.rglob("evil*.txt")) and not Path("/tmp/evil-abs.txt").exists()
    assert not [p for p in root.rglob("*") if p.is_file()]  # zips are checked before anything is written


def _tar_with(path: Path, tree: Path, link: tarfile.TarInfo) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        tf.add(tree / "dtd" / "train800.txt", "dtd/train800.txt")
        tf.addfile(link)
        tf.add(tree / "dtd" / "val200.txt", "dtd/val200.txt")
    return path


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE])
def test_a_tar_with_a_link_entry_is_refused(noah, tmp_path, kind):
    link = tarfile.TarInfo("dtd/images/test/000000.jpg")
    link.type, link.linkname = kind, "/etc/passwd" if kind == tarfile.SYMTYPE else "dtd/train800.txt"
    source = _tar_with(tmp_path / "linked.tar.gz", noah, link)
    root = tmp_path / "data"
    with pytest.raises(UserError, match="is a (symlink|hardlink); links and special files are refused"):
        run_prepare([source], root)
    assert not root.exists()  # nothing was prepared: the root it made is gone, no link anywhere
    with pytest.raises(UserError, match="does not exist"):  # nothing accepted
        verify_main(["--root", str(root), "--tasks", "dtd", "--quick"])


def test_a_tar_one_task_per_archive_and_several_sources(noah, tmp_path):
    sources = []
    for name in ("cifar100", "dtd"):
        with tarfile.open(tmp_path / f"{name}.tar", "w") as tf:
            tf.add(noah / name, name)
        sources.append(tmp_path / f"{name}.tar")
    rows = run_prepare(sources, tmp_path / "data", tasks=["dtd", "cifar"])
    assert {t: r.status for t, r in rows.items()} == {"cifar": "prepared", "dtd": "prepared"}


def test_a_task_missing_from_the_archive_is_one_clear_line(noah, tmp_path, capsys):
    source = make_zip(tmp_path / "one.zip", noah / "dtd", prefix="dtd")
    code = prepare_main(["--from", str(source), "--root", str(tmp_path / "data"), "--tasks", "dtd,kitti"])
    out = capsys.readouterr().out
    assert code == 2
    assert f"kitti: problem: task kitti is in none of: {source}" in out
    with pytest.raises(UserError, match="no VTAB-1K task folders"):
        run_prepare([make_zip(tmp_path / "flat.zip", noah / "dtd", prefix="")], tmp_path / "data2")


def test_bad_list_lines_keep_the_task_out_and_name_the_line(noah, tmp_path, capsys):
    tree = tmp_path / "tree"
    shutil.copytree(noah / "dtd", tree / "dtd")
    lines = (tree / "dtd" / "val200.txt").read_text().splitlines(keepends=True)
    lines[4] = "images/val200/000004.jpg four\n"
    (tree / "dtd" / "val200.txt").write_text("".join(lines))
    code = prepare_main(["--from", str(tree), "--root", str(tmp_path / "data")])
    out = capsys.readouterr().out
    assert code == 2 and "val200.txt:5: label 'four' is not an integer" in out
    assert not (tmp_path / "data" / "dtd").exists()


def test_killed_mid_prepare_leaves_nothing_verify_accepts_and_a_rerun_completes(noah, tmp_path, monkeypatch):
    source = make_zip(tmp_path / "vtab-1k.zip", noah)
    root = tmp_path / "data"
    real, count = archive.write_entry, [0]

    def dying(*args):
        count[0] += 1
        if count[0] == 700:  # in the first task, as if killed
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(archive, "write_entry", dying)
    with pytest.raises(KeyboardInterrupt):
        run_prepare([source], root)
    monkeypatch.undo()
    assert (root / ".staging" / "cifar").is_dir() and not (root / "cifar").exists()
    assert verify_main(["--root", str(root), "--tasks", "cifar", "--quick"]) == 2
    rows = run_prepare([source], root)
    assert rows["cifar"].status == "prepared" and rows["dtd"].status == "prepared"
    assert verify_main(["--root", str(root), "--tasks", "cifar,dtd"]) == 0
    # a finished task is not redone
    monkeypatch.setattr(archive, "write_entry", lambda *a: pytest.fail("rewrote a finished task"))
    again = run_prepare([source], root)
    assert again["cifar"].status == "already prepared" and again["cifar"].fingerprint == rows["cifar"].fingerprint


def test_a_failed_prepare_removes_the_empty_root_it_created_and_nothing_else(noah, tmp_path, capsys):
    """A failed prepare used to leave the --root it created (and its parents) behind, empty."""
    empty_source = tmp_path / "empty"
    empty_source.mkdir()
    fresh = tmp_path / "new" / "deeper" / "data"
    with pytest.raises(UserError, match="no VTAB-1K task folders"):
        run_prepare([empty_source], fresh)
    assert not (tmp_path / "new").exists() and tmp_path.is_dir()  # root and the parents it made, not more
    # a root (or a parent) that was there before is kept, with whatever the user put in it
    (tmp_path / "mine" / "empty_root").mkdir(parents=True)
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    for root in (tmp_path / "mine" / "empty_root", tmp_path / "mine" / "made" / "data"):
        with pytest.raises(UserError, match="no VTAB-1K task folders"):
            run_prepare([empty_source], root)
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["empty_root", "notes.txt"]
    # an archive refused half-way: the half-staged task goes too
    evil = make_zip(tmp_path / "evil.zip", noah / "dtd", prefix="dtd", extra={"../evil.txt": b"x"})
    with pytest.raises(UserError, match="leaves the target folder"):
        run_prepare([evil], fresh)
    assert not (tmp_path / "new").exists()
    # a wanted task in none of the sources: exit 2 through the CLI, nothing left
    assert prepare_main(["--from", str(noah), "--root", str(fresh), "--tasks", "kitti"]) == 2
    assert "task kitti is in none of" in capsys.readouterr().out and not (tmp_path / "new").exists()
    # a task with bad data keeps its staged copy (the problems name its files): the root stays
    tree = tmp_path / "tree"
    shutil.copytree(noah / "dtd", tree / "dtd")
    (tree / "dtd" / "val200.txt").write_text("images/val200/000004.jpg four\n")
    rows = run_prepare([tree], fresh)
    assert rows["dtd"].problems and (fresh / ".staging" / "dtd" / "val200.txt").is_file()


def test_the_folder_lock_follows_a_folder_removed_while_it_waited(tmp_path):
    """A prepare removes the empty root it made while holding the root's lock: a process that was
    waiting for that lock must end up holding the lock of the folder now at the path, not of the
    removed one (else a third process could lock the new folder beside it)."""
    import fcntl
    import threading
    import time

    from vtab_lily.data.parallel import folder_lock

    root = tmp_path / "data"
    holding, inside, leave = threading.Event(), threading.Event(), threading.Event()

    def waiter():
        holding.wait()
        with folder_lock(root, poll_s=0.01):
            inside.set()
            leave.wait(10)

    thread = threading.Thread(target=waiter)
    thread.start()
    try:
        with folder_lock(root, poll_s=0.01):
            holding.set()
            time.sleep(0.2)  # the waiter polls this folder's lock now
            root.rmdir()
            root.mkdir()  # another folder at the same path, as a new prepare would make it
        assert inside.wait(10)
        fd = os.open(root, os.O_RDONLY)
        try:
            with pytest.raises(BlockingIOError):  # the waiter holds the new folder's lock
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
    finally:
        leave.set()
        thread.join()


def test_an_existing_folder_is_never_overwritten_with_different_files(noah, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(noah / "dtd", root / "dtd")
    source = make_zip(tmp_path / "dtd.zip", noah / "dtd", prefix="dtd")
    rows = run_prepare([source], root)
    assert rows["dtd"].status.startswith("existing folder matches") and read_manifest(root, "dtd")
    (root / "dtd" / "manifest.json").unlink()
    (root / "dtd" / "images" / "test" / "000001.jpg").write_bytes(b"mine")
    rows = run_prepare([source], root)
    assert rows["dtd"].problems and "000001.jpg differs" in rows["dtd"].problems[0]
    assert (root / "dtd" / "images" / "test" / "000001.jpg").read_bytes() == b"mine"


@pytest.mark.filterwarnings("ignore:Duplicate name")  # zipfile warns while the test writes the zip
def test_duplicate_entries_same_content_fine_different_refused(noah, tmp_path):
    same = noah / "dtd" / "test.txt"
    ok = make_zip(tmp_path / "same.zip", noah / "dtd", prefix="dtd", extra={"dtd/test.txt": same.read_bytes()})
    assert run_prepare([ok], tmp_path / "a")["dtd"].status == "prepared"
    bad = make_zip(tmp_path / "diff.zip", noah / "dtd", prefix="dtd", extra={"dtd/test.txt": b"x 0\n"})
    with pytest.raises(UserError, match="appears twice with different content"):
        run_prepare([bad], tmp_path / "b")


def test_the_same_task_from_two_sources_is_refused(noah, tmp_path):
    a = make_zip(tmp_path / "a.zip", noah / "cifar100", prefix="cifar100")
    b = make_zip(tmp_path / "b.zip", noah / "cifar100", prefix="vtab/cifar")
    with pytest.raises(UserError, match="task cifar is in two places"):
        run_prepare([a, b], tmp_path / "data")


def test_a_task_in_two_sources_is_refused_before_anything_is_installed(noah, tmp_path):
    a = make_zip(tmp_path / "a.zip", noah)  # cifar and dtd
    b = tmp_path / "b.tar.gz"
    with tarfile.open(b, "w:gz") as tf:
        tf.add(noah / "dtd", "dtd")
    root = tmp_path / "data"
    with pytest.raises(UserError, match=r"task dtd is in two places: .*a.zip \(vtab-1k/dtd/\) and .*b.tar.gz "
                                        r"\(dtd/\); .*nothing was written"):
        run_prepare([a, b], root)
    assert not root.exists()  # not even cifar, which only a.zip holds
    rows = run_prepare([b], root)  # the rerun with one of them takes its copy, not an earlier one
    assert rows["dtd"].status == "prepared" and rows["dtd"].source.endswith("b.tar.gz")
    rows = run_prepare([a, b], root, tasks=["cifar"])  # not wanted twice: no conflict
    assert rows["cifar"].status == "prepared"


# --- TFDS sources, through the tfds module's contract (the real module is another helper's) -----
class FakeSource:
    def __init__(self, n: int, seed: int, classes: int):
        self.n, self.seed, self.classes = n, seed, classes

    def __len__(self):
        return self.n

    def __iter__(self):
        rng = np.random.default_rng(self.seed)
        for _ in range(self.n):
            yield rng.integers(0, 256, (10, 12, 3), dtype=np.uint8), int(rng.integers(self.classes))


def fake_tfds(monkeypatch, data_dir: Path, tasks=("eurosat",)):
    (data_dir / "eurosat" / "rgb" / "2.0.0").mkdir(parents=True, exist_ok=True)
    (data_dir / "eurosat" / "rgb" / "2.0.0" / "dataset_info.json").write_text("{}")
    module = types.ModuleType("vtab_lily.data.tfds")
    module.find_builders = lambda d: {t: Path(d) / "eurosat" for t in tasks}
    module.vtab_task_splits = lambda d, task: {"train800": FakeSource(800, 1, 10), "val200": FakeSource(200, 2, 10),
                                               "test": FakeSource(9, 3, 10)}
    monkeypatch.setitem(sys.modules, "vtab_lily.data.tfds", module)


def test_tfds_source_written_as_lossless_png_with_noah_lists(tmp_path, monkeypatch):
    fake_tfds(monkeypatch, tmp_path / "tfds")
    root = tmp_path / "png"
    rows = run_prepare([tmp_path / "tfds"], root)
    assert rows["eurosat"].status == "prepared" and rows["eurosat"].counts == {
        "train800": 800, "val200": 200, "train800val200": 1000, "test": 9}
    task_dir = root / "eurosat"
    for split, source in (("train800", FakeSource(800, 1, 10)), ("test", FakeSource(9, 3, 10))):
        entries = listed(task_dir, split)
        assert [p for p, _ in entries] == [f"images/{split}/{i:06d}.png" for i in range(len(source))]
        for (path, label), (image, expected) in zip(entries, source):
            assert label == expected
            assert np.array_equal(np.asarray(Image.open(task_dir / path)), image)  # lossless
    assert listed(task_dir, "train800val200") == listed(task_dir, "train800") + listed(task_dir, "val200")
    assert read_manifest(root, "eurosat")["encoding"] == "png"
    again = run_prepare([tmp_path / "tfds"], tmp_path / "png2")
    jpeg = run_prepare([tmp_path / "tfds"], tmp_path / "jpeg", encoding="jpeg")
    assert again["eurosat"].fingerprint == rows["eurosat"].fingerprint  # stable across prepares
    assert jpeg["eurosat"].fingerprint != rows["eurosat"].fingerprint  # JPEG changes the pixels
    assert read_manifest(tmp_path / "jpeg", "eurosat")["encoding"] == "jpeg"
    assert (tmp_path / "jpeg" / "eurosat" / "images" / "test" / "000000.jpg").read_bytes()[:3] == b"\xff\xd8\xff"


def test_tfds_items_breaking_the_contract_are_named(tmp_path, monkeypatch):
    fake_tfds(monkeypatch, tmp_path / "tfds")
    module = sys.modules["vtab_lily.data.tfds"]
    module.vtab_task_splits = lambda d, task: {"train800": [(np.zeros((4, 4), np.uint8), 0)] * 800,
                                               "val200": [], "test": []}
    rows = run_prepare([tmp_path / "tfds"], tmp_path / "data")
    assert rows["eurosat"].status == "NOT prepared (source error)"
    assert rows["eurosat"].problems[0].startswith("TFDS eurosat/train800 item 0: expected a uint8 HxWx3 image")
    assert not (tmp_path / "data" / "eurosat").exists()


def test_verify_write_manifest_matches_prepare_and_flags_later_edits(noah, tmp_path, capsys):
    root = tmp_path / "data"
    shutil.copytree(noah / "dtd", root / "dtd")
    assert verify_main(["--root", str(root), "--tasks", "dtd"]) == 0
    assert "fingerprint: none" in capsys.readouterr().out
    assert verify_main(["--root", str(root), "--tasks", "dtd", "--write-manifest"]) == 0
    by_hand = read_manifest(root, "dtd")
    assert by_hand["source"] == "laid out by hand" and by_hand["pixels_px"] == 224
    prepared = prepare([str(make_zip(tmp_path / "dtd.zip", noah / "dtd", prefix="dtd"))], tmp_path / "p",
                       progress=False)
    assert prepared["dtd"].fingerprint == by_hand["fingerprint"]  # same data, same fingerprint
    respaced = (root / "dtd" / "test.txt").read_text().replace(" ", "  ").replace("\n", "\r\n")
    (root / "dtd" / "test.txt").write_text(respaced)
    assert verify_main(["--root", str(root), "--tasks", "dtd"]) == 0  # spacing and line ends are not the data
    lines = (noah / "dtd" / "test.txt").read_text().splitlines(keepends=True)
    (root / "dtd" / "test.txt").write_text("".join(lines[::-1]))
    assert verify_main(["--root", str(root), "--tasks", "dtd"]) == 2
    assert "manifest.json: does not match" in capsys.readouterr().out


@pytest.mark.parametrize("reorder", [False, True])
def test_prepare_decodes_each_image_once_and_fingerprints_as_before(noah, tmp_path, monkeypatch, reorder):
    """verify's decoding pass also hashes the pixels: prepare used to decode each training image
    three times (verify, its split, train800val200) and each test image twice. A train800val200
    that is not train800 + val200 in order is decoded on its own, with the same fingerprint."""
    from vtab_lily.data import images
    from vtab_lily.data.lists import parse_list
    from vtab_lily.data.manifest import compute_manifest

    tree = tmp_path / "tree"
    shutil.copytree(noah / "dtd", tree / "dtd")
    if reorder:
        lines = (tree / "dtd" / "train800val200.txt").read_text().splitlines(keepends=True)
        (tree / "dtd" / "train800val200.txt").write_text("".join(lines[::-1]))
    real, opened = images._open_rgb, []
    monkeypatch.setattr(images, "_open_rgb", lambda path: opened.append(path) or real(path))
    rows = run_prepare([tree], tmp_path / "data")
    monkeypatch.undo()
    assert rows["dtd"].status == "prepared"
    unique = 1000 + 5  # train800 + val200 images, and the test split's
    assert len(opened) == (unique + 1000 if reorder else unique) and len(set(opened)) == unique
    # the fingerprint is the manifest's own definition, computed from scratch
    folder = tmp_path / "data" / "dtd"
    split_lists = {s: parse_list(folder / f"{s}.txt", folder, 47)[0] for s in ("train800", "val200",
                                                                               "train800val200", "test")}
    scratch = compute_manifest("dtd", split_lists, "x", size=PX, progress=False)
    assert read_manifest(tmp_path / "data", "dtd")["splits"] == scratch["splits"]
    assert rows["dtd"].fingerprint == scratch["fingerprint"]


def test_cli_refuses_an_unsafe_archive_with_one_line_and_exit_2(noah, tmp_path):
    import os
    import subprocess

    source = make_zip(tmp_path / "evil.zip", noah / "dtd", prefix="dtd", extra={"../evil.txt": b"x"})
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    out = subprocess.run([sys.executable, "-m", "vtab_lily.data", "prepare", "--from", str(source), "--root",
                          str(tmp_path / "data")], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines() == [
        f"error: {source}: entry '../evil.txt' leaves the target folder ('..'); refusing the archive "
        "(nothing written outside it)"]
    assert not (tmp_path / "evil.txt").exists()


@pytest.mark.parametrize("empty", ["", ",", " "])
def test_an_empty_task_list_is_refused_never_every_task(noah, tmp_path, empty):
    root = tmp_path / "data"
    with pytest.raises(UserError, match=f"--tasks {empty!r} names no task"):
        prepare_main(["--from", str(noah), "--root", str(root), "--tasks", empty])
    with pytest.raises(UserError, match="--tasks names no task"):
        run_prepare([noah], root, tasks=[])
    assert not root.exists()  # refused before anything was created


def test_an_undecodable_test_image_keeps_the_task_out_unless_dropped(noah, tmp_path, capsys):
    tree = tmp_path / "tree"
    shutil.copytree(noah / "dtd", tree / "sun397")
    (tree / "sun397" / "images" / "test" / "000003.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    assert prepare_main(["--from", str(tree), "--root", str(tmp_path / "a")]) == 2
    assert "test.txt:4: images/test/000003.jpg: cannot decode image" in capsys.readouterr().out
    assert not (tmp_path / "a" / "sun397").exists()
    assert prepare_main(["--from", str(tree), "--root", str(tmp_path / "b"), "--drop-undecodable"]) == 0
    assert "dropped 1 undecodable test image(s): images/test/000003.jpg" in capsys.readouterr().out
    kept = listed(tmp_path / "b" / "sun397", "test")
    assert [p for p, _ in kept] == [p for p, _ in listed(noah / "dtd", "test") if not p.endswith("000003.jpg")]
    assert read_manifest(tmp_path / "b", "sun397")["dropped"] == ["images/test/000003.jpg"]
    (tree / "sun397" / "images" / "train800" / "000001.jpg").write_bytes(b"junk")  # training images: never dropped
    assert prepare_main(["--from", str(tree), "--root", str(tmp_path / "c"), "--drop-undecodable"]) == 2


def test_hostile_odds_and_ends(noah, tmp_path):
    # one task folder given itself, twice: prepared once
    rows = run_prepare([noah / "dtd", noah / "dtd"], tmp_path / "data")
    assert rows["dtd"].status == "prepared"
    # a damaged manifest: the task is checked against the source again and the manifest rewritten
    (tmp_path / "data" / "dtd" / "manifest.json").write_text("{not json")
    with pytest.raises(UserError, match="manifest.json: not valid JSON"):
        read_manifest(tmp_path / "data", "dtd")
    again = run_prepare([noah / "dtd"], tmp_path / "data")
    assert again["dtd"].status.startswith("existing folder matches") and read_manifest(tmp_path / "data", "dtd")
    with pytest.raises(UserError, match="is not a folder name"):
        read_manifest(tmp_path / "data", "../dtd")
    # a root that is a file, a source that is the root, a source that is nothing
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="exists and is not a folder"):
        run_prepare([noah / "dtd"], tmp_path / "file")
    with pytest.raises(UserError, match="is the target root"):
        run_prepare([tmp_path / "data"], tmp_path / "data" / "vtab")
    with pytest.raises(UserError, match="not a zip or tar archive"):
        run_prepare([tmp_path / "file"], tmp_path / "other")
    with pytest.raises(UserError, match="does not exist"):
        run_prepare([tmp_path / "nope.zip"], tmp_path / "other")
    with pytest.raises(UserError, match="unknown task 'cifr'.*did you mean 'cifar'"):
        run_prepare([noah / "dtd"], tmp_path / "other", tasks=["cifr"])


def test_damaged_archives_are_one_line_naming_the_file(noah, tmp_path):
    with tarfile.open(tmp_path / "dtd.tar.gz", "w:gz") as tf:
        tf.add(noah / "dtd", "dtd")
    data = (tmp_path / "dtd.tar.gz").read_bytes()
    # cut at many places: a cut inside a member header ends tarfile's stream silently, so this used to
    # pass or fail with the archive's bytes (member mtimes)
    for cut in range(len(data) // 4, len(data) - 8, max(1, len(data) // 40)):
        (tmp_path / "cut.tar.gz").write_bytes(data[:cut])
        with pytest.raises(UserError, match=f"{tmp_path / 'cut.tar.gz'}: .*(damaged|truncated|cannot be read)"):
            run_prepare([tmp_path / "cut.tar.gz"], tmp_path / "a")
        assert not (tmp_path / "a" / "dtd").exists()
    source = make_zip(tmp_path / "dtd.zip", noah / "dtd", prefix="dtd")
    raw = bytearray(source.read_bytes())
    with zipfile.ZipFile(source) as zf:
        info = zf.getinfo("dtd/train800.txt")
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    raw[start + 5] ^= 0xFF  # one flipped byte inside the entry's data: a CRC mismatch
    (tmp_path / "flipped.zip").write_bytes(bytes(raw))
    with pytest.raises(UserError, match="entry 'dtd/train800.txt' cannot be read"):
        run_prepare([tmp_path / "flipped.zip"], tmp_path / "b")
    assert not (tmp_path / "b" / "dtd").exists()


def test_a_broken_tfds_builder_keeps_only_its_task_out_and_version_notes_are_shown(tmp_path, monkeypatch):
    fake_tfds(monkeypatch, tmp_path / "tfds", tasks=("eurosat", "kitti", "dtd"))
    module = sys.modules["vtab_lily.data.tfds"]
    good = module.vtab_task_splits

    def splits(d, task):
        if task == "dtd":
            raise UserError(f"{d}/dtd/3.0.1/dtd-train.tfrecord-00001-of-00002: bad CRC at byte 123")
        if task == "kitti":
            import warnings
            warnings.warn("kitti: using TFDS version 3.3.0, the common numbers use 3.2.0")
        return {k: FakeSource(len(v), v.seed, 4) for k, v in good(d, task).items()}

    module.vtab_task_splits = splits
    rows = run_prepare([tmp_path / "tfds"], tmp_path / "data")
    assert rows["eurosat"].status == rows["kitti"].status == "prepared"
    assert rows["dtd"].status == "NOT prepared (source error)" and "bad CRC" in rows["dtd"].problems[0]
    assert any("version 3.3.0" in note for note in rows["kitti"].notes)
    assert not (tmp_path / "data" / "dtd").exists()


def test_a_write_failure_mid_way_is_one_line_exit_1_and_a_rerun_continues(noah, tmp_path, monkeypatch):
    import errno
    import os

    from vtab_lily.data import prepare as prepare_module

    source = make_zip(tmp_path / "vtab-1k.zip", noah)
    root = tmp_path / "data"
    real_rename, renames = os.rename, []

    def rename_fails_second_time(src, dst):
        renames.append(dst)
        if len(renames) == 2:
            raise OSError(errno.EROFS, "Read-only file system", str(dst))
        return real_rename(src, dst)

    monkeypatch.setattr(prepare_module.os, "rename", rename_fails_second_time)
    with pytest.raises(prepare_module.WriteFailed, match=f"{root / 'dtd'}: Read-only file system") as failed:
        run_prepare([source], root)
    assert failed.value.exit_code == 1
    monkeypatch.undo()
    assert read_manifest(root, "cifar") and not (root / "dtd").exists()
    rows = run_prepare([source], root)
    assert rows["cifar"].status == "already prepared" and rows["dtd"].status == "prepared"


# --- round 3: defects found by an outside pass ---------------------------------------------------
def test_a_file_and_a_folder_of_the_same_name_is_a_clash_exit_2_not_a_disk_error(noah, tmp_path, capsys):
    for first, second in (("dtd/images/a", "dtd/images/a/b.jpg"), ("dtd/images/a/b.jpg", "dtd/images/a")):
        source = tmp_path / f"clash{len(first)}.zip"
        with zipfile.ZipFile(source, "w") as zf:
            zf.writestr(first, b"x")
            zf.writestr(second, b"y")
        with pytest.raises(UserError, match="clashes with another entry .a file and a folder of the same name") as err:
            prepare_main(["--from", str(source), "--root", str(tmp_path / "data")])
        assert err.value.exit_code == 2 and "rerun" not in str(err.value)  # not WriteFailed (1, "rerun")
        assert not (tmp_path / "data").exists()


def test_a_cut_zip_and_a_tar_cut_at_a_block_boundary_are_damaged_archives(noah, tmp_path):
    source = make_zip(tmp_path / "dtd.zip", noah / "dtd", prefix="dtd")
    (tmp_path / "cut.zip").write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    with pytest.raises(UserError, match=r"cut.zip: the archive is damaged or truncated"):
        run_prepare([tmp_path / "cut.zip"], tmp_path / "a")
    with tarfile.open(tmp_path / "dtd.tar", "w") as tf:
        tf.add(noah / "dtd", "dtd")
    with tarfile.open(tmp_path / "dtd.tar") as tf:
        member = tf.getmember("dtd/train800.txt")  # a cut just before a member's header
    (tmp_path / "cut.tar").write_bytes((tmp_path / "dtd.tar").read_bytes()[: member.offset])
    with pytest.raises(UserError, match=r"cut.tar: the archive is damaged or truncated .*end-of-archive marker"):
        run_prepare([tmp_path / "cut.tar"], tmp_path / "a")
    assert not (tmp_path / "a").exists()


def test_a_tfds_tree_without_dataset_info_is_named_as_such(tmp_path):
    from tfds_helpers import id_pixels, png, write_builder

    folder = write_builder(tmp_path / "tfds", "dtd", "3.0.1", {"train": [3]},
                           lambda s, i: {"image": png(id_pixels(0, i)), "label": np.array([0])})
    (folder / "dataset_info.json").unlink()
    with pytest.raises(UserError, match=r"holds TFDS shards \(.*dtd-train.tfrecord-00000-of-00001\) but no "
                                        r"dataset_info.json"):
        run_prepare([tmp_path / "tfds"], tmp_path / "data")


def _dtd_tfds(data_dir: Path, bad_test_record: int | None, bad_train_record: int | None = None) -> None:
    from tfds_helpers import id_pixels, png, write_builder

    def make(split, i):
        bad = (split == "test" and i == bad_test_record) or (split == "train" and i == bad_train_record)
        return {"image": b"\x89PNG\r\n\x1a\n cut short" if bad else png(id_pixels(3, i)), "label": np.array([i % 47])}

    write_builder(data_dir, "dtd", "3.0.1", {"train": [800], "validation": [200], "test": [4, 3]}, make)


def test_drop_undecodable_works_for_tfds_test_records_and_a_failed_tfds_task_leaves_no_staging(tmp_path, capsys):
    _dtd_tfds(tmp_path / "tfds", bad_test_record=5)
    code = prepare_main(["--from", str(tmp_path / "tfds"), "--root", str(tmp_path / "a")])
    out = capsys.readouterr().out
    assert code == 2 and "dtd-test.tfrecord-00001-of-00002: record 1: image cannot be decoded" in out
    assert not (tmp_path / "a" / "dtd").exists() and not (tmp_path / "a" / ".staging").exists()

    rows = run_prepare([tmp_path / "tfds"], tmp_path / "b", drop_undecodable=True)
    assert rows["dtd"].status == "prepared" and rows["dtd"].counts["test"] == 6
    dropped = read_manifest(tmp_path / "b", "dtd")["dropped"]
    assert len(dropped) == 1 and dropped[0].startswith("dtd-test.tfrecord-00001-of-00002: record 1:")
    assert any("dropped 1 undecodable test record(s)" in note for note in rows["dtd"].notes)

    _dtd_tfds(tmp_path / "tfds2", bad_test_record=None, bad_train_record=7)  # training records: never dropped
    rows = run_prepare([tmp_path / "tfds2"], tmp_path / "c", drop_undecodable=True)
    assert rows["dtd"].status == "NOT prepared (source error)" and "record 7" in rows["dtd"].problems[0]
    assert not (tmp_path / "c" / ".staging").exists()
