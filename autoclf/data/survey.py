"""Look at the data before training on it: every image decoded once, described, and checked.

The survey is what ``autoclf inspect`` shows: class balance, image sizes, modes and formats,
files that cannot be decoded, files that do not look like the rest (a placeholder GIF among
photos, a blank image), and sets of duplicate images.
"""

from __future__ import annotations

import os
import statistics
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from autoclf.data.cache import resize_square
from autoclf.data.duplicates import Duplicates, find_duplicates, perceptual_hashes
from autoclf.data.images import load_rgb
from autoclf.data.index import DataIndex
from autoclf.errors import DataError
from autoclf.metrics import imbalance_ratio

HASH_SIZE = 32  # px: images are hashed from a square of this size, as from the search cache
RARE_FORMAT = 0.05  # a file format used by fewer than this share of the images stands out
FEW_COLOURS = 64  # a "photo" with at most this many colours is a graphic or a placeholder
FLAT = 2.0  # pixel standard deviation below which an image is one flat colour
SMALL = 0.25  # an image whose short side is under this share of the median short side


@dataclass(frozen=True)
class ImageInfo:
    """One file as found on disk; ``problem`` says why it cannot be decoded (else None)."""

    path: str
    label: int
    bytes: int
    format: str | None = None  # as PIL names it: JPEG, PNG, GIF, …
    mode: str | None = None  # as stored: RGB, L, P, CMYK, I;16, …
    width: int = 0  # upright (after the EXIF rotation)
    height: int = 0
    rotated: bool = False  # stored sideways or upside down, with an EXIF orientation
    colours: int | None = None  # distinct colours when there are at most 256, else None
    spread: float = 0.0  # standard deviation of the pixel values
    problem: str | None = None


@dataclass(frozen=True)
class Survey:
    source: str
    classes: tuple[str, ...]
    images: tuple[ImageInfo, ...]
    duplicates: Duplicates  # indices into ``images``

    @property
    def decoded(self) -> list[ImageInfo]:
        return [im for im in self.images if im.problem is None]

    @property
    def bad(self) -> list[ImageInfo]:
        return [im for im in self.images if im.problem is not None]

    def class_counts(self) -> dict[str, int]:
        counts = Counter(im.label for im in self.images)
        return {name: counts[i] for i, name in enumerate(self.classes)}

    @property
    def imbalance(self) -> float:
        return imbalance_ratio(self.class_counts().values())

    def counted(self, field: str) -> Counter:
        """How many decodable images have each value of ``field`` (``format`` or ``mode``)."""
        return Counter(getattr(im, field) for im in self.decoded)

    def odd(self) -> list[tuple[int, list[str]]]:
        """Images that decode but do not look like the rest: (index, reasons)."""
        decoded = self.decoded
        if not decoded:
            return []
        formats = self.counted("format")
        common, _ = formats.most_common(1)[0]
        photos = sum(im.colours is None for im in decoded) / len(decoded)
        short_sides = statistics.median(min(im.width, im.height) for im in decoded)
        found = []
        for i, im in enumerate(self.images):
            if im.problem is not None:
                continue
            reasons = []
            if im.format != common and formats[im.format] < RARE_FORMAT * len(decoded):
                n = formats[im.format]
                alone = f"the only {im.format} file" if n == 1 else f"one of {n} {im.format} files"
                reasons.append(f"{alone} among {formats[common]} {common} files")
            if photos >= 0.9 and im.colours is not None and im.colours <= FEW_COLOURS:
                reasons.append(
                    f"only {im.colours} colours where the others are photographs: "
                    "a placeholder or a graphic?"
                )
            if im.spread < FLAT:
                reasons.append("a single flat colour")
            if min(im.width, im.height) < SMALL * short_sides:
                reasons.append(
                    f"{im.width}×{im.height} px, far smaller than most "
                    f"(median short side {short_sides:g} px)"
                )
            if reasons:
                found.append((i, reasons))
        return found


def survey(
    index: DataIndex, *, source: str, on_progress: Callable[[int, int], None] | None = None
) -> Survey:
    """Decode every image of ``index`` in full, describe it, and look for duplicates."""
    hashes: dict[int, np.uint64] = {}

    def look(i: int) -> ImageInfo:
        info, square = _look(index.paths[i], index.labels[i])
        if square is not None:
            hashes[i] = perceptual_hashes(square[None])[0]
        return info

    images = []
    # Decoding releases the GIL, so threads keep every core busy.
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for done, info in enumerate(pool.map(look, range(len(index))), start=1):
            images.append(info)
            if on_progress is not None:
                on_progress(done, len(index))
    order = sorted(hashes)
    found = find_duplicates(np.array([hashes[i] for i in order], dtype=np.uint64))
    duplicates = Duplicates(
        groups=tuple(tuple(order[i] for i in group) for group in found.groups),
        pairs=tuple((order[i], order[j], d) for i, j, d in found.pairs),
    )
    return Survey(source, index.classes, tuple(images), duplicates)


def _look(path: str, label: int) -> tuple[ImageInfo, np.ndarray | None]:
    size = Path(path).stat().st_size
    try:
        with Image.open(path) as im:  # the header only: format, mode, orientation
            fmt, mode = im.format, im.mode
            rotated = im.getexif().get(0x0112, 1) not in (1, None)
        rgb = load_rgb(path)  # the whole image, as training will see it
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, DataError) as exc:
        reason = str(exc) if isinstance(exc, DataError) else f"cannot decode image {path}: {exc}"
        return ImageInfo(path=path, label=label, bytes=size, problem=reason), None
    colours = Image.fromarray(rgb).getcolors(256)
    info = ImageInfo(
        path=path,
        label=label,
        bytes=size,
        format=fmt,
        mode=mode,
        width=rgb.shape[1],
        height=rgb.shape[0],
        rotated=rotated,
        colours=len(colours) if colours is not None else None,
        spread=float(rgb.std()),
    )
    return info, resize_square(rgb, HASH_SIZE)
