from __future__ import annotations

import os

import numpy as np
import pytest

from autoclf.data.cache import build_cache
from autoclf.data.index import build_index
from autoclf.errors import DataError


def test_cache_decodes_once_and_is_shared(image_folder, tmp_path):
    index = build_index(image_folder, datasets_dir=tmp_path)
    progress = []
    cache = build_cache(
        index.paths,
        size=24,
        cache_dir=tmp_path / "cache",
        on_progress=lambda done, total: progress.append((done, total)),
    )
    assert cache.images.shape == (15, 24, 24, 3) and cache.images.dtype == np.uint8
    assert progress[-1] == (15, 15)
    again = build_cache(
        index.paths,
        size=24,
        cache_dir=tmp_path / "cache",
        on_progress=lambda *a: pytest.fail("decoded a second time"),
    )
    assert again.path == cache.path
    assert np.array_equal(np.asarray(again.images), np.asarray(cache.images))
    assert isinstance(again.images, np.memmap)


def test_changed_file_gets_a_new_cache(image_folder, tmp_path):
    index = build_index(image_folder, datasets_dir=tmp_path)
    first = build_cache(index.paths, size=16, cache_dir=tmp_path / "cache")
    stat = os.stat(index.paths[0])
    os.utime(index.paths[0], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    second = build_cache(index.paths, size=16, cache_dir=tmp_path / "cache")
    assert second.path != first.path


def test_all_bad_files_named_in_one_error_and_no_cache_left(image_folder, tmp_path):
    (image_folder / "cat" / "zero.png").write_bytes(b"")
    (image_folder / "dog" / "text.png").write_text("hello")
    index = build_index(image_folder, datasets_dir=tmp_path)
    with pytest.raises(DataError) as info:
        build_cache(index.paths, size=16, cache_dir=tmp_path / "cache")
    assert "zero.png" in str(info.value) and "text.png" in str(info.value)
    assert "2 image(s)" in str(info.value)
    assert not list((tmp_path / "cache").iterdir())  # the atomic write left nothing behind
