"""VTAB-1K's 19 tasks as TFDS builders, split strings and label functions.

Facts from google-research/task_adaptation (data/*.py, the version with train800/val200):
split boundaries are computed from dataset_info counts exactly as there (``P * n // 100``),
so the pinned versions (those the published VTAB-1K numbers were made from) give the same
images. Label rules:

- clevr count: ``len(objects) - 3``; clevr dist: ``objects/pixel_coords[:, 2]`` (the depth
  coordinate of the *pixel* coords, not ``3d_coords``), closest object, bucketed by
  thresholds [0, 8, 8.5, 9, 9.5, 10, 100]: label = the last threshold strictly below it.
- kitti closest_vehicle_distance: z (``objects/location[:, 2]``) of objects whose type index
  is < 3 (Car, Van, Truck), plus a sentinel 1000; min; thresholds [-100, 8, 20, 999]; so "no
  vehicle" is class 3.
- dsprites: ``floor(label_x_position / (32 / 16))``, ``floor(label_orientation / (40 / 16))``
  in float32; image (0/1 valued) tiled to 3 channels and multiplied by 255.
- smallnorb: ``image`` (first camera) tiled to RGB; ``label_azimuth`` / ``label_elevation``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .builders import BuiltDataset


class LabelError(ValueError):
    """A record whose label cannot be computed; the reader adds file and record."""


@dataclass(frozen=True)
class TfdsTask:
    task: str
    builder: str
    config: str | None
    version: str  # the pinned TFDS version
    splits: Callable[[BuiltDataset], dict[str, str]]
    label: Callable[[dict], int]
    image: str = "rgb"  # "rgb" | "gray" (tile) | "binary" (0/1 -> 0/255, tile)

    @property
    def folder(self) -> str:
        return f"{self.builder}/{self.config}" if self.config else self.builder


def _n(ds: BuiltDataset, split: str) -> int:
    return ds.split(split).num_examples


def _holdout(percent: int, test: str = "test"):
    """train800 from the start of train, val200 at the start of VTAB's val part of train."""
    def splits(ds: BuiltDataset) -> dict[str, str]:
        cut = percent * _n(ds, "train") // 100
        return {"train800": "train[:800]", "val200": f"train[{cut}:{cut + 200}]", "test": test}
    return splits


def _three_way(train_percent: int, val_percent: int):
    """Only a train split in TFDS: train / val / test carved out of it (eurosat, resisc45, dsprites)."""
    def splits(ds: BuiltDataset) -> dict[str, str]:
        n = _n(ds, "train")
        cut, val = train_percent * n // 100, val_percent * n // 100
        return {"train800": "train[:800]", "val200": f"train[{cut}:{cut + 200}]",
                "test": f"train[{cut + val}:]"}
    return splits


def _official(ds: BuiltDataset) -> dict[str, str]:
    return {"train800": "train[:800]", "val200": "validation[:200]", "test": "test"}


def _smallnorb(ds: BuiltDataset) -> dict[str, str]:
    return {"train800": "train[:800]", "val200": "test[:200]", "test": "test[50%:]"}


def feature(ex: dict, name: str, kind: str):
    """``ex[name]`` as bytes list / float32 / int64 array, or LabelError."""
    value = ex.get(name)
    if value is None:
        have = ", ".join(sorted(ex)) or "none"
        raise LabelError(f"missing feature {name!r} (features present: {have})")
    want = {"bytes": list, "float": np.ndarray, "int": np.ndarray}[kind]
    ok = isinstance(value, want) and (kind == "bytes" or value.dtype.kind == kind[0])
    if not ok:
        raise LabelError(f"feature {name!r} is not a {kind} list")
    return value


def scalar(ex: dict, name: str) -> int:
    value = feature(ex, name, "int")
    if value.shape != (1,):
        raise LabelError(f"feature {name!r} has {value.size} values, expected 1")
    return int(value[0])


def _bucket(value: np.float32, thresholds: list[float]) -> int:
    """Index of the last threshold strictly below ``value`` (VTAB: max(where(thr - v < 0)))."""
    below = int(np.count_nonzero(np.array(thresholds, np.float32) < value))
    if below == 0:
        raise LabelError(f"value {float(value)} is not above the lowest threshold {thresholds[0]}")
    return below - 1


def _class_label(name: str) -> Callable[[dict], int]:
    return lambda ex: scalar(ex, name)


def clevr_count(ex: dict) -> int:
    return len(feature(ex, "objects/size", "int")) - 3


def clevr_dist(ex: dict) -> int:
    coords = feature(ex, "objects/pixel_coords", "float")
    if coords.size == 0 or coords.size % 3:
        raise LabelError(f"objects/pixel_coords has {coords.size} values, expected 3 per object")
    return _bucket(coords.reshape(-1, 3)[:, 2].min(), [0.0, 8.0, 8.5, 9.0, 9.5, 10.0, 100.0])


def kitti_vehicle_distance(ex: dict) -> int:
    kinds = feature(ex, "objects/type", "int")
    loc = feature(ex, "objects/location", "float")
    if loc.size != 3 * kinds.size:
        raise LabelError(f"objects/location has {loc.size} values for {kinds.size} objects")
    z = loc.reshape(-1, 3)[kinds < 3, 2]  # type 0, 1, 2 = Car, Van, Truck
    closest = np.float32(min(z.min(), 1000.0)) if z.size else np.float32(1000.0)
    return _bucket(closest, [-100.0, 8.0, 20.0, 999.0])


def _binned(name: str, original: int, classes: int) -> Callable[[dict], int]:
    factor = np.float32(original / classes)

    def label(ex: dict) -> int:
        value = scalar(ex, name)
        if not 0 <= value < original:
            raise LabelError(f"{name} = {value}, expected 0..{original - 1}")
        return int(np.floor(np.float32(value) / factor))
    return label


_LABEL = _class_label("label")
_TABLE = [
    ("cifar", "cifar100", None, "3.0.2", _holdout(90), _LABEL, "rgb"),
    ("caltech101", "caltech101", None, "3.0.1", _holdout(90), _LABEL, "rgb"),
    ("dtd", "dtd", None, "3.0.1", _official, _LABEL, "rgb"),
    ("oxford_flowers102", "oxford_flowers102", None, "2.1.1", _official, _LABEL, "rgb"),
    ("oxford_iiit_pet", "oxford_iiit_pet", None, "3.2.0", _holdout(80), _LABEL, "rgb"),
    ("svhn", "svhn_cropped", None, "3.0.0", _holdout(90), _LABEL, "rgb"),
    ("sun397", "sun397", "tfds", "4.0.0", _official, _LABEL, "rgb"),
    ("patch_camelyon", "patch_camelyon", None, "2.0.0", _official, _LABEL, "rgb"),
    ("eurosat", "eurosat", "rgb", "2.0.0", _three_way(60, 20), _LABEL, "rgb"),
    ("resisc45", "resisc45", None, "3.0.0", _three_way(60, 20), _LABEL, "rgb"),
    ("diabetic_retinopathy", "diabetic_retinopathy_detection", "btgraham-300", "3.0.0",
     _official, _LABEL, "rgb"),
    ("clevr_count", "clevr", None, "3.1.0", _holdout(90, test="validation"), clevr_count, "rgb"),
    ("clevr_dist", "clevr", None, "3.1.0", _holdout(90, test="validation"), clevr_dist, "rgb"),
    ("dmlab", "dmlab", None, "2.0.1", _official, _LABEL, "rgb"),
    ("kitti", "kitti", None, "3.2.0", _official, kitti_vehicle_distance, "rgb"),
    ("dsprites_loc", "dsprites", None, "2.0.0", _three_way(80, 10),
     _binned("label_x_position", 32, 16), "binary"),
    ("dsprites_ori", "dsprites", None, "2.0.0", _three_way(80, 10),
     _binned("label_orientation", 40, 16), "binary"),
    ("smallnorb_azi", "smallnorb", None, "2.0.0", _smallnorb, _class_label("label_azimuth"), "gray"),
    ("smallnorb_ele", "smallnorb", None, "2.0.0", _smallnorb, _class_label("label_elevation"), "gray"),
]
TASKS: dict[str, TfdsTask] = {row[0]: TfdsTask(*row) for row in _TABLE}
