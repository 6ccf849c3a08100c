"""Grad-CAM for timm classifiers: where a model looked when it scored a class.

Grad-CAM (Selvaraju et al., 2017) weighs each channel of the last feature map by the spatial
mean of the class logit's gradient with respect to it, sums the weighted channels and keeps the
positive part. It uses timm's split of every model into ``forward_features`` (the feature map)
and ``forward_head`` (pooling and classifier), so it needs no hooks and works for any backbone
whose features are a spatial map: (B, C, h, w), or (B, h, w, C) for models that declare
``output_fmt = "NHWC"`` (Swin, MambaOut, …). Token outputs (B, N, C) of ViT-style models are
refused: for a class-token head the patch tokens after the last block get no gradient at all,
so a heat map taken there would be meaningless.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from autoclf.inference import Preprocess

BATCH_SIZE = 32


def grad_cam(
    model: torch.nn.Module,
    images: np.ndarray,
    *,
    preprocess: Preprocess,
    classes: Sequence[int],
) -> np.ndarray:
    """Grad-CAM heat maps, one per image, for the given class of each image: (N, H, W) float32
    in [0, 1], at the images' own H×W.

    ``images`` are uint8 (N, H, W, 3), as the decoded-image cache holds them. Each map is scaled
    so that its maximum is 1; a map with no positive evidence stays all zero. The model is left
    as it was: same mode, same parameters, no gradients in ``.grad``. Works under
    ``torch.inference_mode()``.
    """
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be uint8 (N, H, W, 3), got shape {images.shape}")
    if len(classes) != len(images):
        raise ValueError(f"{len(classes)} classes given for {len(images)} images")
    height, width = images.shape[1:3]
    out = np.zeros((len(images), height, width), dtype=np.float32)
    modes = [(m, m.training) for m in model.modules()]  # submodules may differ (frozen BN)
    model.eval()
    try:
        with torch.inference_mode(False), torch.enable_grad():
            for start in range(0, len(images), BATCH_SIZE):
                batch = np.ascontiguousarray(images[start : start + BATCH_SIZE])
                targets = torch.as_tensor(
                    np.asarray(classes[start : start + BATCH_SIZE]), device=preprocess.device
                )
                cam = _batch_cam(model, preprocess(torch.from_numpy(batch)), targets)
                out[start : start + len(batch)] = _to_image(cam, height, width).cpu().numpy()
    finally:
        for module, training in modes:
            module.training = training
    return out


def _batch_cam(model: torch.nn.Module, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Grad-CAM at the feature map's resolution: (B, h, w), not yet normalised."""
    # Gradients flow from the input, so frozen parameters (requires_grad False) still work;
    # torch.autograd.grad returns the one gradient wanted and accumulates nothing in .grad.
    x = x.detach().clone().requires_grad_(True)
    feats = model.forward_features(x)
    if feats.ndim == 3:
        raise ValueError(
            f"Grad-CAM needs a spatial feature map, but {type(model).__name__} returns tokens "
            f"{tuple(feats.shape)} (ViT-style backbones are not supported)"
        )
    if feats.ndim != 4:
        raise ValueError(f"unexpected feature shape {tuple(feats.shape)} for Grad-CAM")
    logits = model.forward_head(feats)
    score = logits.gather(1, targets.view(-1, 1).long()).sum()
    (grads,) = torch.autograd.grad(score, feats)
    feats, grads = feats.detach().float(), grads.float()
    if getattr(model, "output_fmt", "NCHW") == "NHWC":
        feats, grads = feats.permute(0, 3, 1, 2), grads.permute(0, 3, 1, 2)
    weights = grads.mean(dim=(2, 3), keepdim=True)  # (B, C, 1, 1)
    return F.relu((weights * feats).sum(dim=1))


def _to_image(cam: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Upsample (B, h, w) maps to (B, height, width) and scale each to [0, 1]."""
    cam = F.interpolate(cam[:, None], size=(height, width), mode="bilinear", align_corners=False)
    cam = cam[:, 0].clamp_(min=0)
    peak = cam.amax(dim=(1, 2), keepdim=True)
    return torch.where(peak > 0, cam / peak.clamp(min=torch.finfo(cam.dtype).tiny), 0.0)


def overlay(image: np.ndarray, heat: np.ndarray, *, alpha: float = 0.45) -> np.ndarray:
    """The heat map over the uint8 RGB image (H, W, 3) as a uint8 RGB image: a jet colour map
    (blue for 0, red for 1) blended in with weight ``alpha``."""
    if image.shape[:2] != heat.shape:
        raise ValueError(f"heat map {heat.shape} does not match image {image.shape[:2]}")
    levels = np.round(np.clip(heat, 0.0, 1.0) * 255).astype(np.uint8)
    colours = cv2.cvtColor(cv2.applyColorMap(levels, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    blend = (1.0 - alpha) * image.astype(np.float32) + alpha * colours.astype(np.float32)
    return np.clip(np.round(blend), 0, 255).astype(np.uint8)
