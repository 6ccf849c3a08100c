"""Predict a folder or CSV of images with a saved ensemble (``autoclf predict``): index, decode
into a cache, then :class:`autoclf.predictor.Predictor`, the one inference path."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import confusion_matrix

from autoclf import atomic
from autoclf.data.cache import ImageCache, build_cache
from autoclf.data.index import build_prediction_index
from autoclf.errors import DataError
from autoclf.metrics import METRICS
from autoclf.predictor import Predictor


@dataclass
class PredictResult:
    paths: tuple[str, ...]
    classes: tuple[str, ...]
    probs: np.ndarray  # (images, classes): probabilities (soft vote) or vote shares (hard)
    labels: np.ndarray | None  # true labels, where the data has them
    metrics: dict[str, Any] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # left out, undecodable: path → why

    @property
    def predicted(self) -> np.ndarray:
        return self.probs.argmax(axis=1)


@dataclass
class Images:
    """The images to predict, decoded: those left out (``skipped``) are not in the others."""

    paths: tuple[str, ...]
    labels: np.ndarray | None
    cache: ImageCache
    skipped: dict[str, str]


def load_images(
    data: str,
    *,
    classes: tuple[str, ...],
    size: int,
    final_dir: str | Path,
    studies_dir: str | Path = "studies",
    skip_bad: bool = False,
) -> Images:
    """Index and decode ``data`` into the final folder's cache. An undecodable image stops with
    every such path named, or with ``skip_bad`` is left out."""
    paths, labels = build_prediction_index(
        data, classes=classes, datasets_dir=Path(studies_dir).resolve() / "_datasets"
    )
    cache = build_cache(paths, size=size, cache_dir=Path(final_dir) / "cache", skip_bad=skip_bad)
    if cache.skipped and len(cache.skipped) == len(paths):
        raise DataError(
            f"no image in {data} decodes: --skip-bad-images left out all {len(paths)}, e.g. "
            f"{next(iter(cache.skipped.values()))}"
        )
    if cache.skipped:
        keep = [i for i, p in enumerate(paths) if p not in cache.skipped]
        paths = tuple(paths[i] for i in keep)
        labels = labels[keep] if labels is not None else None
    return Images(paths, labels, cache, dict(cache.skipped))


def predict(
    final_dir: str | Path,
    data: str,
    *,
    device: torch.device,
    studies_dir: str | Path = "studies",
    skip_bad: bool = False,
    images: Images | None = None,
) -> PredictResult:
    """Predict ``data`` with the ensemble in ``final_dir``; ``images``: ``data`` already
    loaded by :func:`load_images` (as finalize does before it trains)."""
    final_dir = Path(final_dir)
    # One model in memory at a time: the whole ensemble may not fit at once.
    predictor = Predictor(final_dir, device=device, keep_models=False)
    classes = predictor.classes
    if images is None:
        images = load_images(
            data,
            classes=classes,
            size=predictor.image_size,
            final_dir=final_dir,
            studies_dir=studies_dir,
            skip_bad=skip_bad,
        )
    paths, labels = images.paths, images.labels
    probs = predictor.predict_pixels(images.cache.images)
    result = PredictResult(paths, classes, probs, labels, skipped=images.skipped)
    if labels is not None:
        result.metrics = {name: metric(labels, probs) for name, metric in METRICS.items()}
        result.metrics["confusion_matrix"] = confusion_matrix(
            labels, result.predicted, labels=np.arange(len(classes))
        ).tolist()
        result.metrics["classes"] = list(classes)
    return result


def write_predictions(result: PredictResult, target: str | Path) -> None:
    """CSV: path, predicted label, one probability column per class (``prob_<class>``)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path", "label", *(f"prob_{c}" for c in result.classes)])
    for path, pred, row in zip(result.paths, result.predicted, result.probs, strict=True):
        writer.writerow([path, result.classes[pred], *(f"{p:.6f}" for p in row)])
    atomic.write_text(target, buffer.getvalue())
