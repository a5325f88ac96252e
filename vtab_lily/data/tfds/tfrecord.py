"""TFRecord files: the framing TFDS shards use, read and written without TensorFlow.

Each record is ``uint64 length (little endian) | uint32 masked_crc32c(length bytes) |
data | uint32 masked_crc32c(data)``. Reading checks both CRCs of every record it returns and
the length CRC of every record it skips (skipped payloads are seeked over, not read). Any
damage is a :class:`UserError` naming the file, the record index and the byte offset.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator

from ...errors import UserError
from .crc32c import masked_crc32c

_HEADER = struct.Struct("<QI")
_FOOTER = struct.Struct("<I")
# Far above any real record (a TFDS shard is ~1 GiB at most); guards against a corrupt
# length that happens to pass the CRC and would make us allocate terabytes.
MAX_RECORD_BYTES = 1 << 31
_SKIP_ALL = 1 << 62


def _where(path: Path, index: int, offset: int) -> str:
    return f"{path}: record {index} at byte {offset}"


def _read_exact(f: BinaryIO, n: int) -> bytes:
    data = f.read(n)
    while len(data) < n:  # short reads from pipes / network file systems
        more = f.read(n - len(data))
        if not more:
            break
        data += more
    return data


def iter_records(path: str | os.PathLike, skip: int = 0, take: int | None = None,
                 check_crc: bool = True, expect_total: int | None = None) -> Iterator[bytes]:
    """Yield the payloads of records ``skip .. skip+take-1`` of one file, in file order.

    ``take=None`` reads to the end of the file. Asking for more records than the file holds
    is an error (the caller knows the count from ``dataset_info.json``); with
    ``expect_total`` (= skip + take), so is a file that goes on after the last record.
    """
    path = Path(path)
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise UserError(f"{path}: shard file is missing") from None
    except OSError as err:
        raise UserError(f"{path}: cannot open shard ({err.strerror})") from None
    with f:
        size = os.fstat(f.fileno()).st_size
        index = 0
        end = None if take is None else skip + take
        while end is None or index < end:
            offset = f.tell()
            header = _read_exact(f, _HEADER.size)
            if not header and end is None:
                return
            if len(header) < _HEADER.size:
                want = "" if end is None else f" (expected {end} records)"
                raise UserError(f"{_where(path, index, offset)}: file ends inside or before the "
                                f"record header: truncated shard{want}")
            length, length_crc = _HEADER.unpack(header)
            if check_crc and masked_crc32c(header[:8]) != length_crc:
                raise UserError(f"{_where(path, index, offset)}: length CRC mismatch "
                                "(corrupt shard)")
            if length > MAX_RECORD_BYTES or offset + 16 + length > size:
                raise UserError(f"{_where(path, index, offset)}: record of {length} bytes runs "
                                f"past the end of the file ({size} bytes): truncated shard")
            if index < skip:
                f.seek(length + _FOOTER.size, os.SEEK_CUR)
                index += 1
                continue
            data = _read_exact(f, length)
            footer = _read_exact(f, _FOOTER.size)
            if len(data) < length or len(footer) < _FOOTER.size:
                raise UserError(f"{_where(path, index, offset)}: truncated shard")
            if check_crc and masked_crc32c(data) != _FOOTER.unpack(footer)[0]:
                raise UserError(f"{_where(path, index, offset)}: data CRC mismatch "
                                "(corrupt shard)")
            yield data
            index += 1
        if expect_total is not None and f.tell() != size:
            raise UserError(f"{path}: more than the {expect_total} records that dataset_info.json "
                            f"lists ({size - f.tell()} bytes follow record {expect_total - 1})")


def count_records(path: str | os.PathLike) -> int:
    """Number of records in a file; checks each length CRC and seeks over the payloads."""
    path = Path(path)
    n = 0
    for _ in iter_records(path, skip=_SKIP_ALL):  # skips everything, so yields nothing
        pass
    with open(path, "rb") as f:  # iter_records checked the framing; now just count
        while header := f.read(_HEADER.size):
            f.seek(_HEADER.unpack(header)[0] + _FOOTER.size, os.SEEK_CUR)
            n += 1
    return n


def encode_record(data: bytes) -> bytes:
    """One framed record (used by the tests' writer and the fixture script)."""
    length = struct.pack("<Q", len(data))
    return (length + struct.pack("<I", masked_crc32c(length)) + data
            + struct.pack("<I", masked_crc32c(data)))


def write_records(path: str | os.PathLike, records: Iterable[bytes]) -> None:
    with open(path, "wb") as f:
        for data in records:
            f.write(encode_record(data))
