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


def test_training_images_are_resized_as_validation_and_predict_resize_them():
    """Strength 0: the training batch reaches the model exactly as a validation batch does
    (Preprocess: the weights' interpolation, antialiased); above 0 the random crop uses the
    weights' interpolation, and area where it shrinks."""
    import cv2
    import torch

    from autoclf.inference import Preprocess

    images = np.random.default_rng(0).integers(0, 256, (4, 64, 64, 3), dtype=np.uint8)
    preprocess = Preprocess("tf_efficientnet_lite0", size=32, device=torch.device("cpu"))
    plain = train_transform(strength=0.0, size=32, seed=0, interpolation="bicubic")
    trained = preprocess(torch.stack([plain(image=im)["image"] for im in images]))
    assert torch.equal(trained, preprocess(torch.from_numpy(images)))
    crop = train_transform(strength=0.3, size=32, seed=0, interpolation="bicubic").transforms[0]
    assert (crop.interpolation, crop.area_for_downscale) == (cv2.INTER_CUBIC, "image")
