"""One VTAB-1K split read from TFDS shards: ``Source`` and the builder search.

A Source knows its length from dataset_info.json alone and iterates ``(image uint8 HxWx3,
label int)`` in the order ``tfds.load(split, shuffle_files=False)`` gives (see slicing.py).
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from ...errors import UserError, unknown_name
from ...tasks import ALIASES, get_task
from .builders import INFO_FILE, BuiltDataset, built_versions, read_dataset, version_key
from .example import ExampleError, parse_example
from .slicing import absolute_range, file_instructions, interleave, parse_split
from .tfrecord import iter_records
from .vtab import TASKS, LabelError, TfdsTask, feature

VTAB_SPLITS = ("train800", "val200", "test")


class UndecodableImage(LabelError):
    """A record whose image bytes cannot be decoded (``--drop-undecodable`` may skip it in a test split)."""


class TfdsVersionWarning(UserWarning):
    """A task is read from another TFDS version than the pinned one."""


try:  # libjpeg-turbo with TF's default JPEG settings (see jpeg_decoder())
    import simplejpeg as _simplejpeg
except Exception:  # noqa: BLE001 - optional: any import problem means "not available"
    _simplejpeg = None


def jpeg_decoder() -> str:
    """How JPEG-stored records decode here. TF (and so VTAB) decodes JPEG with libjpeg's fast
    integer DCT; PIL only offers the accurate one, which differs by a few levels on ~1/6 of the
    pixels. simplejpeg(fastdct=True) reproduces TF's pixels exactly (checked on TF 2.21)."""
    if _simplejpeg is not None:
        return "tf-identical (simplejpeg, fast DCT)"
    return "pil (accurate DCT, not TF-identical)"


def _decode_jpeg_like_tf(data: bytes) -> np.ndarray | None:
    if _simplejpeg is None or data[:3] != b"\xff\xd8\xff":
        return None
    from PIL import Image

    try:
        height, width, _, _ = _simplejpeg.decode_jpeg_header(data)
    except (ValueError, RuntimeError):
        return None  # PIL says what is wrong with it
    if height * width > 2 * (Image.MAX_IMAGE_PIXELS or 1 << 62):
        raise LabelError(f"JPEG of {width}x{height} pixels is too large to decode")
    try:
        return _simplejpeg.decode_jpeg(data, colorspace="RGB", fastdct=True, fastupsample=False)
    except (ValueError, RuntimeError):  # e.g. CMYK: PIL converts those
        return None


def decode_image(data: bytes, kind: str) -> np.ndarray:
    """Encoded PNG/JPEG bytes -> HxWx3 uint8, as VTAB feeds them (see TfdsTask.image)."""
    from PIL import Image

    from ..images import DECODE_ERRORS, is_high_range, to_rgb

    if kind == "rgb":
        arr = _decode_jpeg_like_tf(data)
        if arr is not None:
            return arr
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            if kind == "rgb":  # 16-bit, palette, CMYK...: converted as the NOAH-layout reader does
                arr = np.asarray(to_rgb(img), dtype=np.uint8)
            elif kind == "gray" and is_high_range(img):  # smallnorb stored at 16 bits: scaled, never clipped
                arr = np.asarray(to_rgb(img).convert("L"), dtype=np.uint8)
            else:
                if img.mode not in ("L", "1"):
                    raise LabelError(f"expected a one-channel image, got PIL mode {img.mode}")
                arr = np.asarray(img.convert("L"), dtype=np.uint8)
    except DECODE_ERRORS as err:
        raise UndecodableImage(f"image cannot be decoded ({type(err).__name__}: {err})") from None
    if kind == "binary":
        if arr.max(initial=0) > 1:
            raise LabelError(f"expected a 0/1 image (dsprites), found value {int(arr.max())}")
        arr = arr * np.uint8(255)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    return arr


class Source:
    """Examples ``spec`` (a TFDS split string) of a built dataset, with VTAB's labels."""

    def __init__(self, dataset: BuiltDataset, spec: str, task: TfdsTask):
        self.dataset, self.spec, self.task = dataset, spec, task
        self.num_classes = get_task(task.task).num_classes
        self._reads: list[tuple[Path, int, int, bool]] = []  # path, skip, take, ends the shard
        for sl in parse_split(spec):
            info = dataset.split(sl.split)
            paths = dataset.check_shards(sl.split)
            start, stop = absolute_range(sl, info.shard_lengths)
            for fi in file_instructions(start, stop, info.shard_lengths):
                ends = fi.skip + fi.take == info.shard_lengths[fi.shard]
                self._reads.append((paths[fi.shard], fi.skip, fi.take, ends))

    def __len__(self) -> int:
        return sum(take for _, _, take, _ in self._reads)

    def __repr__(self) -> str:
        return f"Source({self.describe()!r}, n={len(self)})"

    def describe(self) -> str:
        """e.g. ``tfds:cifar100/3.0.2 train[45000:45200]`` (for manifests and reports)."""
        return f"tfds:{self.task.folder}/{self.dataset.version} {self.spec}"

    def shard_files(self) -> list[Path]:
        """The shard files this split reads, in file-instruction order (for progress, sizes)."""
        return list(dict.fromkeys(path for path, _, _, _ in self._reads))

    def records(self) -> Iterator[tuple[Path, int, bytes]]:
        """(shard path, record index in the shard, serialized Example) in reading order."""
        def read(item):
            path, skip, take, ends = item
            total = skip + take if ends else None
            records = iter_records(path, skip=skip, take=take, expect_total=total)
            return ((path, skip + i, data) for i, data in enumerate(records))
        return interleave(self._reads, read)

    def examples(self) -> Iterator[tuple[Path, int, dict]]:
        for path, index, data in self.records():
            try:
                example = parse_example(data)
            except ExampleError as err:
                raise UserError(f"{path}: record {index}: not a tf.train.Example ({err})") from None
            yield path, index, example

    def __iter__(self) -> Iterator[tuple[np.ndarray, int]]:
        return self.items()

    def items(self, dropped: list[str] | None = None) -> Iterator[tuple[np.ndarray, int]]:
        """``(image, label)`` in order. With ``dropped`` (a list), a record whose image cannot be
        decoded is skipped and named there (``<shard>: record <i>: why``) instead of raised."""
        for path, index, ex in self.examples():
            try:
                images = feature(ex, "image", "bytes")
                if len(images) != 1:
                    raise LabelError(f"feature 'image' holds {len(images)} values, expected 1")
                label = self.task.label(ex)
                if not 0 <= label < self.num_classes:
                    raise LabelError(f"label {label} is outside 0..{self.num_classes - 1}")
                image = decode_image(images[0], self.task.image)
            except UndecodableImage as err:
                if dropped is None:
                    raise UserError(f"{path}: record {index}: {err}") from None
                dropped.append(f"{path.name}: record {index}: {err}")
                continue
            except LabelError as err:
                raise UserError(f"{path}: record {index}: {err}") from None
            yield image, label


@dataclass
class BuilderChoice:
    task: str
    path: Path  # the version folder used
    version: str
    pinned: str
    others: list[str] = field(default_factory=list)  # other built versions, not used

    @property
    def note(self) -> str | None:
        """A one-line remark when the pinned version was not used or others were ignored."""
        if self.version != self.pinned:
            return (f"{self.task}: pinned TFDS version {self.pinned} not found, using "
                    f"{self.version}; splits and labels may differ from published VTAB-1K")
        if self.others:
            return f"{self.task}: using pinned {self.version}; ignoring {', '.join(self.others)}"
        return None


def _choose(task: TfdsTask, data_dir: Path) -> BuilderChoice | None:
    folder = data_dir / task.folder
    versions = built_versions(folder)
    if not versions:
        return None
    if task.version in versions:
        chosen = task.version
    else:  # as VTAB's "name:3.*.*": the newest of the pinned major, else the newest
        major = task.version.split(".")[0]
        same = [v for v in versions if v.split(".")[0] == major]
        chosen = max(same or versions, key=version_key)
    return BuilderChoice(task.task, folder / chosen, chosen, task.version,
                         [v for v in versions if v != chosen])


def _data_dir(data_dir: str | Path) -> Path:
    data_dir = Path(data_dir).expanduser()
    if not data_dir.is_dir():
        raise UserError(f"{data_dir}: TFDS data directory does not exist")
    if (data_dir / INFO_FILE).is_file():
        raise UserError(f"{data_dir}: this is one dataset's version folder; give the TFDS "
                        "data_dir that holds cifar100/, clevr/, ... (e.g. ~/tensorflow_datasets)")
    return data_dir


def scan_builders(data_dir: str | Path) -> dict[str, BuilderChoice]:
    """Which VTAB tasks have a built TFDS folder under ``data_dir``, and which version is used."""
    data_dir = _data_dir(data_dir)
    found = {}
    for name, task in TASKS.items():
        choice = _choose(task, data_dir)
        if choice is not None:
            found[name] = choice
    return found


def find_builders(data_dir: str | Path) -> dict[str, Path]:
    """``{task: version folder}``; a non-pinned choice raises a TfdsVersionWarning."""
    out = {}
    for task, choice in scan_builders(data_dir).items():
        if choice.version != choice.pinned:
            warnings.warn(choice.note, TfdsVersionWarning, stacklevel=2)
        out[task] = choice.path
    return out


def tfds_task(task: str) -> TfdsTask:
    name = ALIASES.get(task, task)
    if name not in TASKS:
        raise unknown_name("VTAB task", task, TASKS)
    return TASKS[name]


def vtab_task_splits(data_dir: str | Path, task: str) -> dict[str, Source]:
    """``{"train800", "val200", "test"}`` Sources of one task, checked down to the shard files."""
    spec = tfds_task(task)
    data_dir = _data_dir(data_dir)
    choice = _choose(spec, data_dir)
    if choice is None:
        raise UserError(f"{data_dir / spec.folder}: no built TFDS dataset for task "
                        f"{spec.task!r} (expected <version>/{INFO_FILE}, pinned {spec.version})")
    if choice.version != choice.pinned:
        warnings.warn(choice.note, TfdsVersionWarning, stacklevel=2)
    dataset = read_dataset(choice.path)
    return {name: Source(dataset, split, spec) for name, split in spec.splits(dataset).items()}
