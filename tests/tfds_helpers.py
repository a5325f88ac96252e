"""Write small built-TFDS folders for the tests: dataset_info.json in TFDS's JSON style and
multi-shard TFRecord files of tf.train.Example records (framing + masked crc32c + protobuf
written by vtab_lily.data.tfds; tests/data/tfds/built holds folders written by real TFDS)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from vtab_lily.data.tfds.example import encode_example
from vtab_lily.data.tfds.tfrecord import write_records


def png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def id_pixels(split_code: int, index: int, channels: int = 3) -> np.ndarray:
    """A 2x3 image that spells out (split, index): pixels are compared exactly after reading."""
    px = np.zeros((2, 3, channels), np.uint8)
    px[0, 0] = index % 256
    px[0, 1] = index // 256
    px[1, 0] = split_code
    px[1, 2] = 7
    return px[:, :, 0] if channels == 1 else px


def write_builder(data_dir: Path, name: str, version: str, shards: dict[str, list[int]],
                  make: Callable[[str, int], dict], config: str | None = None,
                  info_extra: dict | None = None) -> Path:
    """``shards = {"train": [700, 1150, 150], ...}``; ``make(split, i)`` -> Example features."""
    folder = data_dir / name / (config or "") / version
    folder.mkdir(parents=True, exist_ok=True)
    splits = []
    for split, lengths in shards.items():
        i = 0
        for s, n in enumerate(lengths):
            path = folder / f"{name}-{split}.tfrecord-{s:05d}-of-{len(lengths):05d}"
            records = []
            for _ in range(n):
                records.append(encode_example(make(split, i)))
                i += 1
            write_records(path, records)
        splits.append({"filepathTemplate": "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}",
                       "name": split, "numBytes": "0", "shardLengths": [str(n) for n in lengths]})
    info = {"moduleName": "tests", "name": name, "splits": splits, "version": version,
            **(info_extra or {})}
    (folder / "dataset_info.json").write_text(json.dumps(info, indent=2))
    return folder
