"""Image decoding: every mode loads as RGB; broken files are rejected naming file and line;
SplitData items and batches."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from vtab_lily.data import IMAGENET_MEAN, IMAGENET_STD, SplitData, load_split
from vtab_lily.data.images import ImageDecodeError, decode_image
from vtab_lily.errors import UserError
from vtab_lily.tasks import Task

TINY = Task("tiny", "Natural", num_classes=3, test_size=4)


def save(img: Image.Image, path, fmt: str):
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, fmt)
    return path


def solid(mode: str, colour):
    return Image.new(mode, (20, 14), colour)


def palette_red() -> Image.Image:
    img = Image.new("P", (20, 14), 0)
    img.putpalette([255, 0, 0] + [0, 0, 0] * 255)
    return img


def palette_red_transparent() -> Image.Image:
    img = palette_red()
    img.info["transparency"] = bytes([128, 0] + [255] * 254)  # per-entry alpha: PIL warns on RGB
    return img


# (name, image, saved as, expected RGB after decoding)
MODES = [
    ("grayscale.jpg", lambda: solid("L", 100), "JPEG", (100, 100, 100)),
    ("cmyk.jpg", lambda: solid("CMYK", (0, 255, 255, 0)), "JPEG", (255, 0, 0)),
    ("palette.png", palette_red, "PNG", (255, 0, 0)),
    ("palette_transparent.png", palette_red_transparent, "PNG", (255, 0, 0)),
    ("rgba.png", lambda: solid("RGBA", (0, 0, 255, 128)), "PNG", (0, 0, 255)),
    ("png_content.jpg", lambda: solid("RGB", (0, 200, 0)), "PNG", (0, 200, 0)),
    ("bilevel.png", lambda: solid("1", 1), "PNG", (255, 255, 255)),
]


@pytest.mark.filterwarnings("error")  # no PIL warnings either
@pytest.mark.parametrize("name, make, fmt, rgb", MODES, ids=[m[0] for m in MODES])
def test_every_mode_and_format_loads_as_rgb(tmp_path, name, make, fmt, rgb):
    path = save(make(), tmp_path / name, fmt)
    pixels = decode_image(path, 8)
    assert pixels.shape == (3, 8, 8) and pixels.dtype == np.uint8
    assert np.abs(pixels.reshape(3, -1).mean(1) - np.array(rgb)).max() <= 6  # JPEG rounding


def test_resize_is_straight_bicubic_without_crop(tmp_path):
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (30, 50, 3), dtype=np.uint8))
    path = save(img, tmp_path / "wide.png", "PNG")
    expected = np.asarray(img.resize((16, 16), Image.BICUBIC)).transpose(2, 0, 1)
    assert np.array_equal(decode_image(path, 16), expected)


def jpeg_bytes(seed=0) -> bytes:
    buf = io.BytesIO()
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


BROKEN = {
    "empty.jpg": (b"", r"empty \(0 bytes\)"),
    "truncated.jpg": (jpeg_bytes()[:400], "(?i)truncated"),
    "garbage.jpg": (b"this is not an image at all" * 10, "cannot decode image"),
}


@pytest.mark.parametrize("name", BROKEN)
def test_broken_files_raise_decode_error(tmp_path, name):
    data, why = BROKEN[name]
    (tmp_path / name).write_bytes(data)
    with pytest.raises(ImageDecodeError, match=why):
        decode_image(tmp_path / name, 8)
    with pytest.raises(ImageDecodeError, match="does not exist"):
        decode_image(tmp_path / "missing.jpg", 8)


def write_split_with_files(root, files: dict[str, bytes]):
    """A TINY test split listing ``files`` (name -> bytes) in order, labels 0,1,2,0..."""
    folder = root / TINY.name
    (folder / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for i, (name, data) in enumerate(files.items()):
        if data is not None:
            (folder / "images" / name).write_bytes(data)
        lines.append(f"images/{name} {i % 3}\n")
    (folder / "test.txt").write_text("".join(lines))
    return folder / "test.txt"


def test_load_split_names_every_unreadable_file_with_its_line(tmp_path):
    files = {"good0.jpg": jpeg_bytes(0), "empty.jpg": b"", "good1.jpg": jpeg_bytes(1),
             "truncated.jpg": jpeg_bytes()[:400], "garbage.jpg": b"GIF89a nonsense", "missing.jpg": None}
    list_file = write_split_with_files(tmp_path, files)
    with pytest.raises(UserError) as err, pytest.warns(UserWarning):  # 6 entries, TINY expects 4
        load_split(tmp_path, TINY, "test", img_size=8, use_cache=False)
    message = str(err.value)
    assert "4 problem(s)" in message
    for line, name in [(2, "empty.jpg"), (4, "truncated.jpg"), (5, "garbage.jpg"), (6, "missing.jpg")]:
        assert f"{list_file}:{line}: images/{name}: " in message
    assert "good0" not in message and "good1" not in message


def test_mixed_modes_in_one_split_load_as_rgb(tmp_path):
    files = {}
    for name, make, fmt, _ in MODES[:4]:
        buf = io.BytesIO()
        make().save(buf, fmt)
        files[name] = buf.getvalue()
    write_split_with_files(tmp_path, files)
    data = load_split(tmp_path, TINY, "test", img_size=8, normalize=False, use_cache=False)
    assert data.images.shape == (4, 3, 8, 8) and data.images.dtype == torch.uint8
    assert data.labels.tolist() == [0, 1, 2, 0] and data.labels.dtype == torch.int64


def make_split_data(normalize: bool) -> SplitData:
    images = torch.arange(5 * 3 * 4 * 4, dtype=torch.int64).remainder(256).to(torch.uint8).view(5, 3, 4, 4)
    return SplitData(images, torch.tensor([0, 1, 2, 0, 1]), normalize=normalize, task=TINY, split="test")


def test_items_are_float_0_to_1_or_normalised():
    raw = make_split_data(normalize=False)
    image, label = raw[2]
    assert image.dtype == torch.float32 and label == 2
    assert torch.allclose(image, raw.images[2].float() / 255)
    normalised, _ = make_split_data(normalize=True)[2]
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    assert torch.allclose(normalised, (image - mean) / std, atol=1e-6)
    assert torch.equal(raw[-1][0], raw[4][0])


def test_batch_matches_items_and_batches_cover_the_epoch():
    data = make_split_data(normalize=True)
    images, labels = data.batch(torch.tensor([4, 0, 2]))
    assert images.shape == (3, 3, 4, 4) and labels.tolist() == [1, 0, 2]
    assert torch.allclose(images, torch.stack([data[4][0], data[0][0], data[2][0]]))
    seen = torch.cat([y for _, y in data.batches(2, shuffle=True, generator=torch.Generator().manual_seed(0))])
    assert sorted(seen.tolist()) == sorted(data.labels.tolist())
    assert sum(len(y) for _, y in data.batches(2, drop_last=True)) == 4
    moved = data.to("cpu")
    assert torch.equal(moved.batch([1, 3])[0], data.batch([1, 3])[0])


def test_split_data_rejects_wrong_tensors():
    with pytest.raises(ValueError, match="uint8"):
        SplitData(torch.zeros(2, 3, 4, 4), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="labels"):
        SplitData(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.zeros(3, dtype=torch.long))


# --- 16-bit and float images are scaled by their real range (issue 16 item 1) ---------------
def _gradient(top: float, dtype) -> np.ndarray:
    return (np.tile(np.linspace(0, top, 64), (8, 1))).astype(dtype)


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_16_bit_gradient_decodes_as_a_gradient_not_white(tmp_path, fmt):
    values = _gradient(65535, np.uint16)
    img = Image.fromarray(values)
    path = save(img, tmp_path / f"g16.{fmt.lower()}", fmt)
    with Image.open(path) as check:
        assert check.mode in ("I;16", "I;16B", "I")  # really stored as 16-bit
    from vtab_lily.data.images import _open_rgb

    rgb = np.asarray(_open_rgb(path))
    expected = np.rint(values / 65535 * 255)
    assert np.abs(rgb[..., 0].astype(int) - expected).max() <= 1
    assert rgb[..., 0].min() == 0 and rgb[..., 0].max() == 255
    assert (rgb[..., 0] == 255).mean() < 0.05  # was 99% white


def test_mode_i_image_with_16_bit_values_uses_the_16_bit_range(tmp_path):
    values = _gradient(65535, np.int32)
    path = save(Image.fromarray(values), tmp_path / "i.tiff", "TIFF")
    from vtab_lily.data.images import _open_rgb

    rgb = np.asarray(_open_rgb(path))
    assert np.abs(rgb[..., 1].astype(int) - np.rint(values / 65535 * 255)).max() <= 1


def test_float_tiff_in_0_1_decodes_as_a_gradient_not_black(tmp_path):
    values = _gradient(1.0, np.float32)
    path = save(Image.fromarray(values), tmp_path / "f.tiff", "TIFF")
    from vtab_lily.data.images import _open_rgb

    rgb = np.asarray(_open_rgb(path))
    assert np.abs(rgb[..., 2].astype(int) - np.rint(values * 255)).max() <= 1
    assert rgb.max() == 255


@pytest.mark.parametrize("bad", [2.5, -0.5, float("nan")])
def test_float_image_outside_0_1_is_refused_with_a_clear_line(tmp_path, bad):
    values = _gradient(1.0, np.float32)
    values[0, 0] = bad
    path = save(Image.fromarray(values), tmp_path / "f.tiff", "TIFF")
    with pytest.raises(ImageDecodeError, match="only 0..1"):
        decode_image(path, 8)


def test_a_16_bit_container_with_a_declared_12_bit_depth_uses_it(tmp_path, monkeypatch):
    from vtab_lily.data import images as images_module

    values = _gradient(4095, np.uint16)
    path = save(Image.fromarray(values), tmp_path / "g12.tiff", "TIFF")
    monkeypatch.setattr(images_module, "_declared_bits", lambda img: 12)  # as a 12-bit camera TIFF declares
    rgb = np.asarray(images_module._open_rgb(path))
    assert np.abs(rgb[..., 0].astype(int) - np.rint(values / 4095 * 255)).max() <= 1
    values[0, 0] = 5000  # above the declared depth: the declaration is wrong, 16 bits are used
    path = save(Image.fromarray(values), tmp_path / "liar.tiff", "TIFF")
    assert np.asarray(images_module._open_rgb(path))[0, 1, 0] == 0
    assert np.asarray(images_module._open_rgb(path))[0, 0, 0] == round(5000 / 65535 * 255)
