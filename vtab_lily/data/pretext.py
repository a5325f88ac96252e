"""The pretext set the demo's tiny ViT is pre-trained on (numpy only; the training is in
``vtab_lily.backbones.demo_weights``).

Real PEFT adapts a backbone that was pre-trained on other data; the demo's backbone is
pre-trained the same way, briefly, on generated textures that share nothing with the demo tasks:
six texture families (stripes, checkerboard, dots, waves, crosshatch, blocky noise) under a
random angle, period, phase and pair of colours, labelled by family. The demo tasks (one
object's hue, clusters of nuclei, a bar's angle, a count of discs) draw none of these images
and none of these labels. Deterministic: seeded numpy, no files.
"""

from __future__ import annotations

import colorsys

import numpy as np

SIZE = 32
FAMILIES = ("stripes", "checkerboard", "dots", "waves", "crosshatch", "blocks")
VERSION = 1  # bump when the drawing or the pre-training recipe changes: it names the weights file
# The file the demo backbone pre-trained on this set is cached as (vtab_lily.backbones.demo_weights
# makes it); its name is what a run records as its ``pretrained`` weights.
WEIGHTS_FILE = f"vit-tiny-test-textures-v{VERSION}.safetensors"

_YY, _XX = np.mgrid[0:SIZE, 0:SIZE] + 0.5  # pixel centres


def _pattern(rng: np.random.Generator, family: str) -> np.ndarray:
    """A (SIZE, SIZE) pattern in 0..1 of one family, at a random angle, period and phase."""
    angle, period = rng.uniform(0.0, np.pi), rng.uniform(4.0, 12.0)
    u = _XX * np.cos(angle) + _YY * np.sin(angle) + rng.uniform(0.0, period)
    v = -_XX * np.sin(angle) + _YY * np.cos(angle) + rng.uniform(0.0, period)
    w = 2 * np.pi / period
    if family == "stripes":
        t = np.sin(w * u)
    elif family == "checkerboard":
        t = np.sin(w * u) * np.sin(w * v)
    elif family == "dots":
        t = np.cos(w * u) + np.cos(w * v)
    elif family == "waves":
        t = np.sin(w * u + 1.5 * np.sin(w * v / 2))
    elif family == "crosshatch":
        t = np.maximum(np.sin(w * u), np.sin(w * v))
    else:  # blocks: 4-pixel cells of random brightness, at a random offset
        cells = rng.normal(0.0, 1.0, (SIZE // 4 + 2, SIZE // 4 + 2))
        dy, dx = rng.integers(0, 4, 2)
        t = np.kron(cells, np.ones((4, 4)))[dy:dy + SIZE, dx:dx + SIZE]
    return (t - t.min()) / (t.max() - t.min() + 1e-9)


def draw_texture(rng: np.random.Generator, label: int) -> np.ndarray:
    """One (SIZE, SIZE, 3) image in 0..1: a texture of ``FAMILIES[label]`` between a light and a
    dark colour of random hue, with a little pixel noise."""
    t = _pattern(rng, FAMILIES[label])[..., None]
    light = np.array(colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(0.0, 1.0), rng.uniform(0.5, 1.0)))
    dark = np.array(colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(0.0, 1.0), rng.uniform(0.0, 0.5)))
    return np.clip(t * light + (1 - t) * dark + rng.normal(0.0, 0.03, (SIZE, SIZE, 3)), 0.0, 1.0)


def pretext_set(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images (uint8, (n, 3, SIZE, SIZE)) and their labels (int64, balanced), the same for
    the same ``(n, seed)``."""
    rng = np.random.default_rng([VERSION, seed])
    labels = np.arange(n) % len(FAMILIES)
    images = np.stack([np.rint(draw_texture(rng, int(label)) * 255.0) for label in labels]).astype(np.uint8)
    return images.transpose(0, 3, 1, 2).copy(), labels.astype(np.int64)
