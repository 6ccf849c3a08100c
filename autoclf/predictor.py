"""A finalized ensemble as a Python object: ``autoclf.load(PATH).predict(images)``.

This is autoclf's one inference path. ``autoclf predict``, ``finalize --test``, the ONNX
export's check and the Python API all go through :meth:`Predictor.predict_pixels`. So every
image is decoded, resized, viewed (TTA) and voted on in the same way, whichever way it came in:
- decoded upright in RGB (:func:`autoclf.data.images.load_rgb`);
- resized to the study's square cache size (:func:`autoclf.data.cache.resize_square`);
- resized again on the device to each member's input size and normalised as its backbone
  expects (:class:`autoclf.inference.Preprocess`);
- shown to each model in each of its member's TTA views;
- averaged over a member's fold models, then voted across members as ``manifest.json`` says.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from autoclf.config import TrainParams
from autoclf.data.cache import decode_square, resize_square
from autoclf.data.images import pil_to_rgb
from autoclf.ensemble import vote
from autoclf.errors import AutoclfError, DataError
from autoclf.inference import VIEWS_BY_NAME, Preprocess, View, predict_views
from autoclf.models import load_trained

# One image: a file's path, a PIL image, or an H×W×3 uint8 RGB array.
Input = str | os.PathLike | Image.Image | np.ndarray

MANIFEST = "manifest.json"
CHUNK = 512  # images decoded at a time by predict(): memory stays bounded for long lists


@dataclass(frozen=True)
class Predictions:
    """The ensemble's output for ``n`` images, in the order they were given."""

    classes: tuple[str, ...]
    probs: np.ndarray  # (n, classes), float32: probabilities (soft vote) or vote shares (hard)

    @property
    def indices(self) -> np.ndarray:
        return self.probs.argmax(axis=1)

    @property
    def labels(self) -> list[str]:
        return [self.classes[i] for i in self.indices]

    def __len__(self) -> int:
        return len(self.probs)


@dataclass(frozen=True)
class Member:
    params: TrainParams
    views: tuple[View, ...]
    weights: tuple[Path, ...]  # one full model, or the K fold models
    weight: float  # its share of the vote


def find_final_dir(path: str | os.PathLike) -> Path:
    """``path`` itself, or its ``final/`` folder: whichever holds ``manifest.json``."""
    path = Path(path)
    for candidate in (path, path / "final"):
        if (candidate / MANIFEST).is_file():
            return candidate
    raise AutoclfError(
        f"no saved ensemble at {path}: give a study's folder (studies/NAME) or its final/ "
        "folder, once `autoclf finalize` has run"
    )


class Predictor:
    """The ensemble saved in a study's ``final/`` folder, ready to predict.

    ``keep_models``: keep every member's models in memory between calls (the API: each call is
    a forward pass, not a load), or load one model at a time and let it go (``autoclf predict``
    on a folder, where the ensemble may not fit in memory all at once).
    """

    def __init__(
        self,
        final_dir: str | os.PathLike,
        *,
        device: str | torch.device = "auto",
        keep_models: bool = True,
    ):
        from autoclf.trainer import resolve_device

        self.final_dir = find_final_dir(final_dir)
        self.manifest: dict[str, Any] = json.loads((self.final_dir / MANIFEST).read_text())
        self.classes: tuple[str, ...] = tuple(self.manifest["classes"])
        self.image_size: int = int(self.manifest["cache_size"])  # the square images are resized to
        self.vote: str = self.manifest["vote"]
        self.device = device if isinstance(device, torch.device) else resolve_device(device)
        self.members = [
            Member(
                params=TrainParams.from_dict(m["params"]),
                views=tuple(VIEWS_BY_NAME[name] for name in m["views"]),
                weights=tuple(self.final_dir / w for w in m["weights"]),
                weight=float(m["weight"]),
            )
            for m in self.manifest["members"]
        ]
        missing = [w for m in self.members for w in m.weights if not w.is_file()]
        if missing:
            raise AutoclfError(
                f"{len(missing)} model file(s) of the final ensemble are missing, the first "
                f"{missing[0]}: run `autoclf finalize` with the same options again to retrain "
                "them (the rest of its work is kept)"
            )
        self.keep_models = keep_models
        self._models: dict[Path, torch.nn.Module] = {}

    def __repr__(self) -> str:
        return (
            f"Predictor({str(self.final_dir)!r}, {len(self.members)} member(s), "
            f"{self.vote} vote, classes={list(self.classes)})"
        )

    def predict(
        self, inputs: Input | Sequence[Input], *, batch_size: int | None = None
    ) -> Predictions:
        """Predict one image or many: file paths, PIL images or H×W×3 uint8 RGB arrays (a
        (N, H, W, 3) array is N images). Always returns a batch, one row per image.
        ``batch_size``: rows (images × TTA views) a forward pass, by default
        :func:`autoclf.inference.rows_per_pass` (256 on a GPU, fewer on a CPU)."""
        items = _as_list(inputs)
        if not items:
            return Predictions(self.classes, np.zeros((0, len(self.classes)), np.float32))
        chunks = [
            self.predict_pixels(pixels, batch_size=batch_size) for pixels in self._decoded(items)
        ]
        return Predictions(self.classes, np.concatenate(chunks))

    def predict_pixels(self, images: np.ndarray, *, batch_size: int | None = None) -> np.ndarray:
        """The vote over (N, S, S, 3) uint8 images already resized to ``image_size``, as the
        image cache holds them: (N, classes), float32."""
        if len(images) == 0:
            return np.zeros((0, len(self.classes)), np.float32)
        return vote(self.vote, self.member_probs(images, batch_size=batch_size), self._weights())

    def member_probs(
        self, images: np.ndarray, *, batch_size: int | None = None
    ) -> list[np.ndarray]:
        """Each member's probabilities, its views and fold models averaged: (N, classes)."""
        out = []
        for member in self.members:
            preprocess = Preprocess(
                member.params.backbone, size=member.params.image_size, device=self.device
            )
            total = np.zeros((len(images), len(self.classes)), dtype=np.float64)
            for path in member.weights:
                model = self._model(member, path)
                views = predict_views(
                    model,
                    images,
                    preprocess=preprocess,
                    views=member.views,
                    batch_size=batch_size,
                    amp=member.params.amp,  # as the OOF that chose it was predicted
                )
                total += views.mean(axis=0)
                del model  # without keep_models: one model in memory at a time
            out.append((total / len(member.weights)).astype(np.float32))
        return out

    def _weights(self) -> list[float]:
        return [m.weight for m in self.members]

    def _model(self, member: Member, path: Path) -> torch.nn.Module:
        model = self._models.get(path)
        if model is None:
            model = load_trained(
                member.params, path, num_classes=len(self.classes), device=self.device
            )
            if self.keep_models:
                self._models[path] = model
        return model

    def _decoded(self, items: list[Input]) -> Iterator[np.ndarray]:
        for start in range(0, len(items), CHUNK):
            chunk = items[start : start + CHUNK]
            yield np.stack(
                [to_pixels(x, self.image_size, index=start + i) for i, x in enumerate(chunk)]
            )


def load(path: str | os.PathLike, *, device: str | torch.device = "auto") -> Predictor:
    """The ensemble of a finalized study: ``path`` is its folder (studies/NAME) or ``final/``."""
    return Predictor(path, device=device)


def to_pixels(item: Input, size: int, *, index: int = 0) -> np.ndarray:
    """One input as the image cache would hold it: ``size``×``size``×3 uint8. Errors name the
    input by its position (and its path, where it has one)."""
    if isinstance(item, (str, os.PathLike)):
        path = Path(item)
        if not path.is_file():
            raise DataError(f"input {index}: no such file: {path}")
        try:
            return decode_square(path, size)  # as the cache decodes it
        except DataError as exc:
            raise DataError(f"input {index}: {exc}") from exc
    elif isinstance(item, Image.Image):
        try:
            rgb = pil_to_rgb(item)
        except (OSError, ValueError) as exc:
            raise DataError(f"input {index}: cannot read the PIL image: {exc}") from exc
    elif isinstance(item, np.ndarray):
        if item.dtype != np.uint8 or item.ndim != 3 or item.shape[2] != 3 or 0 in item.shape:
            raise DataError(
                f"input {index}: an array of shape {item.shape} and dtype {item.dtype}; expected "
                "an H×W×3 uint8 RGB array (or a PIL image: Image.fromarray(a).convert('RGB'))"
            )
        rgb = item
    else:
        raise DataError(
            f"input {index}: a {type(item).__name__}; expected a file path, a PIL image or an "
            "H×W×3 uint8 RGB array"
        )
    return resize_square(np.ascontiguousarray(rgb), size)


def _as_list(inputs: Input | Sequence[Input]) -> list[Input]:
    """One input or many, as a list: a (N, H, W, 3) array is N images; a 3-D one is one."""
    if isinstance(inputs, (str, os.PathLike, Image.Image)):
        return [inputs]
    if isinstance(inputs, np.ndarray):
        return list(inputs) if inputs.ndim == 4 else [inputs]
    return list(inputs)
