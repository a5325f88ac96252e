"""vtab_task_splits on TFDS folders written by the test: membership, order, labels and pixels
of train800 / val200 / test for cifar, clevr (count, dist), kitti, dsprites (loc, ori),
smallnorb (azi, ele) and eurosat (a config folder); slices cross shard boundaries."""

from pathlib import Path

import numpy as np
import pytest

from tfds_helpers import id_pixels, png, write_builder
from vtab_lily.data.tfds import vtab, vtab_task_splits
from vtab_lily.data.tfds.builders import BuiltDataset, SplitInfo
from vtab_lily.data.tfds.slicing import absolute_range, parse_split
from vtab_lily.tasks import get_task

BLOCK = 16  # tf.data interleave block; fewer than 16 shards are visited round-robin


def round_robin(*parts):
    """What TFDS yields for a slice over len(parts) <= 16 shards: blocks of 16 in turn."""
    parts = [list(p) for p in parts]
    out = []
    while any(parts):
        for p in parts:
            out += p[:BLOCK]
            del p[:BLOCK]
    return out


def ids(source):
    """(split code, index) spelled by each image's pixels, and the labels."""
    got, labels = [], []
    for image, label in source:
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        got.append((int(image[1, 0, 0]), int(image[0, 0, 0]) + 256 * int(image[0, 1, 0])))
        labels.append(label)
    return got, labels


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("tfds")
    code = {"train": 1, "validation": 2, "test": 3}
    write_builder(root, "cifar100", "3.0.2", {"train": [700, 1150, 150], "test": [30, 25]},
                  lambda s, i: {"image": png(id_pixels(code[s], i)), "label": np.array([i % 100]),
                                "id": f"{s}_{i}", "coarse_label": np.array([i % 20])})
    write_builder(root, "clevr", "3.1.0", {"train": [1000, 1000], "validation": [20, 16]},
                  lambda s, i: {"image": png(id_pixels(code[s], i)), **clevr_objects(i)})
    write_builder(root, "kitti", "3.2.0",
                  {"train": [500, 400], "validation": [150, 60], "test": [11, 0, 9]},
                  lambda s, i: {"image": png(id_pixels(code[s], i)), **kitti_objects(i)})
    write_builder(root, "dsprites", "2.0.0", {"train": [600, 500]},
                  lambda s, i: {"image": png(bit_pixels(i)), "label_x_position": np.array([i % 32]),
                                "label_orientation": np.array([i % 40]),
                                "value_x_position": np.array([0.5], np.float32)})
    write_builder(root, "smallnorb", "2.0.0", {"train": [800], "test": [150, 250]},
                  lambda s, i: {"image": png(id_pixels(code[s], i, 1)),
                                "image2": png(np.zeros((2, 3), np.uint8)),
                                "label_azimuth": np.array([i % 18]),
                                "label_elevation": np.array([i % 9])})
    write_builder(root, "eurosat", "2.0.0", {"train": [450, 550]},
                  lambda s, i: {"image": png(id_pixels(code[s], i)), "label": np.array([i % 10]),
                                "filename": f"{i}.jpg"}, config="rgb")
    return root


# clevr_dist: the closest object's pixel_coords z and the bucket VTAB gives it (strictly above
# a threshold moves up: 8.0 stays in bucket 0).
CLEVR_Z = [(0.5, 0), (8.0, 0), (8.0001, 1), (8.5, 1), (8.7, 2), (9.0, 2), (9.3, 3), (9.5, 3),
           (9.9, 4), (10.0, 4), (10.5, 5), (99.0, 5)]


def clevr_objects(i):
    n = 3 + i % 8
    z, _ = CLEVR_Z[i % len(CLEVR_Z)]
    coords = np.full((n, 3), 50.0, np.float32)
    coords[:, 2] = z + 1 + np.arange(n)
    coords[i % n, 2] = z
    return {"objects/size": np.arange(n) % 2, "objects/pixel_coords": coords,
            "objects/3d_coords": np.zeros((n, 3), np.float32)}


# kitti closest_vehicle_distance: (types, z, label); types 0-2 are Car/Van/Truck.
KITTI = [([], [], 3), ([3, 4], [5.0, 50.0], 3), ([0], [7.99], 0), ([1], [8.0], 0),
         ([2], [8.01], 1), ([0, 5], [30.0, 1.0], 2), ([0, 1], [25.0, 19.0], 1), ([2], [999.5], 3),
         ([7, 0], [2.0, -5.0], 0), ([1, 2, 0], [40.0, 20.0, 21.0], 1)]


def kitti_objects(i):
    types, zs, _ = KITTI[i % len(KITTI)]
    loc = np.zeros((len(zs), 3), np.float32)
    loc[:, 2] = zs
    return {"objects/type": np.array(types, np.int64), "objects/location": loc,
            "objects/bbox": np.zeros((len(zs), 4), np.float32)}


def bit_pixels(i):
    """dsprites-like 0/1 image; row 1 col 0 = 0, index bits in row 0 and row 2."""
    px = np.zeros((3, 12), np.uint8)
    px[0, :8] = [(i >> b) & 1 for b in range(8)]
    px[2, :4] = [(i >> b) & 1 for b in range(8, 12)]
    return px


def bits_index(image):
    assert set(np.unique(image)) <= {0, 255} and (image[:, :, 0] == image[:, :, 2]).all()
    b = image[:, :, 0] // 255
    return sum(int(b[0, k]) << k for k in range(8)) + sum(int(b[2, k]) << (8 + k) for k in range(4))


def test_cifar_splits_membership_order_labels(data_dir):
    splits = vtab_task_splits(data_dir, "cifar100")  # alias of cifar
    assert {k: len(v) for k, v in splits.items()} == {"train800": 800, "val200": 200, "test": 55}
    got, labels = ids(splits["train800"])
    assert got == round_robin([(1, i) for i in range(700)], [(1, i) for i in range(700, 800)])
    assert labels == [i % 100 for _, i in got]
    got, _ = ids(splits["val200"])  # train[1800:2000]: 50 from shard 1, 150 from shard 2
    assert got == round_robin([(1, i) for i in range(1800, 1850)], [(1, i) for i in range(1850, 2000)])
    got, _ = ids(splits["test"])
    assert got == round_robin([(3, i) for i in range(30)], [(3, i) for i in range(30, 55)])
    assert splits["val200"].describe() == "tfds:cifar100/3.0.2 train[1800:2000]"
    assert [p.name for p in splits["val200"].shard_files()] == [
        "cifar100-train.tfrecord-00001-of-00003", "cifar100-train.tfrecord-00002-of-00003"]


def test_cifar_pixels_exact(data_dir):
    image, _ = next(iter(vtab_task_splits(data_dir, "cifar")["test"]))
    assert (image == id_pixels(3, 0)).all()


@pytest.mark.parametrize("task", ["clevr_count", "clevr_dist"])
def test_clevr(data_dir, task):
    splits = vtab_task_splits(data_dir, task)
    assert [len(s) for s in splits.values()] == [800, 200, 36]
    for name, first, code in [("train800", 0, 1), ("val200", 1800, 1), ("test", 0, 2)]:
        got, labels = ids(splits[name])
        assert sorted(got) == [(code, i) for i in range(first, first + len(splits[name]))]
        want = ([i % 8 for _, i in got] if task == "clevr_count"
                else [CLEVR_Z[i % len(CLEVR_Z)][1] for _, i in got])
        assert labels == want
    assert set(ids(splits["train800"])[1]) == set(range(8 if task == "clevr_count" else 6))


def test_kitti(data_dir):
    splits = vtab_task_splits(data_dir, "kitti")
    assert [len(s) for s in splits.values()] == [800, 200, 20]
    got, labels = ids(splits["train800"])
    assert got == round_robin([(1, i) for i in range(500)], [(1, i) for i in range(500, 800)])
    assert labels == [KITTI[i % len(KITTI)][2] for _, i in got]
    got, labels = ids(splits["val200"])
    assert got == round_robin([(2, i) for i in range(150)], [(2, i) for i in range(150, 200)])
    got, labels = ids(splits["test"])  # an empty middle shard is skipped
    assert got == round_robin([(3, i) for i in range(11)], [(3, i) for i in range(11, 20)])
    assert labels == [KITTI[i % len(KITTI)][2] for _, i in got]


@pytest.mark.parametrize("task", ["dsprites_loc", "dsprites_ori"])
def test_dsprites(data_dir, task):
    splits = vtab_task_splits(data_dir, task)  # n=1100: val train[880:1080], test train[990:]
    assert [len(s) for s in splits.values()] == [800, 200, 110]
    for name, first in [("train800", 0), ("val200", 880), ("test", 990)]:
        got, labels = [], []
        for image, label in splits[name]:
            got.append(bits_index(image))
            labels.append(label)
        assert sorted(got) == list(range(first, first + len(splits[name])))
        want = [(i % 32) // 2 for i in got] if task == "dsprites_loc" else [(i % 40) * 2 // 5 for i in got]
        assert labels == want
    assert got[:BLOCK] == list(range(990, 990 + BLOCK))


@pytest.mark.parametrize("task,mod", [("smallnorb_azi", 18), ("smallnorb_ele", 9)])
def test_smallnorb(data_dir, task, mod):
    splits = vtab_task_splits(data_dir, task)  # val test[:200], test test[50%:] = test[200:]
    assert [len(s) for s in splits.values()] == [800, 200, 200]
    got, labels = ids(splits["val200"])
    assert got == round_robin([(3, i) for i in range(150)], [(3, i) for i in range(150, 200)])
    assert labels == [i % mod for _, i in got]
    got, labels = ids(splits["test"])
    assert got == [(3, i) for i in range(200, 400)]
    image, _ = next(iter(splits["train800"]))
    assert (image == np.repeat(id_pixels(1, 0, 1)[:, :, None], 3, axis=2)).all()


def test_eurosat_config_folder(data_dir):
    splits = vtab_task_splits(data_dir, "eurosat")  # n=1000: val train[600:800], test train[800:]
    got, labels = ids(splits["test"])
    assert got == [(1, i) for i in range(800, 1000)]
    assert labels == [i % 10 for _, i in got]
    assert sorted(ids(splits["val200"])[0]) == [(1, i) for i in range(600, 800)]


# Split sizes of the pinned TFDS versions (TFDS catalog); the val200 / test boundaries they give
# are task_adaptation's (google-research/task_adaptation, data/*.py), and the test sizes are the task registry's.
SIZES = {"cifar": {"train": 50000, "test": 10000}, "caltech101": {"train": 3060, "test": 6084},
         "dtd": {"train": 1880, "validation": 1880, "test": 1880},
         "oxford_flowers102": {"train": 1020, "validation": 1020, "test": 6149},
         "oxford_iiit_pet": {"train": 3680, "test": 3669},
         "svhn": {"train": 73257, "test": 26032, "extra": 531131},
         "sun397": {"train": 76128, "validation": 10875, "test": 21750},
         "patch_camelyon": {"train": 262144, "validation": 32768, "test": 32768},
         "eurosat": {"train": 27000}, "resisc45": {"train": 31500},
         "diabetic_retinopathy": {"train": 35126, "validation": 10906, "test": 42670},
         "clevr_count": {"train": 70000, "validation": 15000, "test": 15000},
         "dmlab": {"train": 65550, "validation": 22628, "test": 22735},
         "kitti": {"train": 6347, "validation": 423, "test": 711},
         "dsprites_loc": {"train": 737280}, "smallnorb_azi": {"train": 24300, "test": 24300}}
VAL200 = {"cifar": "train[45000:45200]", "caltech101": "train[2754:2954]",
          "oxford_iiit_pet": "train[2944:3144]", "svhn": "train[65931:66131]",
          "eurosat": "train[16200:16400]", "resisc45": "train[18900:19100]",
          "clevr_count": "train[63000:63200]", "dsprites_loc": "train[589824:590024]",
          "smallnorb_azi": "test[:200]"}
TEST = {"eurosat": "train[21600:]", "resisc45": "train[25200:]", "clevr_count": "validation",
        "dsprites_loc": "train[663552:]", "smallnorb_azi": "test[50%:]"}


@pytest.mark.parametrize("task", sorted(vtab.TASKS))
def test_split_rules_with_real_split_sizes(task):
    key = {"clevr_dist": "clevr_count", "dsprites_ori": "dsprites_loc",
           "smallnorb_ele": "smallnorb_azi"}.get(task, task)
    ds = BuiltDataset(root=Path("/x"), name="x", version="0", file_format="tfrecord",
                      splits={s: SplitInfo(s, (n // 3, n - n // 3)) for s, n in SIZES[key].items()})
    specs = vtab.TASKS[task].splits(ds)
    assert specs["train800"] == "train[:800]"
    assert specs["val200"] == VAL200.get(key, "validation[:200]")
    assert specs["test"] == TEST.get(key, "test")
    sizes = {}
    for name, spec in specs.items():
        (sl,) = parse_split(spec)
        start, stop = absolute_range(sl, ds.split(sl.split).shard_lengths)
        sizes[name] = stop - start
    assert sizes == {"train800": 800, "val200": 200, "test": get_task(task).test_size}
