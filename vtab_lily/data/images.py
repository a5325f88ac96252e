"""Decode one image file to RGB uint8 and resize it straight to the model's input size.

PIL detects the format from the content (a PNG saved as ``.jpg`` loads fine) and converts
any mode (L, CMYK, P, RGBA, I;16, ...) to RGB. Resizing is bicubic to ``size x size``
with no crop and no augmentation, as in the VTAB-1K recipe (torchvision's ``Resize`` on
a PIL image does the same PIL call).
"""

from __future__ import annotations

import os
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
        size = os.path.getsize(path)
    except FileNotFoundError:
        return "image file does not exist"
    except OSError as err:
        return f"cannot read image file ({err.strerror})"
    return "image file is empty (0 bytes)" if size == 0 else None


def _open_rgb(path: Path) -> Image.Image:
    problem = file_problem(path)
    if problem:
        raise ImageDecodeError(problem)
    try:
        with Image.open(path) as img:
            img.load()  # a truncated file fails here (PIL does not pad truncated data)
            if img.mode == "P" and "transparency" in img.info:
                img = img.convert("RGBA")  # PIL warns when such a palette goes straight to RGB
            return img.convert("RGB")
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
