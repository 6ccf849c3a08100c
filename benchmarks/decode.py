"""Decoding images into the cache: each JPEG in full, against at reduced scale (PIL's draft
mode, what ``build_cache`` does since it asks ``load_rgb`` for ``min_side``).

The cache holds every image at the space's ``image_size`` (224 px in ``default``), decoded
once per study before the first trial. A 12-megapixel phone photo decoded in full is 36 MB
of pixels that are then averaged down to 224 × 224; the JPEG decoder can instead produce
1/2, 1/4 or 1/8 of the size directly. ``load_rgb`` asks for no less than twice the target
on both sides, so the last step is still area averaging.

Two sets of images: hymenoptera/train as it is (about 500 × 375), and the same photographs
scaled up to 4000 × 3000 and saved as JPEG (quality 90), standing in for a camera's. One
thread, per image; "pixels" is the decoded array before the resize, and "diff" the mean
absolute difference of the cached pixels (0–255) between the two ways.

    python benchmarks/decode.py [DATA] [--photos N]   # default hymenoptera/train, 24 photos
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from autoclf.data.cache import resize_square
from autoclf.data.images import load_rgb

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared/datasets/hymenoptera/train"


def measure(paths: list[Path], size: int, min_side: int | None) -> tuple[float, float, list]:
    """Seconds per image, mean decoded megapixels, and the cached squares."""
    squares, pixels = [], []
    start = time.perf_counter()
    for p in paths:
        rgb = load_rgb(p, min_side=min_side)
        pixels.append(rgb.shape[0] * rgb.shape[1] / 1e6)
        squares.append(resize_square(rgb, size))
    return (time.perf_counter() - start) / len(paths), float(np.mean(pixels)), squares


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", nargs="?", default=str(DEFAULT_DATA))
    parser.add_argument("--photos", type=int, default=24, help="how many to scale up")
    args = parser.parse_args()
    native = sorted(p for p in Path(args.data).rglob("*.jpg"))
    with tempfile.TemporaryDirectory() as tmp:
        camera = []
        for i, p in enumerate(native[: args.photos]):
            big = Image.open(p).convert("RGB").resize((4000, 3000), Image.Resampling.BICUBIC)
            camera.append(Path(tmp) / f"{i}.jpg")
            big.save(camera[-1], quality=90)
        print(
            f"{'images':<22}{'size':>5}{'full ms':>9}{'reduced ms':>12}{'speed-up':>10}"
            f"{'full MP':>9}{'reduced MP':>12}{'diff':>7}"
        )
        for name, paths in (("native (~500×375)", native), ("camera (4000×3000)", camera)):
            for size in (64, 224):
                full_s, full_mp, a = measure(paths, size, None)
                reduced_s, reduced_mp, b = measure(paths, size, size)
                diff = np.abs(np.stack(a).astype(int) - np.stack(b)).mean()
                print(
                    f"{name:<22}{size:>5}{full_s * 1e3:>9.2f}{reduced_s * 1e3:>12.2f}"
                    f"{full_s / reduced_s:>9.1f}x{full_mp:>9.2f}{reduced_mp:>12.2f}{diff:>7.2f}"
                )


if __name__ == "__main__":
    main()
