from __future__ import annotations

import numpy as np

from autoclf.augment import train_transform


def _mirrored_share(hflip: bool) -> float:
    """Share of 60 augmented copies of a left-bright image that come out right-bright."""
    image = np.zeros((32, 32, 3), dtype=np.uint8)
    image[:, :16] = 255
    transform = train_transform(strength=0.05, size=32, hflip=hflip, seed=0)
    mirrored = 0
    for _ in range(60):
        out = transform(image=image)["image"].float()
        mirrored += bool(out[:, :, 16:].mean() > out[:, :, :16].mean())
    return mirrored / 60


def test_hflip_false_never_mirrors_and_true_mirrors_about_half():
    assert _mirrored_share(hflip=False) == 0.0
    assert 0.25 < _mirrored_share(hflip=True) < 0.75
