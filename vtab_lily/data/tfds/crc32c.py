"""CRC-32C (Castagnoli) and TFRecord's masked form, without any compiled dependency.

TFRecord frames every length and every payload with ``masked_crc32c``. Reading a split means
checking gigabytes, so the pure version is vectorised with numpy: the buffer is cut into K
equal chunks whose CRC registers advance together (one numpy step per byte column), and the K
partial registers are then merged pairwise. Merging works because the register update is
linear over GF(2): ``raw(a || b) = shift_len(b)(raw(a)) ^ raw(b)`` from a zero register, where
``shift_n`` (feeding n zero bytes) is itself a linear map, kept as four 256-entry tables.

When the optional ``crc32c`` package (a small C extension on PyPI) is importable it is used
instead; it is never required.
"""

from __future__ import annotations

import numpy as np

_POLY = 0x82F63B78  # CRC-32C, bit-reflected
_MASK_DELTA = 0xA282EAD8


def _byte_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ _POLY if crc & 1 else crc >> 1
        table.append(crc)
    return table


_TABLE = _byte_table()
_TABLE_NP = np.array(_TABLE, dtype=np.uint32)


def _raw_small(data: bytes | memoryview, crc: int) -> int:
    """Advance register ``crc`` over ``data`` one byte at a time (short inputs)."""
    table = _TABLE
    for byte in bytes(data):
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc


class _Linear:
    """A GF(2)-linear map on 32-bit registers, applied with four byte tables."""

    def __init__(self, basis: list[int]):  # basis[j] = image of the register 1 << j
        self.basis = basis
        self.tables = []
        for b in range(4):
            table = [0] * 256
            for v in range(1, 256):
                low = v & -v
                table[v] = table[v ^ low] ^ basis[8 * b + low.bit_length() - 1]
            self.tables.append(table)
        self.np_tables = np.array(self.tables, dtype=np.uint32)

    def __call__(self, x: int) -> int:
        t = self.tables
        return t[0][x & 0xFF] ^ t[1][(x >> 8) & 0xFF] ^ t[2][(x >> 16) & 0xFF] ^ t[3][x >> 24]

    def apply_np(self, x: np.ndarray) -> np.ndarray:
        t = self.np_tables
        return t[0][x & 0xFF] ^ t[1][(x >> 8) & 0xFF] ^ t[2][(x >> 16) & 0xFF] ^ t[3][x >> 24]

    def then(self, other: "_Linear") -> "_Linear":
        """The map x -> other(self(x))."""
        return _Linear([other(v) for v in self.basis])


# _SHIFTS[k] feeds 2**k zero bytes into the register.
_SHIFTS: list[_Linear] = [_Linear([_raw_small(b"\0", 1 << j) for j in range(32)])]


def _shift_pow2(k: int) -> _Linear:
    while len(_SHIFTS) <= k:
        _SHIFTS.append(_SHIFTS[-1].then(_SHIFTS[-1]))
    return _SHIFTS[k]


def _shift(crc: int, n: int) -> int:
    """Register ``crc`` after ``n`` zero bytes."""
    k = 0
    while n:
        if n & 1:
            crc = _shift_pow2(k)(crc)
        n >>= 1
        k += 1
    return crc


_WORD_TABLES: tuple[np.ndarray, np.ndarray] | None = None


def _word_tables() -> tuple[np.ndarray, np.ndarray]:
    """Four zero bytes applied to the low / high 16 bits of a register (2 x 65536 entries)."""
    global _WORD_TABLES
    if _WORD_TABLES is None:
        t = _shift_pow2(2).np_tables  # 4 zero bytes, per byte of the register
        low = (t[1][:, None] ^ t[0][None, :]).ravel()  # index = hi << 8 | lo
        high = (t[3][:, None] ^ t[2][None, :]).ravel()
        _WORD_TABLES = (low, high)
    return _WORD_TABLES


def _raw_numpy(data: bytes | memoryview) -> int:
    """Register after ``data`` starting from zero, chunks advanced in parallel.

    Each step feeds 4 bytes to every lane: ``reg = shift4(reg ^ word)``, shift4 being linear.
    """
    n = len(data)
    chunk = max(16, 1 << max(0, (-(-n // 2048) - 1).bit_length()))  # power of two >= n/2048
    lanes = 1 << max(0, (-(-n // chunk) - 1).bit_length())
    padded = np.zeros(lanes * chunk, dtype=np.uint8)
    # Leading zero bytes leave a zero register unchanged, so pad on the left.
    padded[lanes * chunk - n:] = np.frombuffer(data, dtype=np.uint8)
    words = np.ascontiguousarray(padded.view("<u4").reshape(lanes, chunk // 4).T)
    low, high = _word_tables()
    reg = np.zeros(lanes, dtype=np.uint32)
    for word in words:
        reg ^= word
        reg = low[reg & 0xFFFF] ^ high[reg >> 16]
    level = chunk.bit_length() - 1
    while len(reg) > 1:
        reg = _shift_pow2(level).apply_np(reg[0::2]) ^ reg[1::2]
        level += 1
    return int(reg[0])


def crc32c_pure(data: bytes | memoryview, crc: int = 0) -> int:
    """CRC-32C of ``data``, continuing from a previous ``crc`` (0 to start)."""
    start = crc ^ 0xFFFFFFFF
    if len(data) < 512:
        return _raw_small(data, start) ^ 0xFFFFFFFF
    return _shift(start, len(data)) ^ _raw_numpy(data) ^ 0xFFFFFFFF


try:  # optional C implementation; same function, much faster
    from crc32c import crc32c as _crc32c_c  # type: ignore[import-not-found]
except Exception:  # noqa: BLE001 - any import problem means "not available"
    _crc32c_c = None


def crc32c(data: bytes | memoryview, crc: int = 0) -> int:
    if _crc32c_c is not None:
        return _crc32c_c(bytes(data), crc) if crc else _crc32c_c(bytes(data))
    return crc32c_pure(data, crc)


def masked_crc32c(data: bytes | memoryview) -> int:
    """TFRecord's mask: rotate right by 15 and add a constant (mod 2**32)."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF
