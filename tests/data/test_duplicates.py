"""Exact and near-duplicate images: found by perceptual hash, kept within one fold."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from autoclf.config import SearchConfig
from autoclf.data.cache import resize_square
from autoclf.data.duplicates import MAX_DISTANCE, find_duplicates, fold_groups, perceptual_hashes
from autoclf.data.folds import assign_folds
from autoclf.data.images import load_rgb
from autoclf.search.runner import prepare
from tests.conftest import photo

SPACE = "params: {backbone: test_resnet, image_size: 32, epochs: 1}\n"


def reencoded(image: np.ndarray, *, scale: float, quality: int) -> np.ndarray:
    h, w = image.shape[:2]
    buffer = io.BytesIO()
    Image.fromarray(image).resize((int(w * scale), int(h * scale))).save(
        buffer, "JPEG", quality=quality
    )
    return load_rgb(io.BytesIO(buffer.getvalue()))


def hashes_of(*images: np.ndarray, size: int = 32) -> np.ndarray:
    return perceptual_hashes(np.stack([resize_square(im, size) for im in images]))


def distance(a: np.uint64, b: np.uint64) -> int:
    return int(np.bitwise_count(a ^ b))


@pytest.mark.parametrize("size", [32, 224])
def test_a_resized_recompressed_copy_is_near_and_other_pictures_are_far(size):
    original = photo(0)
    brighter = np.clip(original.astype(np.int16) + 12, 0, 255).astype(np.uint8)
    h = hashes_of(
        original,
        reencoded(original, scale=0.6, quality=60),
        brighter,
        *(photo(s) for s in range(1, 30)),
        size=size,
    )
    assert distance(h[0], h[1]) <= MAX_DISTANCE
    assert distance(h[0], h[2]) <= MAX_DISTANCE
    others = [distance(h[i], h[j]) for i in range(2, len(h)) for j in range(i + 1, len(h))]
    assert min(others) > MAX_DISTANCE


def test_bands_find_every_close_pair_that_brute_force_finds():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 2**63, 300, dtype=np.uint64)
    flips = [np.uint64(1) << np.uint64(b) for b in rng.integers(0, 64, (300, 6))]
    near = base.copy()
    for k in range(300):  # plant copies 0..6 bits away from their original
        for bit in flips[k][: k % 7]:
            near[k] ^= bit
    hashes = np.concatenate([base, near])
    found = find_duplicates(hashes, max_distance=4)
    brute = {
        (i, j)
        for i in range(len(hashes))
        for j in range(i + 1, len(hashes))
        if distance(hashes[i], hashes[j]) <= 4
    }
    assert {(i, j) for i, j, _ in found.pairs} == brute
    assert len(brute) >= 200  # the planted pairs with 0–4 flips (some flips repeat a bit)


def test_duplicates_of_duplicates_form_one_set():
    a = np.uint64(0b1111)
    hashes = np.array([a, a ^ np.uint64(0b1 << 20), a ^ np.uint64(0b11 << 20), ~a], np.uint64)
    found = find_duplicates(hashes, max_distance=1)
    assert found.groups == ((0, 1, 2),)  # 0~1 and 1~2 link 0 and 2 (2 bits apart)
    assert found.images == 3 and found.spanning_classes([0, 0, 1, 1]) == [(0, 1, 2)]


def test_fold_groups_join_the_data_groups_that_duplicates_link():
    found = find_duplicates(np.array([1, 1, 2**40, 2**50, 2**60], np.uint64), max_distance=0)
    far_apart = np.array([0, 2**64 - 1], np.uint64)
    assert fold_groups(2, None, find_duplicates(far_apart)) is None
    merged = fold_groups(5, ["p", "q", "q", "r", "p"], found)
    assert merged[0] == merged[1] == merged[2] == merged[4] and merged[3] != merged[0]
    alone = fold_groups(5, None, found)
    assert alone[0] == alone[1] and len(set(alone)) == 4


def write_csv_data(root: Path) -> Path:
    """24 photos in 8 groups whose images span both classes, and two copies of a photo of
    group g0 filed in groups g5 (re-encoded) and g7 (unchanged) under the other label."""
    rows = ["path,label,group"]
    for i in range(24):
        name = f"img{i}.png"
        Image.fromarray(photo(100 + i)).save(root / name)
        rows.append(f"{name},{'cat' if i % 2 else 'dog'},g{i % 8}")
    Image.fromarray(reencoded(photo(100), scale=0.7, quality=70)).save(root / "copy.png")
    Image.fromarray(photo(100)).save(root / "same.png")
    rows += ["copy.png,dog,g5", "same.png,cat,g7"]
    (root / "data.csv").write_text("\n".join(rows) + "\n")
    return root / "data.csv"


def csv_config(tmp_path: Path, **options) -> SearchConfig:
    (tmp_path / "space.yaml").write_text(SPACE)
    return SearchConfig(
        data=str(write_csv_data(tmp_path)),
        study="s",
        space=str(tmp_path / "space.yaml"),
        folds=3,
        studies_dir=str(tmp_path / "studies"),
        **options,
    )


def test_groups_and_duplicates_spanning_classes_never_straddle_folds(tmp_path):
    config = csv_config(tmp_path)
    prepared = prepare(config)
    index, folds = prepared.index, prepared.folds
    fold_of = {}
    for group, fold in zip(index.groups, folds, strict=True):
        fold_of.setdefault(group, set()).add(int(fold))
    assert all(len(f) == 1 for f in fold_of.values())  # a data group never spans two folds
    assert fold_of["g0"] == fold_of["g5"] == fold_of["g7"]  # joined by the copies of img0
    assert prepared.duplicates.groups == ((0, 24, 25),)  # img0, copy.png, same.png
    listed = (prepared.study_dir / "duplicates.csv").read_text()
    assert "img0.png,dog" in listed and "copy.png,dog" in listed and "same.png,cat" in listed
    assert len(set(folds.tolist())) == 3

    # Resuming reads the folds back; it does not hash or regroup anything.
    again = prepare(config)
    assert again.duplicates is None and (again.folds == folds).all()


def test_ignore_reports_duplicates_but_splits_by_the_data_groups_alone(tmp_path):
    prepared = prepare(csv_config(tmp_path, duplicates="ignore"))
    assert prepared.duplicates.groups == ((0, 24, 25),)
    plain = assign_folds(
        prepared.index.label_array, n_splits=3, seed=0, groups=prepared.index.groups
    )
    assert (prepared.folds == plain).all()
    assert len({int(prepared.folds[i]) for i in (0, 24, 25)}) > 1  # the leak grouping prevents
