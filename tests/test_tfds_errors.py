"""Broken TFDS folders give one clear line naming the file; find_builders picks pinned versions."""

import json
import shutil
import warnings

import numpy as np
import pytest

from tfds_helpers import id_pixels, png, write_builder
from vtab_lily.data.tfds import TfdsVersionWarning, find_builders, scan_builders, vtab_task_splits
from vtab_lily.errors import UserError


def cifar(root, version="3.0.2", label=lambda i: i % 100, **kw):
    return write_builder(root, "cifar100", version, {"train": [700, 1150, 150], "test": [30, 25]},
                         lambda s, i: {"image": png(id_pixels(1, i)), "label": np.array([label(i)])},
                         **kw)


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    root = tmp_path_factory.mktemp("good")
    cifar(root)
    return root


@pytest.fixture
def broken(good, tmp_path):
    shutil.copytree(good, tmp_path / "d")
    return tmp_path / "d", tmp_path / "d" / "cifar100" / "3.0.2"


def one_line_error(fn) -> str:
    with pytest.raises(UserError) as err:
        fn()
    msg = str(err.value)
    assert "\n" not in msg
    return msg


def drain(source):
    for _ in source:
        pass


def test_bad_data_crc_names_shard_and_record(broken):
    root, folder = broken
    shard = folder / "cifar100-train.tfrecord-00001-of-00003"
    raw = bytearray(shard.read_bytes())
    raw[40] ^= 0xFF  # inside record 0's payload
    shard.write_bytes(bytes(raw))
    msg = one_line_error(lambda: drain(vtab_task_splits(root, "cifar")["train800"]))
    assert msg.startswith(f"{shard}: record 0 at byte 0: data CRC mismatch")


def test_bad_length_crc(broken):
    root, folder = broken
    shard = folder / "cifar100-test.tfrecord-00000-of-00002"
    raw = bytearray(shard.read_bytes())
    raw[9] ^= 0x10
    shard.write_bytes(bytes(raw))
    assert "length CRC mismatch" in one_line_error(lambda: drain(vtab_task_splits(root, "cifar")["test"]))


def test_truncated_shard(broken):
    root, folder = broken
    shard = folder / "cifar100-train.tfrecord-00002-of-00003"
    shard.write_bytes(shard.read_bytes()[:-30])
    splits = vtab_task_splits(root, "cifar")
    drain(splits["train800"])  # does not touch shard 2
    msg = one_line_error(lambda: drain(splits["val200"]))
    assert msg.startswith(str(shard)) and "truncated" in msg


def test_missing_shard_detected_before_reading(broken):
    root, folder = broken
    (folder / "cifar100-test.tfrecord-00001-of-00002").unlink()
    msg = one_line_error(lambda: vtab_task_splits(root, "cifar"))
    assert msg.startswith(str(folder / "cifar100-test.tfrecord-00001-of-00002"))
    assert "missing" in msg and "2 shard(s)" in msg


def test_shard_count_disagrees_with_dataset_info(broken):
    root, folder = broken
    (folder / "cifar100-test.tfrecord-00003-of-00004").write_bytes(b"")
    msg = one_line_error(lambda: vtab_task_splits(root, "cifar"))
    assert "cifar100-test.tfrecord-00003-of-00004" in msg and "shard count disagrees" in msg


def test_dataset_info_lists_fewer_records_than_the_shard_holds(broken):
    root, folder = broken
    info = json.loads((folder / "dataset_info.json").read_text())
    info["splits"][1]["shardLengths"] = ["29", "25"]
    (folder / "dataset_info.json").write_text(json.dumps(info))
    msg = one_line_error(lambda: drain(vtab_task_splits(root, "cifar")["test"]))
    assert "cifar100-test.tfrecord-00000-of-00002" in msg and "more than the 29 records" in msg


def test_bad_dataset_info(broken):
    root, folder = broken
    (folder / "dataset_info.json").write_text('{"splits": [\n  {"name": "train",}\n]}')
    msg = one_line_error(lambda: vtab_task_splits(root, "cifar"))
    assert msg.startswith(f"{folder / 'dataset_info.json'}:2: invalid JSON")
    (folder / "dataset_info.json").write_text(json.dumps({"splits": [], "fileFormat": "array_record"}))
    assert "array_record" in one_line_error(lambda: vtab_task_splits(root, "cifar"))
    (folder / "dataset_info.json").write_text(json.dumps({"splits": [{"name": "test"}]}))
    assert "neither shardLengths nor numShards" in one_line_error(lambda: vtab_task_splits(root, "cifar"))
    info = {"splits": [{"name": "test", "shardLengths": ["30", "25"]}]}
    (folder / "dataset_info.json").write_text(json.dumps(info))
    assert "no split 'train' (it has: test)" in one_line_error(lambda: vtab_task_splits(root, "cifar"))


def test_label_out_of_range_and_missing_feature(tmp_path):
    cifar(tmp_path, label=lambda i: 100 if i == 3 else 0)
    msg = one_line_error(lambda: drain(vtab_task_splits(tmp_path, "cifar")["train800"]))
    assert msg.endswith("record 3: label 100 is outside 0..99")
    write_builder(tmp_path, "dsprites", "2.0.0", {"train": [1000]},
                  lambda s, i: {"image": png(np.zeros((2, 2), np.uint8))})
    msg = one_line_error(lambda: drain(vtab_task_splits(tmp_path, "dsprites_loc")["test"]))
    assert "dsprites-train.tfrecord-00000-of-00001: record 900: missing feature " \
           "'label_x_position' (features present: image)" in msg


def test_not_an_example_and_bad_image(tmp_path):
    folder = write_builder(tmp_path, "kitti", "3.2.0",
                           {"train": [800], "validation": [200], "test": [2]},
                           lambda s, i: {"image": b"not a png" if s == "test" else png(id_pixels(0, i)),
                                         "objects/type": np.zeros(0, np.int64),
                                         "objects/location": np.zeros(0, np.float32)})
    msg = one_line_error(lambda: drain(vtab_task_splits(tmp_path, "kitti")["test"]))
    assert msg.startswith(f"{folder / 'kitti-test.tfrecord-00000-of-00001'}: record 0: image cannot be decoded")


def test_unknown_task_and_missing_builder(tmp_path):
    assert "did you mean 'kitti'" in one_line_error(lambda: vtab_task_splits(tmp_path, "kiti"))
    msg = one_line_error(lambda: vtab_task_splits(tmp_path, "sun397"))
    assert str(tmp_path / "sun397" / "tfds") in msg and "pinned 4.0.0" in msg


def test_find_builders_prefers_pinned_version(tmp_path):
    for version in ["3.1.0", "3.0.2", "3.0.1"]:
        cifar(tmp_path, version=version)
    (tmp_path / "cifar100" / "3.0.3.incompleteABC").mkdir()  # TFDS's half-built folder: ignored
    (tmp_path / "cifar100" / "4.0.0").mkdir()  # no dataset_info.json: ignored
    choices = scan_builders(tmp_path)
    assert list(choices) == ["cifar"]
    assert choices["cifar"].version == "3.0.2" and choices["cifar"].others == ["3.0.1", "3.1.0"]
    assert "ignoring 3.0.1, 3.1.0" in choices["cifar"].note
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert find_builders(tmp_path) == {"cifar": tmp_path / "cifar100" / "3.0.2"}
    shutil.rmtree(tmp_path / "cifar100" / "3.0.2")
    with pytest.warns(TfdsVersionWarning, match="pinned TFDS version 3.0.2 not found, using 3.1.0"):
        assert find_builders(tmp_path) == {"cifar": tmp_path / "cifar100" / "3.1.0"}
    with pytest.warns(TfdsVersionWarning):
        assert len(vtab_task_splits(tmp_path, "cifar")["train800"]) == 800


def test_find_builders_wrong_folder(tmp_path, good):
    assert "data_dir that holds" in one_line_error(lambda: scan_builders(good / "cifar100" / "3.0.2"))
    assert "does not exist" in one_line_error(lambda: scan_builders(tmp_path / "nope"))
    assert find_builders(tmp_path) == {}


def test_hostile_dataset_info(broken):
    root, folder = broken
    info = json.loads((folder / "dataset_info.json").read_text())
    info["splits"][0]["filepathTemplate"] = "../../{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"
    (folder / "dataset_info.json").write_text(json.dumps(info))
    assert "leaves the dataset folder" in one_line_error(lambda: vtab_task_splits(root, "cifar"))
    info["splits"][0]["filepathTemplate"] = "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"
    info["splits"][0]["shardLengths"] = ["700", "-5", "150"]
    (folder / "dataset_info.json").write_text(json.dumps(info))
    assert "splits[0].shardLengths: negative count -5" in one_line_error(
        lambda: vtab_task_splits(root, "cifar"))
    info["splits"][0]["shardLengths"] = ["700", "1e3", "150"]
    (folder / "dataset_info.json").write_text(json.dumps(info))
    assert "expected an integer, got '1e3'" in one_line_error(lambda: vtab_task_splits(root, "cifar"))


@pytest.mark.parametrize("template, why", [
    ("{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD}", "unknown field {SHARD}"),
    ("{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y", "not a valid template"),
    ("{DATASET}-}{SPLIT}", "not a valid template"),
    ("{DATASET}-{SPLIT}.{}", "a positional field"),
    ("{0}-{SPLIT}", "a positional field"),
    ("{DATASET.upper}-{SPLIT}", "unknown field {DATASET.upper}"),
    ("{SPLIT[0]}-{DATASET}", "unknown field {SPLIT[0]}"),
    ("{SHARD_INDEX:q}", "not a valid template"),
])
def test_a_bad_filepath_template_is_one_line_naming_the_file(broken, template, why):
    root, folder = broken
    info = json.loads((folder / "dataset_info.json").read_text())
    info["splits"][0]["filepathTemplate"] = template
    (folder / "dataset_info.json").write_text(json.dumps(info))
    msg = one_line_error(lambda: vtab_task_splits(root, "cifar"))
    assert f"{folder / 'dataset_info.json'}: splits[0].filepathTemplate" in msg and why in msg


def test_custom_template_and_empty_shard_without_file(tmp_path):
    folder = cifar(tmp_path)
    info = json.loads((folder / "dataset_info.json").read_text())
    for split in info["splits"]:  # TFDS >= 4.9 may store shards as <split>/data-NNNNN
        split["filepathTemplate"] = "{SPLIT}/data.{FILEFORMAT}-{SHARD_INDEX}"
        (folder / split["name"]).mkdir()
        n = len(split["shardLengths"])
        for i in range(n):
            (folder / f"cifar100-{split['name']}.tfrecord-{i:05d}-of-{n:05d}").rename(
                folder / split["name"] / f"data.tfrecord-{i:05d}")
    info["splits"][1]["shardLengths"].insert(1, "0")  # an empty shard whose file was never written
    (folder / "test" / "data.tfrecord-00001").rename(folder / "test" / "data.tfrecord-00002")
    (folder / "dataset_info.json").write_text(json.dumps(info))
    splits = vtab_task_splits(tmp_path, "cifar")
    assert len(splits["test"]) == 55 and len(list(splits["test"])) == 55


def test_old_dataset_info_without_shard_lengths_counts_records(broken):
    root, folder = broken
    info = json.loads((folder / "dataset_info.json").read_text())
    for split in info["splits"]:  # as TFDS 1.0 wrote it
        split["numShards"] = str(len(split.pop("shardLengths")))
        del split["filepathTemplate"]
    (folder / "dataset_info.json").write_text(json.dumps(info))
    splits = vtab_task_splits(root, "cifar")
    assert [len(s) for s in splits.values()] == [800, 200, 55]
    shard = folder / "cifar100-test.tfrecord-00001-of-00002"
    shard.write_bytes(shard.read_bytes()[:-3])
    assert f"{shard}: record 24" in one_line_error(lambda: vtab_task_splits(root, "cifar"))


def test_decode_image_refuses_bombs_and_garbage():
    import io

    from PIL import Image

    from vtab_lily.data.tfds.source import decode_image
    from vtab_lily.data.tfds.vtab import LabelError

    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(buf, "JPEG")
    data = bytearray(buf.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = bytes([0xEA, 0x60, 0xEA, 0x60])  # claims 60000 x 60000 pixels
    with pytest.raises(LabelError, match="too large|decompression bomb"):
        decode_image(bytes(data), "rgb")
    with pytest.raises(LabelError, match="cannot be decoded"):
        decode_image(b"\xff\xd8\xffgarbage", "rgb")
    with pytest.raises(LabelError, match="0/1 image"):
        decode_image(png(np.full((2, 2), 3, np.uint8)), "binary")
    with pytest.raises(LabelError, match="one-channel"):
        decode_image(png(np.zeros((2, 2, 3), np.uint8)), "gray")
