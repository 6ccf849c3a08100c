"""The frozen pretrained body's pooled features of every image: computed once per (backbone,
image size, views) for a whole study, and shared by its trials and workers.

Head-only trials train on them in seconds, and LP-FT trials fit their first head on them
(``autoclf/head.py``). ``features/<backbone>-<size>px-<views>-<key>.npy`` holds a float32 array
(views, images, features); the key hashes the decoded cache's name (which changes with any
image's path, size or modification time), the backbone's weights file and the preprocessing,
so changed data or weights get new features instead of stale ones. The file is published by
an atomic rename, so a killed build leaves nothing a later run would read, and an flock beside
it makes every other worker wait for the one computing instead of computing again.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from autoclf import atomic, pretrained
from autoclf.config import TrainParams
from autoclf.inference import VIEWS, Preprocess, View, apply_views, autocast_for
from autoclf.models import MEMORY_FORMAT, create_model, interpolation, normalization
from autoclf.threads import follow_free_cores

FORMAT = "v1"  # bump when the way features are computed changes
LogFn = Callable[[str], None]
logger = logging.getLogger("autoclf.features")  # a worker's log file


def feature_views(hflip: bool) -> tuple[View, ...]:
    """The views whose features are cached: the image, and its mirror image where the trial
    flips images (a free augmentation for the head, and its two TTA views)."""
    return VIEWS[:2] if hflip else VIEWS[:1]


@dataclass
class FeatureStore:
    """Where a study keeps its features, and what it computes them from."""

    folder: Path  # <study>/features
    images: np.ndarray  # the study's decoded cache, one row per image of its index
    images_name: str  # the cache file's name: a hash of every image's path, size and mtime
    device: torch.device

    def path(self, params: TrainParams) -> Path:
        views = feature_views(params.hflip)
        weights = pretrained.stored_file(params.backbone)
        key = hashlib.sha1(
            "\n".join(
                [
                    FORMAT,
                    self.images_name,
                    params.backbone,
                    str(params.image_size),
                    ",".join(v.name for v in views),
                    repr(normalization(params.backbone)),
                    interpolation(params.backbone),
                    pretrained.verify(weights) if weights else "timm",
                ]
            ).encode()
        ).hexdigest()[:16]
        name = f"{params.backbone}-{params.image_size}px-{'+'.join(v.name for v in views)}"
        return self.folder / f"{name}-{key}.npy"

    def get(self, params: TrainParams, *, log: LogFn = lambda _: None) -> np.ndarray:
        """(views, images, features) for ``params``' backbone, size and flips, memory-mapped;
        computed here if no worker has yet. ``log`` (and the worker's log) says which."""
        path = self.path(params)
        if not path.is_file():
            with atomic.FileLock(path.with_suffix(".lock")):
                if not path.is_file():  # else another worker computed them meanwhile
                    start = time.perf_counter()
                    views = feature_views(params.hflip)
                    features = pooled_features(
                        params.backbone,
                        self.images,
                        size=params.image_size,
                        views=views,
                        device=self.device,
                    )
                    atomic.save_npy(path, features)
                    _say(
                        log,
                        f"features computed: {params.backbone} at {params.image_size} px, "
                        f"{len(views)} view(s) of {features.shape[1]} images, "
                        f"{features.shape[2]} each, in {time.perf_counter() - start:.1f} s "
                        f"-> {path.name}",
                    )
                    return np.load(path, mmap_mode="r")
        log(f"features loaded: {path.name}")  # the trial's log; the worker's says when computed
        return np.load(path, mmap_mode="r")


@torch.inference_mode()
def pooled_features(
    backbone: str,
    images: np.ndarray,
    *,
    size: int,
    views: tuple[View, ...],
    device: torch.device,
    batch_size: int = 64,
) -> np.ndarray:
    """The pretrained body's pooled features (the classifier's input) of every image under each
    view: (views, images, features), float32. Preprocessed exactly as a trained model's
    inputs are (``inference.Preprocess``), so a head trained on them predicts the same with
    the body in front of it."""
    # At ``size``: a ViT-style body is built for one input size.
    body = TrainParams(backbone=backbone, pretrained=True, image_size=size)
    model = create_model(body, num_classes=0)
    model = model.to(device, memory_format=MEMORY_FORMAT).eval()
    preprocess = Preprocess(backbone, size=size, device=device)
    autocast = autocast_for(device)
    chunks = []
    for start in range(0, len(images), batch_size):
        follow_free_cores()
        batch = torch.from_numpy(np.array(images[start : start + batch_size]))  # a copy: writable
        x = apply_views(preprocess(batch), views)
        with autocast():
            # forward_head(pre_logits=True): pooled (and, where the model has one, normed)
            # features, exactly what its classifier takes.
            f = model.forward_head(model.forward_features(x), pre_logits=True)
        chunks.append(f.float().view(len(views), -1, f.shape[-1]))
    return torch.cat(chunks, dim=1).cpu().numpy()


def _say(log: LogFn, line: str) -> None:
    log(line)
    logger.info(line)
