from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from autoclf import atomic


def test_written_files_follow_the_umask(tmp_path):
    atomic.write_text(tmp_path / "a.txt", "hello")
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o666 & ~mask


def test_private_files_are_readable_by_their_owner_alone(tmp_path):
    atomic.write_json(tmp_path / "config.json", {"storage": "postgresql://u:pw@h/db"}, private=True)
    assert stat.S_IMODE((tmp_path / "config.json").stat().st_mode) == 0o600


def test_failed_write_leaves_old_file_and_no_temp(tmp_path):
    target = tmp_path / "x.npy"
    atomic.save_npy(target, np.arange(3))

    def half_write(tmp):
        tmp.write_bytes(b"partial")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        atomic.write_with(target, half_write, suffix=".npy")
    assert np.load(target).tolist() == [0, 1, 2]
    assert [p.name for p in tmp_path.iterdir()] == ["x.npy"]
