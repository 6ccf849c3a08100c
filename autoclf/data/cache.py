"""Decode and resize every image once into a memory-mapped uint8 array that all trials share.

The file name carries a hash of the paths, file sizes, modification times and the pixel size,
so changed data gets a new cache instead of silently reusing a stale one.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from autoclf import atomic
from autoclf.data.images import load_rgb
from autoclf.errors import DataError

ProgressFn = Callable[[int, int], None]


@dataclass(frozen=True)
class ImageCache:
    """``images[i]`` is image ``i`` of the index as a ``size``×``size``×3 uint8 array."""

    images: np.ndarray
    path: Path

    @property
    def size(self) -> int:
        return int(self.images.shape[1])


def cache_key(paths: Sequence[str], size: int) -> str:
    digest = hashlib.sha1(f"v1 size={size}\n".encode())
    for p in paths:
        st = os.stat(p)
        digest.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def build_cache(
    paths: Sequence[str],
    *,
    size: int,
    cache_dir: str | Path,
    on_progress: ProgressFn | None = None,
) -> ImageCache:
    """Return the cache for ``paths`` at ``size`` px, decoding only if it does not exist yet.

    Images are resized to a square (aspect ratio not kept), so every pixel of the original
    stays visible to the model and to random crops.
    """
    target = Path(cache_dir) / f"images-{size}px-{cache_key(paths, size)}.npy"
    if target.is_file():
        return ImageCache(np.load(target, mmap_mode="r"), target)
    atomic.write_with(
        target, lambda tmp: _decode_into(tmp, paths, size, on_progress), suffix=".npy"
    )
    return ImageCache(np.load(target, mmap_mode="r"), target)


def _decode_into(
    tmp: Path, paths: Sequence[str], size: int, on_progress: ProgressFn | None
) -> None:
    out = np.lib.format.open_memmap(
        tmp, mode="w+", dtype=np.uint8, shape=(len(paths), size, size, 3)
    )
    failures: list[str] = []

    def work(i: int) -> None:
        try:
            out[i] = resize_square(load_rgb(paths[i]), size)
        except DataError as exc:
            failures.append(str(exc))

    # PIL and OpenCV release the GIL while decoding and resizing, so threads scale here.
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for done, _ in enumerate(pool.map(work, range(len(paths))), start=1):
            if on_progress is not None:
                on_progress(done, len(paths))
    out.flush()
    if failures:
        listed = "\n  ".join(sorted(failures))
        raise DataError(f"{len(failures)} image(s) could not be decoded:\n  {listed}")


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    h, w = image.shape[:2]
    if (h, w) == (size, size):
        return image
    # Area averaging when shrinking avoids aliasing; cubic when enlarging keeps edges.
    interp = cv2.INTER_AREA if h * w >= size * size else cv2.INTER_CUBIC
    return cv2.resize(image, (size, size), interpolation=interp)
