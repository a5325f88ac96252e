"""Generate the TFDS fixtures in this folder with the real libraries (run once; not in CI).

    python -m venv /tmp/tfdsvenv
    /tmp/tfdsvenv/bin/pip install tensorflow-datasets tensorflow-cpu   # never project deps
    /tmp/tfdsvenv/bin/python tests/data/tfds/make_fixtures.py

Writes (tensorflow-datasets 4.9.10, tensorflow-cpu 2.21.0 when last run):
- slicing.json: split strings -> absolute range and (shard, skip, take) file instructions,
  from ``tensorflow_datasets.core.splits`` (importable without TensorFlow).
- read_order.json: the order ``builder.as_dataset(split, shuffle_files=False)`` really
  yields records in, for shard layouts where tf.data's interleave matters.
- built/: tiny datasets written by TFDS itself (its own FeaturesDict of the real builders
  kitti, clevr, dsprites, smallnorb, cifar100, dmlab; TF's TFRecordWriter; DatasetInfo's
  dataset_info.json), and built/expected.json: what TFDS + TF read back (image sha256 of the
  VTAB-preprocessed pixels, label by VTAB's rule written with TF ops, file/record order).

A rerun rewrites the shard bytes (protobuf does not fix the order of a map's entries when
serializing) but produces identical JSON; either copy passes tests/test_tfds_fixtures.py.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from tensorflow_datasets.core import dataset_info, naming, splits
from tensorflow_datasets.core import features as F
from tensorflow_datasets.core.utils import version as V

OUT = Path(__file__).resolve().parent

SLICING_CASES = [
    ([300, 300, 400], ["train", "train[:800]", "train[250:650]", "train[300:600]", "train[-100:]",
                       "train[:-950]", "train[50%:]", "train[:33%]", "train[33%:67%]",
                       "train[-10%:]", "train[12.5%:87.5%]", "train[1shard:]", "train[:2shard]",
                       "train[0:0]", "train[999:]", "train[1000:]", "train[500:400]",
                       "train[1001:]", "train[:1001]", "train[-1001:]",
                       "train[:100]+train[950:]"]),
    ([0, 5, 0, 7], ["train", "train[3:9]", "train[50%:]", "train[5:5]", "train[:5]"]),
    ([10], ["train[25%:]", "train[35%:]", "train[:15%]", "train[5%:]", "train[45%:55%]"]),
    ([6075, 6075, 6075, 6075], ["train[:200]", "train[50%:]", "train[:50%]", "train[6000:6200]"]),
    ([73728] * 10, ["train[:800]", "train[589824:590024]", "train[663552:]", "train[80%:90%]"]),
    ([16667, 16667, 16666], ["train[:800]", "train[45000:45200]", "train[16600:16800]",
                             "train[:800]+train[45000:45200]"]),
    ([7] * 3 + [3], ["train[33%:]", "train[-33%:]", "train[:-1shard]"]),
]

ORDER_CASES = [
    ([40, 0, 37, 50, 3], ["train", "train[10:120]", "train[39:41]"]),
    ([20] * 20, ["train", "train[5:395]", "train[:30]+train[100:130]"]),
    ([17, 16, 33, 16, 1], ["train", "train[1:]", "train[16:]"]),
    ([5] * 18, ["train", "train[50%:]"]),
]


def _template(root: Path, name: str, split: str):
    return naming.ShardedFileTemplate(data_dir=str(root), dataset_name=name, split=split,
                                      filetype_suffix="tfrecord")


def slicing_fixture() -> list[dict]:
    cases = []
    for lengths, specs in SLICING_CASES:
        info = splits.SplitInfo(name="train", shard_lengths=lengths, num_bytes=0,
                                filename_template=_template(Path("/d"), "x", "train"))
        for spec in specs:
            case = {"shard_lengths": lengths, "spec": spec}
            try:
                fis = splits._make_file_instructions([info], spec)
            except ValueError as err:
                case["error"] = str(err)
            else:
                names = [str(p) for p in info.filepaths]
                case["file_instructions"] = [[names.index(fi.filename), fi.skip, fi.take]
                                             for fi in fis]
                absolute = splits.AbstractSplit.from_spec(spec).to_absolute({"train": info})
                case["absolute"] = [[a.from_ or 0, lengths and sum(lengths) if a.to is None
                                     else a.to] for a in absolute]
            cases.append(case)
    return cases


def write_dataset(root: Path, name: str, version: str, features, split_records: dict,
                  config: str | None = None) -> Path:
    """Write shards of serialized examples with TF, and TFDS's own dataset_info files."""
    folder = root / name / (config or "") / version
    folder.mkdir(parents=True)
    serializer = tfds.core.example_serializer.ExampleSerializer(features.get_serialized_info())
    split_infos = []
    for split, shards in split_records.items():
        template = _template(folder, name, split)
        for i, records in enumerate(shards):
            path = template.sharded_filepath(shard_index=i, num_shards=len(shards))
            with tf.io.TFRecordWriter(str(path)) as w:
                for ex in records:
                    w.write(serializer.serialize_example(features.encode_example(ex)))
        split_infos.append(splits.SplitInfo(name=split, shard_lengths=[len(s) for s in shards],
                                            num_bytes=0, filename_template=template))
    ident = dataset_info.DatasetIdentity(name=name, version=V.Version(version), data_dir=str(folder),
                                         module_name="fixture", config_name=config)
    info = dataset_info.DatasetInfo(builder=ident, features=features)
    info.set_splits(splits.SplitDict(split_infos))
    info.write_to_directory(str(folder))
    return folder


def read_order_fixture(tmp: Path) -> list[dict]:
    features = F.FeaturesDict({"idx": F.Tensor(shape=(), dtype=np.int64)})
    cases = []
    for k, (lengths, specs) in enumerate(ORDER_CASES):
        start = np.cumsum([0] + lengths)
        shards = [[{"idx": int(start[i] + j)} for j in range(n)] for i, n in enumerate(lengths)]
        folder = write_dataset(tmp / f"order{k}", "order", "1.0.0", features, {"train": shards})
        builder = tfds.builder_from_directory(str(folder))
        for spec in specs:
            ds = builder.as_dataset(split=spec, shuffle_files=False)
            cases.append({"shard_lengths": lengths, "spec": spec,
                          "order": [int(x["idx"]) for x in tfds.as_numpy(ds)]})
    return cases


def _pattern(rng, shape, levels=4):
    """Low-entropy pixels (small PNGs) that still differ between records."""
    return (rng.integers(0, levels, size=shape) * (255 // (levels - 1))).astype(np.uint8)


def built_fixture(root: Path) -> dict:
    rng = np.random.default_rng(14)
    expected = {}

    def objects_kitti(n):
        return {"type": rng.integers(0, 8, n), "truncated": rng.random(n, np.float32),
                "occluded": rng.integers(0, 4, n), "alpha": rng.random(n, np.float32),
                "bbox": [tfds.features.BBox(0.1, 0.1, 0.5, 0.5)] * n,
                "dimensions": rng.random((n, 3), np.float32),
                "location": (rng.random((n, 3), np.float32) * 40 - 5).astype(np.float32),
                "rotation_y": rng.random(n, np.float32)}

    def objects_clevr(n):
        return {"color": rng.integers(0, 8, n), "material": rng.integers(0, 2, n),
                "shape": rng.integers(0, 3, n), "size": rng.integers(0, 2, n),
                "rotation": rng.random(n, np.float32), "3d_coords": rng.random((n, 3), np.float32),
                "pixel_coords": (rng.random((n, 3), np.float32) * 4 + 7.5).astype(np.float32)}

    makers = {
        "kitti": ("3.2.0", None, lambda i: {
            "image": _pattern(rng, (6, 9, 3)), "image/file_name": f"{i:06d}.png",
            "objects": objects_kitti(int(rng.integers(0, 5)))}),
        "clevr": ("3.1.0", None, lambda i: {
            "image": _pattern(rng, (5, 8, 3)), "file_name": f"CLEVR_{i:06d}.png",
            "objects": objects_clevr(int(rng.integers(3, 11))),
            "question_answer": {"question": ["q?"], "answer": ["a"]}}),
        "dsprites": ("2.0.0", None, lambda i: {
            "image": np.kron(rng.integers(0, 2, (8, 8, 1)), np.ones((8, 8, 1))).astype(np.uint8),
            **{f"label_{k}": int(rng.integers(0, m)) for k, m in
               [("shape", 3), ("scale", 6), ("orientation", 40), ("x_position", 32),
                ("y_position", 32)]},
            **{f"value_{k}": np.float32(rng.random()) for k in
               ["shape", "scale", "orientation", "x_position", "y_position"]}}),
        "smallnorb": ("2.0.0", None, lambda i: {
            "image": np.kron(_pattern(rng, (12, 12, 1)), np.ones((8, 8, 1), np.uint8)),
            "image2": np.kron(_pattern(rng, (12, 12, 1)), np.ones((8, 8, 1), np.uint8)),
            "label_category": int(rng.integers(0, 5)), "instance": int(rng.integers(0, 10)),
            "label_elevation": int(rng.integers(0, 9)), "label_azimuth": int(rng.integers(0, 18)),
            "label_lighting": int(rng.integers(0, 6))}),
        "cifar100": ("3.0.2", None, lambda i: {
            "id": f"train_{i:05d}", "image": _pattern(rng, (32, 32, 3)),
            "label": int(rng.integers(0, 100)), "coarse_label": int(rng.integers(0, 20))}),
        "dmlab": ("2.0.1", None, lambda i: {
            "image": np.kron(_pattern(rng, (9, 12, 3), 8), np.ones((40, 40, 1), np.uint8)),
            "filename": f"{i}.png", "label": int(rng.integers(0, 6))}),
    }
    small = {"train": [2, 0, 3], "test": [2, 1]}, ["train", "train[1:4]", "test[50%:]", "test[:2]"]
    big = {"train": [7, 0, 9, 4], "test": [6, 5]}, ["train", "train[3:18]", "test[50%:]", "test[:4]"]
    for name, (version, config, make) in makers.items():
        layouts, specs = small if name == "dmlab" else big
        features = tfds.builder(f"{name}:{version}", data_dir=str(root / "_unused")).info.features
        counter = iter(range(10**6))
        records = {split: [[make(next(counter)) for _ in range(n)] for n in lengths]
                   for split, lengths in layouts.items()}
        folder = write_dataset(root, name, version, features, records, config)
        builder = tfds.builder_from_directory(str(folder))
        expected[name] = {}
        for spec in specs:
            ds = builder.as_dataset(split=spec, shuffle_files=False)
            expected[name][spec] = [_vtab_view(name, ex) for ex in ds]
    shutil.rmtree(root / "_unused", ignore_errors=True)
    return expected


def _bucket(value, thresholds):
    thrs = np.array(thresholds)
    return int(tf.reduce_max(tf.where((thrs - value) < 0)))  # as task_adaptation writes it


def _vtab_view(name: str, ex) -> dict:
    """VTAB's preprocessing of one example, in TF ops; pixels summarised by sha256."""
    image = ex["image"]
    out = {}
    if name == "kitti":
        vehicles = tf.where(ex["objects"]["type"] < 3)
        z = tf.gather(params=ex["objects"]["location"][:, 2], indices=vehicles)
        z = tf.concat([z, tf.constant([[1000.0]])], axis=0)
        out["closest_vehicle_distance"] = _bucket(tf.reduce_min(z), [-100.0, 8.0, 20.0, 999.0])
    elif name == "clevr":
        out["count_all"] = int(tf.size(ex["objects"]["size"]) - 3)
        out["closest_object_distance"] = _bucket(
            tf.reduce_min(ex["objects"]["pixel_coords"][:, 2]), [0.0, 8.0, 8.5, 9.0, 9.5, 10.0, 100.0])
    elif name == "dsprites":
        image = tf.tile(image, [1, 1, 3]) * 255
        for attr, n in [("label_x_position", 32), ("label_orientation", 40)]:
            out[attr] = int(tf.math.floordiv(tf.cast(ex[attr], tf.float32), float(n) / 16))
    elif name == "smallnorb":
        image = tf.tile(image, [1, 1, 3])
        out["label_azimuth"] = int(ex["label_azimuth"])
        out["label_elevation"] = int(ex["label_elevation"])
    else:
        out["label"] = int(ex["label"])
    pixels = np.ascontiguousarray(image.numpy().astype(np.uint8))
    out["shape"] = list(pixels.shape)
    out["sha256"] = hashlib.sha256(pixels.tobytes()).hexdigest()
    return out


def main() -> None:
    (OUT / "slicing.json").write_text(json.dumps(slicing_fixture(), indent=0) + "\n")
    tmp = OUT / "_tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    (OUT / "read_order.json").write_text(json.dumps(read_order_fixture(tmp), indent=0) + "\n")
    shutil.rmtree(tmp)
    built = OUT / "built"
    shutil.rmtree(built, ignore_errors=True)
    expected = built_fixture(built)
    (built / "expected.json").write_text(json.dumps(expected, indent=0, sort_keys=True) + "\n")
    versions = {"tensorflow": tf.__version__, "tensorflow_datasets": tfds.__version__}
    (OUT / "versions.json").write_text(json.dumps(versions) + "\n")


if __name__ == "__main__":
    main()
