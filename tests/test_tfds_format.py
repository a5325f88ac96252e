"""crc32c against known vectors, TFRecord framing (and its corruptions), tf.train.Example
decoding (packed and unpacked encodings, unknown fields, malformed input), split strings."""

import os
import struct

import numpy as np
import pytest

from vtab_lily.data.tfds import crc32c as crc_mod
from vtab_lily.data.tfds.crc32c import crc32c_pure, masked_crc32c
from vtab_lily.data.tfds.example import ExampleError, encode_example, parse_example
from vtab_lily.data.tfds.slicing import Slice, absolute_range, interleave, parse_split
from vtab_lily.data.tfds.tfrecord import count_records, encode_record, iter_records, write_records
from vtab_lily.errors import UserError

# RFC 3720 (iSCSI) B.4 test vectors plus the usual check value.
VECTORS = [
    (b"123456789", 0xE3069283),
    (b"", 0x00000000),
    (bytes(32), 0x8A9136AA),
    (b"\xff" * 32, 0x62A8AB43),
    (bytes(range(32)), 0x46DD794E),
    (bytes(range(31, -1, -1)), 0x113FDB5C),
]


@pytest.mark.parametrize("data,want", VECTORS)
def test_crc32c_known_vectors(data, want):
    assert crc32c_pure(data) == want
    assert crc_mod.crc32c(data) == want  # the optional C package, when installed, agrees


@pytest.mark.parametrize("n", [511, 512, 513, 1000, 4096, 16385, 70001])
def test_crc32c_vectorised_path_matches_bytewise(n):
    data = np.random.default_rng(n).integers(0, 256, n, dtype=np.uint8).tobytes()
    want = crc_mod._raw_small(data, 0xFFFFFFFF) ^ 0xFFFFFFFF
    assert crc32c_pure(data) == want
    assert crc32c_pure(data[n // 3:], crc32c_pure(data[:n // 3])) == want  # continuation


def test_masked_crc_is_tfrecords_mask():
    crc = 0xE3069283
    assert masked_crc32c(b"123456789") == ((((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF)


def _records(tmp_path, n=5):
    path = tmp_path / "x.tfrecord-00000-of-00001"
    payloads = [os.urandom(10 + 37 * i) for i in range(n)]
    write_records(path, payloads)
    return path, payloads


def test_tfrecord_roundtrip_skip_take_and_count(tmp_path):
    path, payloads = _records(tmp_path)
    assert list(iter_records(path)) == payloads
    assert list(iter_records(path, skip=2, take=2)) == payloads[2:4]
    assert list(iter_records(path, skip=3, take=2, expect_total=5)) == payloads[3:]
    assert count_records(path) == 5
    assert encode_record(b"")[:8] == struct.pack("<Q", 0)


def _one_line(err) -> str:
    msg = str(err.value)
    assert "\n" not in msg
    return msg


def test_tfrecord_bad_length_crc_names_file_and_record(tmp_path):
    path, payloads = _records(tmp_path)
    raw = bytearray(path.read_bytes())
    offset = sum(16 + len(p) for p in payloads[:2])
    raw[offset + 8] ^= 0x01  # the stored length CRC of record 2
    path.write_bytes(bytes(raw))
    with pytest.raises(UserError) as err:
        list(iter_records(path))
    assert f"{path}: record 2 at byte {offset}: length CRC mismatch" in _one_line(err)


def test_tfrecord_bad_data_crc(tmp_path):
    path, payloads = _records(tmp_path)
    raw = bytearray(path.read_bytes())
    raw[16 + len(payloads[0]) + 12 + 3] ^= 0x40  # a payload byte of record 1
    path.write_bytes(bytes(raw))
    assert list(iter_records(path, take=1)) == payloads[:1]
    with pytest.raises(UserError, match=r"record 1 at byte \d+: data CRC mismatch"):
        list(iter_records(path))


@pytest.mark.parametrize("cut", [3, 14, 40])
def test_tfrecord_truncated(tmp_path, cut):
    path, payloads = _records(tmp_path)
    raw = path.read_bytes()
    path.write_bytes(raw[:len(raw) - sum(16 + len(p) for p in payloads[3:]) + cut])
    with pytest.raises(UserError) as err:
        list(iter_records(path, skip=0, take=5))
    assert str(path) in _one_line(err) and "truncated" in str(err.value)


def test_tfrecord_more_records_than_listed(tmp_path):
    path, _ = _records(tmp_path)
    with pytest.raises(UserError, match="more than the 4 records"):
        list(iter_records(path, skip=2, take=2, expect_total=4))


def test_tfrecord_missing_file(tmp_path):
    with pytest.raises(UserError, match="shard file is missing"):
        list(iter_records(tmp_path / "nope"))


def test_example_roundtrip():
    feats = {"image": [b"\x89PNG..."], "label": np.array([7]), "neg": np.array([-1, 2**40, -(2**62)]),
             "f": np.array([1.5, -2.25], np.float32), "empty_i": np.zeros(0, np.int64),
             "empty_f": np.zeros(0, np.float32), "objects/type": np.array([0, 3, 2]),
             "name": "ünïcode"}
    got = parse_example(encode_example(feats))
    assert got["image"] == [b"\x89PNG..."] and got["name"] == ["ünïcode".encode()]
    assert got["label"].tolist() == [7] and got["label"].dtype == np.int64
    assert got["neg"].tolist() == [-1, 2**40, -(2**62)]
    assert got["f"].tolist() == [1.5, -2.25] and got["f"].dtype == np.float32
    assert got["empty_i"].size == 0 and got["empty_f"].size == 0
    assert got["objects/type"].tolist() == [0, 3, 2]


def _ld(field, payload):  # length-delimited field
    return bytes([field << 3 | 2, len(payload)]) + payload


def test_example_unpacked_lists_and_unknown_fields():
    floats = _ld(2, bytes([1 << 3 | 5]) + struct.pack("<f", 0.5) + bytes([1 << 3 | 5])
                 + struct.pack("<f", 3.0))
    ints = _ld(3, bytes([1 << 3 | 0, 5, 1 << 3 | 0, 9]) + bytes([7 << 3 | 0, 1]))
    entry = lambda k, v: _ld(1, _ld(1, k) + _ld(2, v) + bytes([9 << 3 | 0, 3]))
    example = _ld(1, entry(b"f", floats) + entry(b"i", ints)) + bytes([5 << 3 | 5]) + b"\0" * 4
    got = parse_example(example)
    assert got["f"].tolist() == [0.5, 3.0] and got["i"].tolist() == [5, 9]
    # protobuf merges a repeated message field; a different oneof member replaces it
    twice = _ld(3, bytes([8, 1])) + _ld(3, bytes([8, 2]))
    assert parse_example(_ld(1, entry(b"i", twice)))["i"].tolist() == [1, 2]
    replaced = _ld(3, bytes([8, 1])) + _ld(1, _ld(1, b"x"))
    assert parse_example(_ld(1, entry(b"i", replaced)))["i"] == [b"x"]


@pytest.mark.parametrize("bad", [b"\x0a\x05abc", b"\x0a", b"\x0b\x00", b"\x0a\x03\x0a\x01\xff"])
def test_malformed_example(bad):
    with pytest.raises(ExampleError):
        parse_example(bad)


def test_parse_split_forms_and_errors():
    assert parse_split("train") == [Slice("train")]
    assert parse_split("test[50%:]") == [Slice("test", 50.0, None, "%")]
    assert parse_split("train[:800]+validation[:200]") == [Slice("train", None, 800),
                                                          Slice("validation", None, 200)]
    assert parse_split("train[1%:5]") == [Slice("train", 1.0, 5.0, "%")]  # as TFDS reads it
    for bad in ["train[", "train[a:b]", "train[1.5:2]", "train[::]", "train[:]", "tr ain"]:
        with pytest.raises(UserError, match="bad split"):
            parse_split(bad)
    with pytest.raises(UserError, match="out of range"):
        absolute_range(Slice("train", None, 801), [800])


def test_interleave_documented_example():
    """tf.data's documented interleave example (cycle_length=2, block_length=4)."""
    out = list(interleave(range(1, 6), lambda x: iter([x] * 6), 2, 4))
    assert out == [1] * 4 + [2] * 4 + [1, 1, 2, 2] + [3] * 4 + [4] * 4 + [3, 3, 4, 4] + [5] * 6


def test_no_tensorflow_or_torch_import():
    import subprocess
    import sys

    code = ("import sys, vtab_lily.data.tfds as t; t.TASKS['kitti']; "
            "print(sorted(m for m in ('tensorflow', 'torch', 'google.protobuf') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("kind", ["rgb", "gray"])
def test_a_16_bit_record_decodes_as_the_noah_reader_decodes_the_same_file(tmp_path, kind):
    import io

    from PIL import Image

    from vtab_lily.data.images import decode_image as decode_file
    from vtab_lily.data.tfds.source import decode_image

    values = np.array([[0, 40000], [65535, 257]], dtype=np.uint16)
    buf = io.BytesIO()
    Image.fromarray(values).save(buf, "PNG")  # 16-bit grayscale
    record = decode_image(buf.getvalue(), kind)
    assert record[0, 1].tolist() == [156, 156, 156]  # 40000 / 65535 of the range, never clipped to 255
    (tmp_path / "x.png").write_bytes(buf.getvalue())
    assert np.array_equal(record.transpose(2, 0, 1), decode_file(tmp_path / "x.png", 2))
