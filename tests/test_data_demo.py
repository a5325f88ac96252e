"""The demo suite: registered with all three groups, deterministic bytes, fast, crash-safe,
loadable and learnable by a tiny model."""

import hashlib
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from vtab_lily.data import demo, load_split
from vtab_lily.data.verify import main as verify_main
from vtab_lily.errors import UserError
from vtab_lily.tasks import GROUPS, get_task, suite


def tree_hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under root except caches and locks."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))
            if p.is_file() and ".cache" not in p.parts and not p.name.endswith(".lock") and p.name != "manifest.json"}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo") / "vtab-demo"
    start = time.perf_counter()
    demo.ensure_demo(root)
    return root, time.perf_counter() - start, tree_hashes(root)


def test_registered_suite_covers_all_groups():
    tasks = suite("demo")
    assert len(tasks) >= 4
    assert {t.group for t in tasks.values()} == set(GROUPS)
    assert get_task("count", "demo").num_classes == 5
    assert all(t.test_size == demo.TEST_SIZE for t in tasks.values())


def test_demo_suite_is_listed_by_the_tasks_cli():
    # under `python -m vtab_lily.tasks`, tasks.py runs as __main__: the suite must still resolve
    out = subprocess.run([sys.executable, "-m", "vtab_lily.tasks", "--suite", "demo"], capture_output=True,
                         text=True, cwd=Path(__file__).resolve().parents[1], timeout=60)
    assert out.returncode == 0, out.stderr
    assert all(name in out.stdout for name in suite("demo"))


def test_generation_is_complete(reference):
    root, _, hashes = reference  # no timed assertion: ~6 s on an idle 2-core CPU, much more on a shared one
    assert demo.is_complete(root)
    for name in suite("demo"):
        counts = {split: len((root / name / f"{split}.txt").read_text().splitlines())
                  for split in ("train800", "val200", "train800val200", "test")}
        assert counts == {"train800": 800, "val200": 200, "train800val200": 1000, "test": demo.TEST_SIZE}
        combined = (root / name / "train800val200.txt").read_text()
        assert combined == (root / name / "train800.txt").read_text() + (root / name / "val200.txt").read_text()
    assert len([h for h in hashes if h.endswith(".jpg")]) == len(suite("demo")) * (1000 + demo.TEST_SIZE)


def test_every_task_has_a_manifest_with_a_stable_fingerprint(reference, tmp_path):
    from vtab_lily.data import data_fingerprint, read_manifest

    root, _, _ = reference
    for name in suite("demo"):
        manifest = read_manifest(root, name)
        assert manifest["encoding"] == "jpeg" and manifest["pixels_px"] == demo.SIZE
        assert manifest["splits"]["test"]["n"] == demo.TEST_SIZE
        assert data_fingerprint(root, name) == manifest["fingerprint"]
    assert len({data_fingerprint(root, name) for name in suite("demo")}) == len(suite("demo"))


def test_two_generations_are_byte_identical(reference, tmp_path):
    _, _, hashes = reference
    demo.generate(tmp_path / "again")
    assert tree_hashes(tmp_path / "again") == hashes
    from vtab_lily.data import data_fingerprint

    assert all(data_fingerprint(tmp_path / "again", name) == data_fingerprint(reference[0], name)
               for name in suite("demo"))


def test_ensure_demo_is_idempotent(reference, capsys):
    root, _, hashes = reference
    marker_mtime = (root / demo.MARKER).stat().st_mtime_ns
    start = time.perf_counter()
    assert demo.ensure_demo(root) == root
    assert time.perf_counter() - start < 1.0
    assert demo.main(["--root", str(root)]) == 0  # the CLI
    assert "already complete" in capsys.readouterr().out
    assert (root / demo.MARKER).stat().st_mtime_ns == marker_mtime  # nothing rewritten
    assert tree_hashes(root) == hashes


def test_half_generated_suite_is_detected_and_regenerated(reference, tmp_path, monkeypatch):
    _, _, hashes = reference
    root = tmp_path / "crashed"
    real_write_task, written = demo._write_task, []

    def crash_on_third_task(root_, index, name):
        if len(written) == 2:
            raise KeyboardInterrupt  # as if killed mid-generation
        written.append(name)
        real_write_task(root_, index, name)

    monkeypatch.setattr(demo, "_write_task", crash_on_third_task)
    with pytest.raises(KeyboardInterrupt):
        demo.ensure_demo(root)
    monkeypatch.undo()
    assert not demo.is_complete(root)
    demo.ensure_demo(root)
    assert demo.is_complete(root) and tree_hashes(root) == hashes


def test_damaged_marker_or_missing_list_means_incomplete(tmp_path):
    root = tmp_path / "suite"
    root.mkdir()
    for name in suite("demo"):
        for split in ("train800", "val200", "train800val200", "test"):
            (root / name).mkdir(exist_ok=True)
            (root / name / f"{split}.txt").write_text("x 0\n")
    (root / demo.MARKER).write_text(f'{{"version": {demo.GENERATOR_VERSION}}}')
    assert not demo.is_complete(root)  # no manifests yet (an older suite): written again
    for name in suite("demo"):
        (root / name / "manifest.json").write_text("{}")
    assert demo.is_complete(root)
    (root / "count" / "test.txt").unlink()
    assert not demo.is_complete(root)
    (root / "count" / "test.txt").write_text("x 0\n")
    (root / demo.MARKER).write_text("{not json")
    assert not demo.is_complete(root)
    (root / demo.MARKER).write_text(f'{{"version": {demo.GENERATOR_VERSION + 1}}}')
    assert not demo.is_complete(root)
    with pytest.raises(UserError, match="is not a folder"):
        demo.ensure_demo(root / demo.MARKER)
    with pytest.raises(UserError, match="is a regular file"):
        demo.ensure_demo(root / demo.MARKER / "sub")


def test_verify_passes_on_the_demo_suite(reference, capsys):
    root, _, _ = reference
    assert verify_main(["--root", str(root)]) == 0  # detects the demo suite from its marker
    assert f"all {len(suite('demo'))} tasks ok" in capsys.readouterr().out


def test_every_demo_task_is_learnable_by_a_tiny_model(reference):
    root, _, _ = reference
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convolutions: threads only add overhead
    try:
        accuracies = {name: train_tiny_cnn(root, task) for name, task in suite("demo").items()}
    finally:
        torch.set_num_threads(threads)
    for name, accuracy in accuracies.items():
        chance = 1 / get_task(name, "demo").num_classes
        assert accuracy >= chance + 0.4 * (1 - chance), f"{name}: val accuracy {accuracy:.2f}"


def train_tiny_cnn(root: Path, task) -> float:
    """Validation accuracy of a two-layer CNN after 4 epochs on train800."""
    train = load_split(root, task, "train800", img_size=32, progress=False)
    val = load_split(root, task, "val200", img_size=32, progress=False)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Flatten(), nn.Linear(32 * 8 * 8, task.num_classes))
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(4):
        for images, labels in train.batches(32, shuffle=True, generator=generator):
            loss = nn.functional.cross_entropy(net(images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        images, labels = val.batch(torch.arange(len(val)))
        return (net(images).argmax(1) == labels).float().mean().item()


def test_no_lock_file_is_left_in_the_data_folder(reference):
    root, _, _ = reference
    assert not [p for p in root.iterdir() if "lock" in p.name]
    (root / ".demo.lock").write_text("left by an older version")
    demo.ensure_demo(root)
    assert not (root / ".demo.lock").exists()


def test_write_manifest_reuses_the_decoded_cache(reference, tmp_path, monkeypatch):
    import shutil

    from vtab_lily.data import images as images_module
    from vtab_lily.data import read_manifest

    root = tmp_path / "demo"
    shutil.copytree(reference[0], root, ignore=shutil.ignore_patterns(".cache"))
    for split in ("train800", "val200", "train800val200", "test"):
        load_split(root, "count", split, img_size=demo.SIZE, progress=False)  # the caches a run builds
    generated = read_manifest(root, "count")
    calls = []
    real = images_module.decode_image
    monkeypatch.setattr(images_module, "decode_image", lambda path, size: calls.append(path) or real(path, size))
    assert verify_main(["--root", str(root), "--tasks", "count", "--write-manifest"]) == 0
    assert calls == []  # pixels read from the cache, not decoded again
    rewritten = read_manifest(root, "count")
    assert rewritten["fingerprint"] == generated["fingerprint"] and rewritten["source"] == generated["source"]
