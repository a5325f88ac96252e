"""Decode one image file to RGB uint8 and resize it straight to the model's input size.

PIL detects the format from the content (a PNG saved as ``.jpg`` loads fine) and converts
any mode (L, CMYK, P, RGBA, ...) to RGB. High-range grayscale modes are scaled by their real
range first (PIL's own conversion clips them: a 16-bit gradient comes out almost all white, a
0..1 float image all black): ``I;16*`` by 65535, ``I`` by the declared bit depth, ``F`` as 0..1
(values outside are refused). Resizing is bicubic to ``size x size``
with no crop and no augmentation, as in the VTAB-1K recipe (torchvision's ``Resize`` on
a PIL image does the same PIL call).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

# Errors PIL raises for unreadable files; anything else is a bug and keeps its traceback.
DECODE_ERRORS = (OSError, UnidentifiedImageError, SyntaxError, ValueError, Image.DecompressionBombError)


class ImageDecodeError(Exception):
    """The file is missing, empty, truncated or not an image; the message says which."""


def file_problem(path: Path) -> str | None:
    """Why ``path`` cannot be an image without opening it (missing, unreadable, empty), or None."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return "image file does not exist"
    except OSError as err:
        return f"cannot read image file ({err.strerror})"
    if stat.S_ISDIR(info.st_mode):
        return "is a folder, not an image file"
    if not stat.S_ISREG(info.st_mode):
        return "is not a regular file"
    return "image file is empty (0 bytes)" if info.st_size == 0 else None


def _declared_bits(img: Image.Image) -> int | None:
    """Bits per sample the file declares for an ``I`` image (PNG: 16; TIFF: its tag), if known."""
    if img.format == "PNG":
        return 16  # PNG grayscale is at most 16 bits; PIL opens some 16-bit files as mode I
    tags = getattr(img, "tag_v2", None)
    bits = tags.get(258) if tags is not None else None  # TIFF BitsPerSample
    if isinstance(bits, tuple):
        bits = bits[0] if bits else None
    return int(bits) if bits else None


def _high_range_to_l(img: Image.Image) -> Image.Image:
    """An ``I;16*``, ``I`` or ``F`` image as 8-bit ``L``, scaled by the mode's real range."""
    values = np.asarray(img)
    if img.mode == "F":
        if values.size and not (np.isfinite(values).all() and values.min() >= 0.0 and values.max() <= 1.0):
            raise ValueError(f"float image with values in [{values.min():g}, {values.max():g}]; "
                             "only 0..1 is understood (save it as 8-bit)")
        top = 1.0
    elif img.mode.startswith("I;16"):
        bits = _declared_bits(img) if img.format != "PNG" else 16  # e.g. a 12-bit TIFF stored in 16
        bits = bits if bits and 8 < bits < 16 and (values.size == 0 or values.max() < 2**bits) else 16
        top = float(2**bits - 1)
    else:  # "I": 32-bit signed storage of whatever the file declared
        bits = _declared_bits(img)
        if bits is None or bits > 16:
            bits = 16 if values.size == 0 or (values.min() >= 0 and values.max() <= 65535) else None
        if bits is None or (values.size and values.min() < 0):
            raise ValueError(f"integer image with values in [{values.min()}, {values.max()}] and no "
                             "declared bit depth up to 16; save it as 8-bit")
        top = float(2**bits - 1)
    scaled = np.rint(values.astype(np.float64) * (255.0 / top))
    return Image.fromarray(np.clip(scaled, 0, 255).astype(np.uint8))  # 2-D uint8: mode L


def is_high_range(img: Image.Image) -> bool:
    """A mode PIL's own conversion to 8 bits would clip (16-bit, 32-bit integer, float)."""
    return img.mode in ("I", "F") or img.mode.startswith("I;16")


def to_rgb(img: Image.Image) -> Image.Image:
    """A loaded image of any mode as RGB: high-range grayscale scaled by its real range, a
    palette with transparency through RGBA. The one conversion of both readers (files, TFDS)."""
    if is_high_range(img):
        return _high_range_to_l(img).convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")  # PIL warns when such a palette goes straight to RGB
    return img if img.mode == "RGB" else img.convert("RGB")


def _open_rgb(path: Path) -> Image.Image:
    problem = file_problem(path)
    if problem:
        raise ImageDecodeError(problem)
    try:
        with Image.open(path) as img:
            img.load()  # a truncated file fails here (PIL does not pad truncated data)
            rgb = to_rgb(img)
            return rgb.copy() if rgb is img else rgb  # usable after the file is closed
    except DECODE_ERRORS as err:
        raise ImageDecodeError(f"cannot decode image ({type(err).__name__}: {err})") from None


def decode_image(path: str | Path, size: int) -> np.ndarray:
    """Return the image at ``path`` as a ``(3, size, size)`` uint8 array (RGB, bicubic resize).

    Raises :class:`ImageDecodeError` for a missing, empty, truncated or corrupt file.
    """
    img = _open_rgb(Path(path))
    if img.size != (size, size):
        img = img.resize((size, size), Image.BICUBIC)
    return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)


def check_image(path: str | Path, quick: bool = False) -> str | None:
    """Why ``path`` is unreadable, or None: fully decoded, or with ``quick`` only checked to
    exist and be non-empty."""
    if quick:
        return file_problem(Path(path))
    try:
        _open_rgb(Path(path))
    except ImageDecodeError as err:
        return str(err)
    return None
