"""Albumentations pipelines on cached uint8 images; strength 0 means resize only.

Pipelines stop at a uint8 CHW tensor. Normalisation happens on the device, in the trainer,
so a quarter of the bytes cross to the GPU and the loader workers do less arithmetic.
"""

from __future__ import annotations

import albumentations as A
from albumentations.pytorch import ToTensorV2


def train_transform(
    *, strength: float, size: int, hflip: bool = True, seed: int | None = None
) -> A.Compose:
    """Random augmentation whose magnitude and probability scale with ``strength`` in [0, 1].
    ``hflip=False`` leaves out horizontal flips (for digits, text, anything with a handedness)."""
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"aug_strength must be in [0, 1], got aug_strength={strength}")
    if strength == 0.0:
        return eval_transform(size=size, seed=seed)
    s = strength
    ops: list[A.BasicTransform] = [
        A.RandomResizedCrop(size=(size, size), scale=(max(0.08, 1.0 - 0.75 * s), 1.0)),
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


def eval_transform(*, size: int, seed: int | None = None) -> A.Compose:
    """Resize only (a no-op when the cache is already at ``size``)."""
    return A.Compose([A.Resize(size, size), ToTensorV2()], seed=seed)
