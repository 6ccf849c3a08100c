from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from autoclf.data.images import load_rgb
from autoclf.errors import DataError
from tests.conftest import save_image


@pytest.mark.parametrize(
    "mode,suffix",
    [
        ("RGB", ".jpg"),
        ("L", ".png"),
        ("RGBA", ".png"),
        ("CMYK", ".jpg"),
        ("P", ".gif"),
        ("I;16", ".png"),
    ],
)
def test_every_mode_becomes_uint8_rgb(tmp_path, mode, suffix):
    path = save_image(tmp_path / f"x{suffix}", mode=mode, size=(20, 16))
    arr = load_rgb(path)
    assert arr.dtype == np.uint8
    assert arr.shape == (16, 20, 3)


def test_sixteen_bit_range_is_scaled_not_clipped(tmp_path):
    ramp = np.linspace(0, 65535, 64, dtype=np.uint16).reshape(8, 8)
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    arr = load_rgb(tmp_path / "deep.png")
    assert arr.min() == 0 and arr.max() == 255
    assert len(np.unique(arr[:, :, 0])) > 32  # a ramp, not a two-level clip


def test_exif_rotation_is_applied(tmp_path):
    im = Image.new("RGB", (30, 10), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    im.save(tmp_path / "phone.jpg", exif=exif)
    assert load_rgb(tmp_path / "phone.jpg").shape == (30, 10, 3)


@pytest.mark.parametrize("min_side", [None, 16])  # in full, and at reduced scale
def test_truncated_jpeg_fails_with_its_path(tmp_path, min_side):
    path = save_image(tmp_path / "big.jpg", size=(200, 200))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="big.jpg"):
        load_rgb(path, min_side=min_side)


@pytest.mark.parametrize("content", [b"", b"this is not an image"])
def test_non_image_fails_with_its_path(tmp_path, content):
    path = tmp_path / "fake.jpg"
    path.write_bytes(content)
    with pytest.raises(DataError, match="fake.jpg"):
        load_rgb(path)


def test_a_large_jpeg_is_decoded_at_reduced_scale_for_a_small_target(tmp_path):
    from autoclf.data.cache import resize_square
    from autoclf.data.images import DRAFT_FLOOR

    y, x = np.mgrid[0:2400, 0:3200]
    smooth = np.stack([x // 4 % 256, y // 4 % 256, (x + y) // 24 % 256], axis=2).astype(np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # a phone photo held upright
    Image.fromarray(smooth).save(tmp_path / "photo.jpg", quality=95, exif=exif)
    Image.fromarray(smooth).save(tmp_path / "photo.png")
    full = load_rgb(tmp_path / "photo.jpg")
    assert full.shape == (3200, 2400, 3)
    # Both sides stay at least DRAFT_FLOOR (1/8 would leave 300) and twice min_side; upright.
    assert DRAFT_FLOOR == 512
    quarter = load_rgb(tmp_path / "photo.jpg", min_side=16)
    assert quarter.shape == (800, 600, 3)
    assert load_rgb(tmp_path / "photo.jpg", min_side=350).shape == (1600, 1200, 3)
    diff = np.abs(resize_square(full, 100).astype(int) - resize_square(quarter, 100)).mean()
    assert diff < 1.0
    assert load_rgb(tmp_path / "photo.png", min_side=16).shape == (2400, 3200, 3)  # not JPEG
