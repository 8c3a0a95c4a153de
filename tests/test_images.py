"""Image loading: each bad file gives an ImageLoadError naming it; odd pixel modes are converted to RGB."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from visattn.data.images import ImageLoadError, image_to_tensor, load_image, to_rgb


def random_rgb(height: int = 24, width: int = 32, seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB")


def expect_error(path, reason_part: str) -> ImageLoadError:
    with pytest.raises(ImageLoadError) as info:
        load_image(path)
    error = info.value
    assert isinstance(error, ValueError)
    assert str(path) in str(error) and error.path == str(path)
    assert reason_part in error.reason, error.reason
    return error


def test_rgb_png_round_trips_exactly(tmp_path):
    image = random_rgb()
    image.save(tmp_path / "a.png")
    loaded = load_image(tmp_path / "a.png")
    assert loaded.mode == "RGB" and np.array_equal(np.asarray(loaded), np.asarray(image))


def test_missing_directory_and_empty_files(tmp_path):
    expect_error(tmp_path / "nope.png", "file not found")
    expect_error(tmp_path, "is a directory")
    (tmp_path / "empty.jpg").write_bytes(b"")
    expect_error(tmp_path / "empty.jpg", "empty file")


def test_not_an_image(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("this is not a picture\n" * 10)
    expect_error(path, "not an image")


@pytest.mark.parametrize("fmt, suffix", [("JPEG", "jpg"), ("PNG", "png")])
def test_truncated_files(tmp_path, fmt, suffix):
    whole = tmp_path / f"whole.{suffix}"
    random_rgb(64, 64).save(whole, fmt)
    data = whole.read_bytes()
    cut = tmp_path / f"cut.{suffix}"
    cut.write_bytes(data[: len(data) // 2])
    expect_error(cut, "truncated or corrupt")


def test_decompression_bomb_guard(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    Image.new("RGB", (40, 40)).save(path)  # 1600 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # between 1x and 2x: Pillow only warns
    expect_error(path, "decompression-bomb")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)  # over 2x: Pillow raises
    expect_error(path, "decompression-bomb")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)
    assert load_image(path).size == (40, 40)
    with pytest.raises(ImageLoadError, match="exceeds the decompression-bomb limit of 100 pixels"):
        load_image(path, max_pixels=100)


def test_greyscale_palette_and_alpha_become_rgb(tmp_path):
    grey = Image.fromarray(np.array([[0, 128], [200, 255]], dtype=np.uint8), "L")
    grey.save(tmp_path / "grey.png")
    loaded = np.asarray(load_image(tmp_path / "grey.png"))
    assert loaded.shape == (2, 2, 3) and (loaded == np.asarray(grey)[:, :, None]).all()

    rgba = Image.new("RGBA", (2, 1))
    rgba.putpixel((0, 0), (255, 0, 0, 255))  # opaque red stays red
    rgba.putpixel((1, 0), (0, 0, 255, 0))  # fully transparent blue becomes the white background
    rgba.save(tmp_path / "rgba.png")
    assert np.asarray(load_image(tmp_path / "rgba.png")).tolist() == [[[255, 0, 0], [255, 255, 255]]]
    assert np.asarray(load_image(tmp_path / "rgba.png", background=(0, 0, 0)))[0, 1].tolist() == [0, 0, 0]

    la = Image.new("LA", (1, 1), (0, 128))  # black at half opacity on white -> mid grey
    la.save(tmp_path / "la.png")
    assert abs(int(np.asarray(load_image(tmp_path / "la.png"))[0, 0, 0]) - 127) <= 1

    palette = random_rgb(8, 8).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette.save(tmp_path / "p.gif")
    assert np.array_equal(np.asarray(load_image(tmp_path / "p.gif")), np.asarray(palette.convert("RGB")))
    palette.info["transparency"] = 0
    palette.save(tmp_path / "pt.png", transparency=0)
    loaded = np.asarray(load_image(tmp_path / "pt.png"))
    transparent = np.asarray(palette) == 0
    assert transparent.any() and (loaded[transparent] == 255).all()
    assert np.array_equal(loaded[~transparent], np.asarray(palette.convert("RGB"))[~transparent])


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")  # pure red in CMYK
    red = np.asarray(load_image(tmp_path / "cmyk.jpg"))
    assert red.shape == (8, 8, 3) and red[..., 0].min() > 240 and red[..., 1:].max() < 15


def test_sixteen_bit_images_are_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257 * 128, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as raw:
        assert raw.mode.startswith("I")
    loaded = np.asarray(load_image(tmp_path / "deep.png"))
    assert loaded[0, :, 0].tolist() == [0, 128, 255] and loaded.shape == (1, 3, 3)

    as_int = Image.fromarray(values.astype(np.int32), "I")
    assert np.asarray(to_rgb(as_int))[0, :, 0].tolist() == [0, 128, 255]
    small_int = Image.fromarray(np.array([[0, 100, 255]], dtype=np.int32), "I")
    assert np.asarray(to_rgb(small_int))[0, :, 0].tolist() == [0, 100, 255]
    unit_float = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32), "F")
    assert np.asarray(to_rgb(unit_float))[0, :, 0].tolist() == [0, 128, 255]


def test_exif_orientation_is_applied(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to view"
    random_rgb(10, 20).save(tmp_path / "turned.jpg", exif=exif)
    assert load_image(tmp_path / "turned.jpg").size == (10, 20)


def test_image_to_tensor():
    image = random_rgb(6, 8)
    tensor = image_to_tensor(image)
    assert tensor.shape == (3, 6, 8) and tensor.dtype == torch.float32 and tensor.is_contiguous()
    expected = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float() / 255
    assert torch.equal(tensor, expected)
    assert image_to_tensor(image, 4).shape == (3, 4, 4)
    assert image_to_tensor(image, (3, 5)).shape == (3, 3, 5)
    resized = image_to_tensor(image, 16)
    assert 0.0 <= resized.min() and resized.max() <= 1.0
    assert image_to_tensor(image.convert("L")).shape == (3, 6, 8)
    with pytest.raises(ValueError, match="positive"):
        image_to_tensor(image, 0)
