"""Batched inference on cached uint8 images: preprocessing on the device, TTA views as one
forward pass per batch, and the saved ensemble that ``predict`` loads.

Validation during training goes through the same :func:`predict_views`, so a model is scored
in the search exactly as it predicts later.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from autoclf.models import MEMORY_FORMAT, interpolation, normalization
from autoclf.threads import follow_free_cores


@dataclass(frozen=True)
class View:
    """A deterministic test-time view: optional horizontal flip, zoom (scale < 1 zooms in)
    and shift (fractions of the image size)."""

    name: str
    flip: bool = False
    scale: float = 1.0
    shift: tuple[float, float] = (0.0, 0.0)


MAX_ROWS = 256  # rows of an eval forward pass on a GPU, and at most on a CPU
CPU_PIXELS_PER_PASS = 2**18  # 16 rows at 128 px, 5 at 224: see rows_per_pass

# In the order ``--tta N`` takes them: the identity first, then the views that most often help.
VIEWS: tuple[View, ...] = (
    View("identity"),
    View("hflip", flip=True),
    View("zoom", scale=0.9),
    View("hflip+zoom", flip=True, scale=0.9),
    View("shift+", shift=(0.06, 0.06)),
    View("shift-", shift=(-0.06, -0.06)),
    View("hflip+shift+", flip=True, shift=(0.06, -0.06)),
    View("hflip+shift-", flip=True, shift=(-0.06, 0.06)),
)
VIEWS_BY_NAME = {v.name: v for v in VIEWS}
IDENTITY = (VIEWS[0],)


def views_for(hflip: bool) -> tuple[View, ...]:
    """The views to try, in order, for a model trained with or without horizontal flips: a
    model that never saw a mirrored image is not shown one."""
    return VIEWS if hflip else tuple(v for v in VIEWS if not v.flip)


def apply_views(x: torch.Tensor, views: Sequence[View]) -> torch.Tensor:
    """Stack the views of a batch (B, C, H, W) along the batch axis: (len(views) * B, C, H, W)."""
    out = []
    for view in views:
        v = x.flip(3) if view.flip else x
        grid = view_grid(view, v.shape[-1], device=v.device, dtype=v.dtype)
        if grid is not None:
            # One affine resample covers zoom and shift; border padding avoids black edges. The
            # grid is the same for every image: built once and broadcast (building it per image
            # cost more than the resampling).
            grid = grid.expand(v.shape[0], -1, -1, -1)
            v = F.grid_sample(v, grid, mode="bilinear", padding_mode="border", align_corners=False)
        out.append(v)
    return torch.cat(out) if len(out) > 1 else out[0]


def view_grid(
    view: View, size: int, *, device: torch.device | None = None, dtype: torch.dtype | None = None
) -> torch.Tensor | None:
    """The sampling grid of a zoom or shift view of ``size``×``size`` images, (1, size, size,
    2); None for a view without one (the identity, a flip). The ONNX export keeps it as a
    constant."""
    if view.scale == 1.0 and view.shift == (0.0, 0.0):
        return None
    theta = torch.zeros(1, 2, 3, device=device, dtype=dtype)
    theta[:, 0, 0] = theta[:, 1, 1] = view.scale
    theta[:, 0, 2], theta[:, 1, 2] = 2 * view.shift[0], 2 * view.shift[1]
    return F.affine_grid(theta, [1, 3, size, size], align_corners=False)


class Preprocess:
    """uint8 images (B, H, W, 3) or (B, 3, H, W) → normalised float (B, 3, size, size) on the
    device, resized there if the cache holds another size, in channels_last."""

    def __init__(self, backbone: str, *, size: int, device: torch.device):
        mean, std = normalization(backbone)
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(std, device=device).view(1, 3, 1, 1) * 255
        self.size, self.device = size, device
        self.mode = interpolation(backbone)  # as the pretrained weights were trained

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] == 3 and x.shape[1] != 3:
            x = x.permute(0, 3, 1, 2)
        x = x.to(self.device, non_blocking=True).float()
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = F.interpolate(
                x, size=(self.size, self.size), mode=self.mode, antialias=True, align_corners=False
            )
            if self.mode == "bicubic":  # bicubic overshoots: keep the pixel range
                x = x.clamp_(0, 255)
        x = x.sub_(self.mean).div_(self.std)
        return x.contiguous(memory_format=MEMORY_FORMAT)


def amp_dtype() -> torch.dtype:
    """bf16 on GPUs that compute it natively (Ampere and later), else fp16 (with loss scaling
    in training). Not torch's default answer, which counts emulated bf16 and would train a V100
    or T4 in slow emulation instead of fp16."""
    native = torch.cuda.is_bf16_supported(including_emulation=False)
    return torch.bfloat16 if native else torch.float16


def autocast_for(device: torch.device, enabled: bool = True):
    """bf16 autocast on CUDA where native, else fp16; nothing on the CPU."""
    if device.type != "cuda" or not enabled:
        return nullcontext
    dtype = amp_dtype()
    return lambda: torch.autocast("cuda", dtype=dtype)


def rows_per_pass(device: torch.device, size: int) -> int:
    """How many rows (images × views) an eval forward pass takes on ``device`` at ``size`` px.

    A GPU takes ``MAX_ROWS``. On a CPU, passes of about ``CPU_PIXELS_PER_PASS`` pixels are the
    fastest: a bigger pass allocates, and page-faults, its activations afresh each time
    (EfficientNet-Lite at 224 px: 4-8 rows a pass predict 3.5x faster than 256;
    benchmarks/eval_batch.py).
    """
    if device.type != "cpu":
        return MAX_ROWS
    return max(1, min(MAX_ROWS, CPU_PIXELS_PER_PASS // (size * size)))


@torch.inference_mode()
def predict_views(
    model: torch.nn.Module,
    images: np.ndarray,
    *,
    preprocess: Preprocess,
    views: Sequence[View] = IDENTITY,
    indices: np.ndarray | None = None,
    batch_size: int | None = None,
    amp: bool = True,
) -> np.ndarray:
    """Class probabilities of every view: (len(views), n_images, n_classes), float32.

    Images are read from the (memory-mapped) cache a batch at a time; all views of a batch go
    through the model in one forward pass of about ``batch_size`` rows (default
    :func:`rows_per_pass`), at least one image's views.
    """
    model.eval()
    autocast = autocast_for(preprocess.device, amp)
    rows = np.arange(len(images)) if indices is None else np.asarray(indices)
    batch_size = batch_size or rows_per_pass(preprocess.device, preprocess.size)
    per_batch = max(1, batch_size // len(views))
    chunks = []
    for start in range(0, len(rows), per_batch):
        follow_free_cores()
        batch = torch.from_numpy(np.ascontiguousarray(images[rows[start : start + per_batch]]))
        x = apply_views(preprocess(batch), views)
        with autocast():
            logits = model(x)
        chunks.append(torch.softmax(logits.float(), dim=1).view(len(views), -1, logits.shape[1]))
    # One device-to-host transfer at the end instead of a sync per batch.
    return torch.cat(chunks, dim=1).cpu().numpy()
