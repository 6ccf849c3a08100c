"""Decode and resize every image once into a memory-mapped uint8 array that all trials share.

The file name carries a hash of the paths, file sizes, modification times and the pixel size,
so changed data gets a new cache instead of silently reusing a stale one.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
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
    skipped: dict[str, str] = field(default_factory=dict)  # left out: path → reason

    @property
    def size(self) -> int:
        return int(self.images.shape[1])


def cache_key(paths: Sequence[str], size: int) -> str:
    digest = hashlib.sha1(f"v1 size={size}\n".encode())
    for p in paths:
        st = os.stat(p)
        digest.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


class BadImagesError(DataError):
    """Images that cannot be decoded; ``bad`` maps each path to its reason."""

    def __init__(self, bad: dict[str, str]):
        self.bad = dict(sorted(bad.items()))
        listed = "\n  ".join(self.bad.values())
        super().__init__(
            f"{len(bad)} image(s) could not be decoded:\n  {listed}\n"
            "Fix or remove them, or pass --skip-bad-images to leave them out."
        )


class _Filtered(Exception):
    def __init__(self, path: Path):
        self.path = path


def build_cache(
    paths: Sequence[str],
    *,
    size: int,
    cache_dir: str | Path,
    on_progress: ProgressFn | None = None,
    skip_bad: bool = False,
) -> ImageCache:
    """Return the cache for ``paths`` at ``size`` px, decoding only if it does not exist yet.

    Every image is decoded in full first (PIL decodes lazily: a truncated file fails at load,
    not at open). Files that cannot be decoded raise :class:`BadImagesError`, all of them named;
    with ``skip_bad`` they are left out instead: the cache then holds the other images, in
    order, and ``ImageCache.skipped`` says which were left out and why.

    Images are resized to a square (aspect ratio not kept), so every pixel of the original
    stays visible to the model and to random crops.
    """
    target = _cache_file(cache_dir, paths, size)
    if target.is_file():
        return ImageCache(np.load(target, mmap_mode="r"), target)
    bad: dict[str, str] = {}
    try:
        with atomic.atomic_path(target, suffix=".npy") as tmp:
            bad = _decode_into(tmp, paths, size, on_progress)
            if bad and not skip_bad:
                raise BadImagesError(bad)
            if bad:
                keep = [i for i, p in enumerate(paths) if p not in bad]
                filtered = _cache_file(cache_dir, [paths[i] for i in keep], size)
                rows = np.load(tmp, mmap_mode="r")
                atomic.write_with(filtered, lambda t: _copy_rows(t, rows, keep), suffix=".npy")
                # Never publish the unfiltered file: its rows for bad images are blank, and a
                # later run without --skip-bad-images would take them for real images.
                raise _Filtered(filtered)
    except _Filtered as done:
        return ImageCache(np.load(done.path, mmap_mode="r"), done.path, skipped=bad)
    return ImageCache(np.load(target, mmap_mode="r"), target)


def _cache_file(cache_dir: str | Path, paths: Sequence[str], size: int) -> Path:
    return Path(cache_dir) / f"images-{size}px-{cache_key(paths, size)}.npy"


def _copy_rows(tmp: Path, rows: np.ndarray, keep: list[int]) -> None:
    out = np.lib.format.open_memmap(
        tmp, mode="w+", dtype=rows.dtype, shape=(len(keep), *rows.shape[1:])
    )
    for start in range(0, len(keep), 1024):  # in chunks: the cache may not fit in memory
        out[start : start + 1024] = rows[keep[start : start + 1024]]
    out.flush()


def _decode_into(
    tmp: Path, paths: Sequence[str], size: int, on_progress: ProgressFn | None
) -> dict[str, str]:
    """Decode every image into the memmap at ``tmp``; return {path: reason} of those that
    could not be decoded (their rows stay blank)."""
    out = np.lib.format.open_memmap(
        tmp, mode="w+", dtype=np.uint8, shape=(len(paths), size, size, 3)
    )
    failures: dict[str, str] = {}

    def work(i: int) -> None:
        try:
            out[i] = decode_square(paths[i], size)
        except DataError as exc:
            failures[paths[i]] = str(exc)

    # PIL and OpenCV release the GIL while decoding and resizing, so threads scale here.
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for done, _ in enumerate(pool.map(work, range(len(paths))), start=1):
            if on_progress is not None:
                on_progress(done, len(paths))
    out.flush()
    return failures


def decode_square(path: str | Path, size: int) -> np.ndarray:
    """One image file as the cache holds it: ``size``×``size``×3 uint8, upright RGB."""
    return resize_square(load_rgb(path, min_side=size), size)


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    h, w = image.shape[:2]
    if (h, w) == (size, size):
        return image
    # Area averaging when shrinking avoids aliasing; cubic when enlarging keeps edges.
    interp = cv2.INTER_AREA if h * w >= size * size else cv2.INTER_CUBIC
    return cv2.resize(image, (size, size), interpolation=interp)
