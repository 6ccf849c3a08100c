from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

# Tests never reach the network: timm's pretrained downloads must fail fast, not retry.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def autoclf(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """This venv's ``autoclf`` command, run in ``cwd`` with ``env`` added; output captured."""
    exe = shutil.which("autoclf", path=str(Path(sys.executable).parent)) or "autoclf"
    env = {**os.environ, **(env or {})}
    return subprocess.run(
        [exe, *args], cwd=cwd, capture_output=True, text=True, timeout=600, env=env
    )


def save_image(
    path: Path, *, mode: str = "RGB", size: tuple[int, int] = (20, 16), seed: int = 0
) -> Path:
    """Write a small random image in ``mode`` (format from the suffix)."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = size
    if mode == "RGB":
        im = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")
    elif mode == "L":
        im = Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8), "L")
    elif mode == "RGBA":
        im = Image.fromarray(rng.integers(0, 256, (h, w, 4), dtype=np.uint8), "RGBA")
    elif mode == "CMYK":
        im = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB").convert("CMYK")
    elif mode == "P":
        im = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB").convert("P")
    elif mode == "I;16":
        im = Image.fromarray(rng.integers(0, 65536, (h, w), dtype=np.uint16))
    else:
        raise ValueError(mode)
    im.save(path)
    return path


def photo(seed: int, size: tuple[int, int] = (128, 96)) -> np.ndarray:
    """A smooth random picture (large blobs of colour, some grain), like a downscaled photo:
    unlike uniform noise, it survives resizing and JPEG the way photographs do."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((6, 8, 3)).astype(np.float32) * 255
    smooth = cv2.resize(coarse, size, interpolation=cv2.INTER_CUBIC)
    return np.clip(smooth + rng.normal(0, 6, smooth.shape), 0, 255).astype(np.uint8)


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """ImageFolder layout: 3 classes (cat 6, dog 5, emu 4 images)."""
    root = tmp_path / "images"
    for c, (name, n) in enumerate((("cat", 6), ("dog", 5), ("emu", 4))):
        for i in range(n):  # seeded by position: the same pictures in every process
            save_image(root / name / f"{i}.png", seed=100 * c + i)
    return root


@pytest.fixture(scope="session")
def finalized_digits(tmp_path_factory) -> Path:
    """The studies folder of a finalized digits study ``s``: 2 tiny members searched on 2
    folds, kept as their fold models, soft vote, 3 TTA views. Shared by the tests that only
    read it: copy it to change it."""
    from tests.studies import SPACE, finalize_study, search_digits

    root = tmp_path_factory.mktemp("finalized")
    trials = [
        {"backbone": "test_efficientnet", "lr": 0.01},
        {"backbone": "test_resnet", "lr": 0.01},
    ]
    search_digits(root, SPACE, trials)
    finalize_study(
        root / "studies", top_k=2, select="topk", vote="soft", tta="3", refit="folds", device="cpu"
    )
    return root / "studies"
