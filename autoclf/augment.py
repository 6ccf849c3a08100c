"""Albumentations pipelines on cached uint8 images; strength 0 means none.

Pipelines stop at a uint8 CHW tensor. Normalisation happens on the device, in the trainer,
so a quarter of the bytes cross to the GPU and the loader workers do less arithmetic. So does
the resize of un-augmented images, where the cache holds another size: with the weights'
interpolation and antialiasing, exactly as validation and predict resize them.
"""

from __future__ import annotations

import albumentations as A
import cv2
from albumentations.pytorch import ToTensorV2

# OpenCV's flags for the interpolations timm's pretrained configs name (models.interpolation).
CV2_INTERPOLATION = {"bilinear": cv2.INTER_LINEAR, "bicubic": cv2.INTER_CUBIC}


def train_transform(
    *,
    strength: float,
    size: int,
    hflip: bool = True,
    seed: int | None = None,
    interpolation: str = "bilinear",
) -> A.Compose:
    """Random augmentation whose magnitude and probability scale with ``strength`` in [0, 1].
    ``hflip=False`` leaves out horizontal flips (for digits, text, anything with a handedness).
    The random crop is resized with the weights' ``interpolation``, and by area where it
    shrinks (antialiased, as the eval resize is)."""
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"aug_strength must be in [0, 1], got aug_strength={strength}")
    if strength == 0.0:
        return eval_transform(seed=seed)
    s = strength
    ops: list[A.BasicTransform] = [
        A.RandomResizedCrop(
            size=(size, size),
            scale=(max(0.08, 1.0 - 0.75 * s), 1.0),
            interpolation=CV2_INTERPOLATION[interpolation],
            area_for_downscale="image",
        ),
        *([A.HorizontalFlip(p=0.5)] if hflip else []),
        A.Affine(
            scale=(1.0 - 0.2 * s, 1.0 + 0.2 * s),
            translate_percent=(-0.1 * s, 0.1 * s),
            rotate=(-15.0 * s, 15.0 * s),
            p=0.3 + 0.5 * s,
        ),
        A.ColorJitter(
            brightness=0.4 * s, contrast=0.4 * s, saturation=0.4 * s, hue=0.05 * s, p=0.8 * s
        ),
    ]
    if s >= 0.5:
        ops.append(
            A.CoarseDropout(
                num_holes_range=(1, 2),
                hole_height_range=(0.1, 0.25),
                hole_width_range=(0.1, 0.25),
                p=0.5 * s,
            )
        )
    return A.Compose([*ops, ToTensorV2()], seed=seed)


def eval_transform(*, seed: int | None = None) -> A.Compose:
    """No change: the trainer's ``Preprocess`` resizes on the device where the cache holds
    another size, as it does for validation and predict."""
    return A.Compose([ToTensorV2()], seed=seed)
