"""A result's fingerprint is the data it read: the runner checks its lists and pixels against
manifest.json before training; verify checks pixels, encoding and pixels_px; a stale manifest is
rewritten by `verify --write-manifest`; list files of absurd size are refused unread."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vtab_lily import run
from vtab_lily.data import load_split, read_manifest
from vtab_lily.data import readcheck
from vtab_lily.data.parallel import bounded_map
from vtab_lily.data.readcheck import StaleData, check_read_data
from vtab_lily.data.verify import main as verify_main
from vtab_lily.errors import UserError
from vtab_lily.tasks import suite

TINY = ["--demo", "--backbone", "vit", "--adapter", "linear", "--task", "colours", "--img-size", "16",
        "--epochs", "1", "--eval-every", "1", "--batch-size", "100", "--no-tensorboard"]


@pytest.fixture
def root(demo_root, tmp_path) -> Path:
    """A private copy of the demo's colours task (manifest included), to edit."""
    shutil.copytree(demo_root / "colours", tmp_path / "data" / "colours")
    return tmp_path / "data"


def relabel(task_dir: Path, split: str) -> None:
    """Every label of ``split`` moved to the next class (still valid labels)."""
    file = task_dir / f"{split}.txt"
    lines = [line.rsplit(" ", 1) for line in file.read_text().splitlines() if line.strip()]
    file.write_text("".join(f"{path} {(int(label) + 1) % 8}\n" for path, label in lines))


def touch_one_pixel(task_dir: Path, split: str = "test") -> Path:
    """Re-save the split's first image with one pixel changed, under the same name."""
    first = (task_dir / f"{split}.txt").read_text().split()[0]
    path = task_dir / first
    pixels = np.asarray(Image.open(path).convert("RGB")).copy()
    pixels[0, 0] = 255 - pixels[0, 0]
    Image.fromarray(pixels).save(path, "PNG")  # content decides the format, not the name
    return path


def load(root: Path, *splits: str, size: int = 16):
    task = suite("demo")["colours"]
    return [load_split(root, task, split, img_size=size, progress=False) for split in splits]


def result_of(out: Path) -> dict:
    [path] = out.rglob("result.json")
    return json.loads(path.read_text())


def test_a_run_refuses_lists_edited_after_the_manifest_and_the_override_records_the_data_read(root, tmp_path):
    before = read_manifest(root, "colours")["fingerprint"]
    relabel(root / "colours", "train800val200")
    args = [*TINY, "--data-root", str(root), "--out", str(tmp_path / "runs")]
    with pytest.raises(StaleData) as refused:
        run.main(args)
    message = str(refused.value)
    assert "task colours" in message and "train800val200.txt" in message
    assert f"python -m vtab_lily.data verify --root {root} --suite demo --tasks colours --write-manifest" in message
    assert "--allow-stale-data" in message
    assert not (tmp_path / "runs").exists()  # refused before any run folder

    assert run.main([*args, "--allow-stale-data"]) == 0
    data = result_of(tmp_path / "runs")["data"]
    assert data["fingerprint"] != before  # the data as read, never the manifest's stale value
    assert data["stale_manifest"]["fingerprint"] == before
    assert data["stale_manifest"]["allowed_by"] == "--allow-stale-data"
    assert "train800val200.txt" in data["stale_manifest"]["differs"][0]

    # the documented way out: verify records the data as it is now, and runs then need no flag
    assert verify_main(["--root", str(root), "--suite", "demo", "--tasks", "colours", "--write-manifest"]) == 0
    rewritten = read_manifest(root, "colours")
    assert rewritten["fingerprint"] == data["fingerprint"]  # what the override recorded is the real one
    assert rewritten["source"].endswith(", changed after")
    assert run.main([*args, "--force"]) == 0
    assert result_of(tmp_path / "runs")["data"] == {"fingerprint": rewritten["fingerprint"], "encoding": "jpeg",
                                                   "source": rewritten["source"]}


def test_a_replaced_image_is_caught_and_a_clean_check_reads_only_the_pixel_note(root, monkeypatch):
    loaded = load(root, "train800val200", "test")
    assert check_read_data(root, "colours", loaded)["fingerprint"] == read_manifest(root, "colours")["fingerprint"]
    # the hashes are noted: the same data is checked again without hashing a pixel
    monkeypatch.setattr(readcheck, "hash_array", lambda *a: pytest.fail("re-hashed noted pixels"))
    monkeypatch.setattr(readcheck.cache, "decode_chunks", lambda *a, **k: pytest.fail("decoded noted pixels"))
    assert check_read_data(root, "colours", load(root, "train800val200", "test"))["fingerprint"]
    monkeypatch.undo()
    touch_one_pixel(root / "colours")
    with pytest.raises(StaleData, match=r"test.txt: the images it lists decode to other pixels"):
        check_read_data(root, "colours", load(root, "train800val200", "test"))
    # at the manifest's own size the loaded pixels themselves are hashed (no second decode)
    with pytest.raises(StaleData, match="decode to other pixels"):
        check_read_data(root, "colours", load(root, "test", size=32))


def test_a_task_without_manifest_records_no_fingerprint(root):
    (root / "colours" / "manifest.json").unlink()
    assert check_read_data(root, "colours", load(root, "test")) == {"fingerprint": None, "encoding": None,
                                                                    "source": None}


@pytest.mark.parametrize("edit", ["pixel", "encoding", "pixels_px"])
def test_verify_compares_pixels_encoding_and_pixels_px_with_the_manifest(root, capsys, edit):
    verify = ["--root", str(root), "--suite", "demo", "--tasks", "colours"]
    assert verify_main(verify) == 0
    assert "pixels match)" in capsys.readouterr().out
    manifest_path = root / "colours" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    if edit == "pixel":
        touch_one_pixel(root / "colours")
    elif edit == "encoding":
        manifest_path.write_text(json.dumps(dict(manifest, encoding="png")))
    else:
        manifest_path.write_text(json.dumps(dict(manifest, pixels_px=16)))
    assert verify_main(verify) == 2
    out = capsys.readouterr().out
    expected = {"pixel": "test.txt decode to other pixels at 32 px",
                "encoding": "encoding 'png', but the listed images are 'jpeg'",
                "pixels_px": "decode to other pixels at 16 px"}[edit]
    assert expected in out
    assert verify_main([*verify, "--write-manifest"]) == 0  # the way out, after checking the data
    assert "rewritten; it no longer described the data" in capsys.readouterr().out
    assert verify_main(verify) == 0


def test_quick_verify_uses_pixel_notes_only_for_the_data_as_it_is_now(root, capsys):
    verify = ["--root", str(root), "--suite", "demo", "--tasks", "colours"]
    assert verify_main(verify) == 0  # full: decodes, notes the pixel hashes
    assert verify_main([*verify, "--quick"]) == 0
    assert "pixels match)" in capsys.readouterr().out
    touch_one_pixel(root / "colours")  # a new mtime and size: the note no longer applies
    assert verify_main([*verify, "--quick"]) == 0
    assert "pixels match for 3 of 4 splits" in capsys.readouterr().out


def test_write_manifest_rewrites_a_damaged_manifest_but_never_over_bad_data(root, capsys):
    verify = ["--root", str(root), "--suite", "demo", "--tasks", "colours"]
    manifest_path = root / "colours" / "manifest.json"
    manifest_path.write_text("{not json")
    assert verify_main(verify) == 2
    assert verify_main([*verify, "--write-manifest"]) == 0
    assert read_manifest(root, "colours")["fingerprint"]
    relabel(root / "colours", "train800val200")
    (root / "colours" / "test.txt").write_text("images/test/000000.jpg 99\n")
    before = manifest_path.read_bytes()
    assert verify_main([*verify, "--write-manifest"]) == 2  # bad labels: nothing recorded
    assert manifest_path.read_bytes() == before
    assert "label 99 outside [0, 8)" in capsys.readouterr().out


def test_a_list_file_far_beyond_any_vtab_size_is_refused_unread(tmp_path, capsys):
    from vtab_lily.data.lists import read_list
    from vtab_lily.tasks import get_task

    task_dir = tmp_path / "dtd"
    task_dir.mkdir()
    for split in ("train800", "val200", "train800val200"):
        (task_dir / f"{split}.txt").write_text("a.jpg 0\n")
    (task_dir / "test.txt").write_text("".join(f"images/{i}.jpg 0\n" for i in range(250_000)))
    assert verify_main(["--root", str(tmp_path), "--tasks", "dtd", "--quick"]) == 2
    assert "test.txt: 250,000 entries, more than 19,800: not a VTAB-1K list file" in capsys.readouterr().out
    with pytest.raises(UserError, match="250,000 entries, more than 19,800"):
        read_list(tmp_path, get_task("dtd"), "test")


def test_checks_in_flight_are_bounded_whatever_the_number_of_items():
    from concurrent.futures import ThreadPoolExecutor

    pulled = 0

    def items():
        nonlocal pulled
        for i in range(10_000):
            pulled += 1
            yield i

    ahead = []
    with ThreadPoolExecutor(2) as pool:
        for consumed, result in enumerate(bounded_map(pool, lambda x: x * 2, items(), window=8), start=1):
            assert result == 2 * (consumed - 1)  # in order
            ahead.append(pulled - consumed)
    assert max(ahead) <= 8 and len(ahead) == 10_000  # Executor.map would have pulled all 10,000 first


@pytest.mark.parametrize("px", [10**6, "224", True, 0])
def test_a_manifest_pixels_px_that_is_no_size_is_refused_before_anything_decodes_at_it(root, px):
    path = root / "colours" / "manifest.json"
    path.write_text(json.dumps(dict(json.loads(path.read_text()), pixels_px=px)))
    with pytest.raises(UserError, match=r"pixels_px .* is not an integer in 1..1024"):
        check_read_data(root, "colours", [])
