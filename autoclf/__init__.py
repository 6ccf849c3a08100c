"""autoclf: AutoML for image classification on Optuna, timm and albumentations.

In Python, a finalized study predicts with ``autoclf.load("studies/NAME").predict(images)``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"

if TYPE_CHECKING:
    import os

    from autoclf.predictor import Predictor


def load(path: str | os.PathLike, *, device: str = "auto") -> Predictor:
    """The ensemble that ``autoclf finalize`` saved: ``path`` is the study's folder
    (``studies/NAME``) or its ``final/`` folder; ``device``: auto (the first GPU, else the
    CPU), cpu, cuda or cuda:N. ``load(path).predict(images)`` takes file paths, PIL images or
    H×W×3 uint8 RGB arrays, one or many, and returns their labels and probabilities.

    torch and timm are imported here, not by ``import autoclf``.
    """
    from autoclf.predictor import load as _load

    return _load(path, device=device)
