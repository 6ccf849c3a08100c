"""Safe image decoding: every file becomes an upright uint8 RGB array, or a clear error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from autoclf.errors import DataError

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
)

# A JPEG is not decoded at reduced scale below this many pixels a side: a 500×375 photo would
# gain 1 ms and its cached pixels would move (benchmarks/decode.py).
DRAFT_FLOOR = 512


def load_rgb(path: str | Path, *, min_side: int | None = None) -> np.ndarray:
    """Decode ``path`` into an HxWx3 uint8 array, upright (EXIF) and in RGB.

    ``min_side``: the array will be shrunk to that size afterwards, so a JPEG may be decoded
    at 1/2, 1/4 or 1/8 scale, as long as both sides stay at least twice ``min_side`` (the last
    step is still area averaging) and at least ``DRAFT_FLOOR``. A 4000×3000 photo for a 224 px
    cache decodes about 9× faster and in a sixteenth of the memory (``benchmarks/decode.py``);
    a photo under twice the floor is decoded in full, as it gains little.

    PIL decodes lazily, so a truncated file only fails when the pixels are read; ``load()``
    forces that here, where the error can still name the file.
    """
    try:
        with Image.open(path) as im:
            if min_side is not None:
                side = max(2 * min_side, DRAFT_FLOOR)
                im.draft("RGB", (side, side))  # a no-op but for JPEG
            im.load()
            return pil_to_rgb(im)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise DataError(f"cannot decode image {path}: {exc}") from exc


def pil_to_rgb(im: Image.Image) -> np.ndarray:
    """A decoded PIL image as an upright (EXIF) HxWx3 uint8 RGB array."""
    return _to_rgb_array(ImageOps.exif_transpose(im))


def _to_rgb_array(im: Image.Image) -> np.ndarray:
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit or float grayscale: scale the actual range into 0..255 instead of clipping.
        arr = np.asarray(im, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        gray = arr.round().astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        # Composite transparency on white, as a viewer shows it, rather than on black.
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(background, rgba)
    return np.asarray(im.convert("RGB"), dtype=np.uint8)
