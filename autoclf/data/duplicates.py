"""Exact and near-duplicate images, found by perceptual hash, so that they share a fold.

A photo saved twice, resized or re-compressed, on both sides of a split makes validation
scores lie: the model is graded on an image it trained on. Each image gets a 64-bit DCT hash
(pHash) of its cached pixels; images whose hashes differ in at most ``max_distance`` bits are
duplicates, and duplicates of duplicates form one group.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

HASH_SIZE = 8  # 8×8 low frequencies → 64 bits
MAX_DISTANCE = 4  # bits out of 64: same picture after resizing, JPEG or a small tone change


@dataclass(frozen=True)
class Duplicates:
    """Groups of duplicate images (indices into the index, each group sorted, ≥ 2 long) and
    every pair found, as (i, j, bits that differ)."""

    groups: tuple[tuple[int, ...], ...]
    pairs: tuple[tuple[int, int, int], ...]

    @property
    def images(self) -> int:
        return sum(len(g) for g in self.groups)

    def spanning_classes(self, labels: Sequence[int]) -> list[tuple[int, ...]]:
        """Groups whose images carry different labels: the same picture filed twice."""
        return [g for g in self.groups if len({labels[i] for i in g}) > 1]


def perceptual_hashes(images: np.ndarray) -> np.ndarray:
    """One 64-bit pHash per image of an (N, H, W, 3) uint8 array, as uint64."""
    side = HASH_SIZE * 4
    small = np.empty((len(images), side, side), dtype=np.float32)
    for i, image in enumerate(images):  # one image at a time: the array may be a large memmap
        gray = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)
        small[i] = cv2.resize(gray, (side, side), interpolation=cv2.INTER_AREA)
    basis = _dct_matrix(side)[:HASH_SIZE]  # only the lowest frequencies are kept
    low = basis @ small @ basis.T  # (N, 8, 8): 2-D DCT-II of every image at once
    flat = low.reshape(len(images), -1)
    bits = flat > np.median(flat[:, 1:], axis=1, keepdims=True)  # DC term left out
    return np.packbits(bits, axis=1).view(">u8").ravel().astype(np.uint64)


def find_duplicates(hashes: np.ndarray, *, max_distance: int = MAX_DISTANCE) -> Duplicates:
    """Group images whose hashes are within ``max_distance`` bits.

    Pairs are found without comparing all N² of them: split the 64 bits into
    ``max_distance + 1`` bands; two hashes that differ in at most ``max_distance`` bits agree
    exactly on at least one band (pigeonhole), so only images sharing a band value are compared.
    """
    hashes = np.asarray(hashes, dtype=np.uint64)
    pairs: dict[tuple[int, int], int] = {}
    for band in _bands(max_distance + 1):
        buckets: dict[int, list[int]] = defaultdict(list)
        for i, value in enumerate((hashes & band).tolist()):
            buckets[value].append(i)
        for members in buckets.values():
            if len(members) > 1:
                _close_pairs(hashes, np.asarray(members), max_distance, pairs)
    parent = list(range(len(hashes)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in pairs:
        parent[root(i)] = root(j)
    members: dict[int, list[int]] = defaultdict(list)
    for i in range(len(hashes)):
        members[root(i)].append(i)
    groups = sorted(tuple(m) for m in members.values() if len(m) > 1)
    return Duplicates(
        groups=tuple(groups), pairs=tuple(sorted((i, j, d) for (i, j), d in pairs.items()))
    )


def fold_groups(n: int, groups: Sequence[str] | None, duplicates: Duplicates) -> list[str] | None:
    """The groups to split by: the data's own groups, joined wherever duplicates link them
    (a duplicate pair across two groups makes them one). ``None`` when nothing is grouped."""
    if groups is None and not duplicates.groups:
        return None
    labels = list(groups) if groups is not None else [f"image {i}" for i in range(n)]
    parent = {g: g for g in labels}

    def root(g: str) -> str:
        while parent[g] != g:
            parent[g] = parent[parent[g]]
            g = parent[g]
        return g

    for group in duplicates.groups:
        first = root(labels[group[0]])
        for i in group[1:]:
            parent[root(labels[i])] = first
    return [root(g) for g in labels]


def _close_pairs(
    hashes: np.ndarray, members: np.ndarray, max_distance: int, out: dict[tuple[int, int], int]
) -> None:
    for start in range(0, len(members), 1024):  # rows in chunks: a bucket can be large
        rows = members[start : start + 1024]
        distance = np.bitwise_count(hashes[rows][:, None] ^ hashes[members][None, :])
        for r, c in zip(*np.nonzero(distance <= max_distance), strict=True):
            i, j = int(rows[r]), int(members[c])
            if i < j:
                out[(i, j)] = int(distance[r, c])


def _bands(count: int) -> list[np.uint64]:
    edges = np.linspace(0, 64, count + 1).round().astype(int)
    spans = zip(edges[:-1], edges[1:], strict=True)
    return [np.uint64(((1 << int(hi - lo)) - 1) << int(lo)) for lo, hi in spans]


def _dct_matrix(n: int) -> np.ndarray:
    """Orthonormal DCT-II basis: row k is frequency k."""
    k = np.arange(n)[:, None]
    x = np.arange(n)[None, :]
    basis = np.cos(np.pi * (2 * x + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    basis[0] /= np.sqrt(2.0)
    return basis.astype(np.float32)
