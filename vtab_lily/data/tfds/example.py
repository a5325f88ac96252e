"""``tf.train.Example`` decoded by hand from the protobuf wire format (no protobuf package).

The messages involved (tensorflow/core/example/{example,feature}.proto)::

    Example  { Features features = 1; }
    Features { map<string, Feature> feature = 1; }     // entries: key = 1, value = 2
    Feature  { oneof kind { BytesList bytes_list = 1; FloatList float_list = 2;
                            Int64List int64_list = 3; } }
    BytesList { repeated bytes value = 1; }
    FloatList { repeated float value = 1 [packed]; }   // packed or not: both are legal
    Int64List { repeated int64 value = 1 [packed]; }

TFDS flattens nested features with "/" (``objects/pixel_coords``) and stores a sequence of
fixed-shape tensors as one flat list. Unknown fields are skipped as protobuf requires.
:func:`encode_example` is the inverse, for the tests' writer.
"""

from __future__ import annotations

import numpy as np


class ExampleError(ValueError):
    """A malformed record; the reader adds the file and record index."""


def _varint(buf: memoryview, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise ExampleError("bad varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def _fields(buf: memoryview, pos: int, end: int):
    """Yield (field number, wire type, value or (start, stop)) over one message."""
    while pos < end:
        key, pos = _varint(buf, pos, end)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos, end)
            yield field, wire, value
        elif wire == 2:
            size, pos = _varint(buf, pos, end)
            if pos + size > end:
                raise ExampleError("field runs past the end of its message")
            yield field, wire, (pos, pos + size)
            pos += size
        elif wire in (1, 5):
            width = 8 if wire == 1 else 4
            if pos + width > end:
                raise ExampleError("field runs past the end of its message")
            yield field, wire, (pos, pos + width)
            pos += width
        else:  # groups (3, 4) never occur in these messages
            raise ExampleError(f"unsupported wire type {wire}")


def _signed64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _feature(buf: memoryview, start: int, end: int):
    kind = None
    out: list = []
    for field, wire, span in _fields(buf, start, end):
        if field not in (1, 2, 3) or wire != 2:
            continue
        if field != kind:  # oneof: another member replaces; the same one repeated merges
            kind, out = field, []
        for vfield, vwire, value in _fields(buf, *span):
            if vfield != 1:
                continue
            if field == 1 and vwire == 2:
                out.append(bytes(buf[value[0]:value[1]]))
            elif field == 2 and vwire == 2:  # packed floats
                if (value[1] - value[0]) % 4:
                    raise ExampleError("packed float list length is not a multiple of 4")
                out.append(np.frombuffer(buf[value[0]:value[1]], dtype="<f4"))
            elif field == 2 and vwire == 5:
                out.append(np.frombuffer(buf[value[0]:value[1]], dtype="<f4"))
            elif field == 3 and vwire == 2:  # packed varints
                pos, stop = value
                while pos < stop:
                    v, pos = _varint(buf, pos, stop)
                    out.append(_signed64(v))
            elif field == 3 and vwire == 0:
                out.append(_signed64(value))
            else:
                raise ExampleError(f"wire type {vwire} in a {('bytes', 'float', 'int64')[field - 1]}"
                                   " list")
    if kind == 1:
        return out
    if kind == 2:
        return np.concatenate(out).astype(np.float32) if out else np.zeros(0, np.float32)
    if kind == 3:
        return np.array(out, dtype=np.int64)
    return None  # an empty Feature (no kind set)


def parse_example(data: bytes) -> dict[str, object]:
    """``{name: list[bytes] | float32 array | int64 array | None}`` for one serialized Example."""
    buf = memoryview(data)
    features: dict[str, object] = {}
    for field, wire, span in _fields(buf, 0, len(buf)):
        if field != 1 or wire != 2:
            continue
        for ffield, fwire, entry in _fields(buf, *span):
            if ffield != 1 or fwire != 2:
                continue
            key, value = None, None
            for efield, ewire, espan in _fields(buf, *entry):
                if efield == 1 and ewire == 2:
                    try:
                        key = bytes(buf[espan[0]:espan[1]]).decode("utf-8")
                    except UnicodeDecodeError:
                        raise ExampleError("feature name is not UTF-8") from None
                elif efield == 2 and ewire == 2:
                    value = _feature(buf, *espan)
            if key is None:
                raise ExampleError("feature map entry without a name")
            features[key] = value
    return features


# ---- writing (tests and the fixture script) ----

def _put_varint(v: int) -> bytes:
    v &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte = v & 0x7F
        v >>= 7
        if v:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _len_field(field: int, payload: bytes) -> bytes:
    return _put_varint(field << 3 | 2) + _put_varint(len(payload)) + payload


def encode_feature(value) -> bytes:
    """bytes / str / list of them -> BytesList; float arrays -> FloatList; ints -> Int64List."""
    if isinstance(value, (bytes, str)):
        value = [value]
    if isinstance(value, list) and value and isinstance(value[0], (bytes, str)):
        items = b"".join(_len_field(1, v.encode() if isinstance(v, str) else v) for v in value)
        return _len_field(1, items)
    arr = np.asarray(value).reshape(-1)
    if arr.dtype.kind == "f":
        packed = arr.astype("<f4").tobytes()
        return _len_field(2, _len_field(1, packed) if len(arr) else b"")
    packed = b"".join(_put_varint(int(v)) for v in arr)
    return _len_field(3, _len_field(1, packed) if len(arr) else b"")


def encode_example(features: dict[str, object]) -> bytes:
    entries = b"".join(
        _len_field(1, _len_field(1, name.encode()) + _len_field(2, encode_feature(value)))
        for name, value in features.items())
    return _len_field(1, entries)

