"""timm models: creation with dropout and pretrained weights, normalisation constants, and a
single up-front check that pretrained weights can be had."""

from __future__ import annotations

import dataclasses
import os
import socket
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import urlparse

import timm
import torch
from timm.models import get_pretrained_cfg

from autoclf import pretrained
from autoclf.config import TrainParams
from autoclf.errors import PretrainedUnavailableError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Models and their inputs live in channels_last on every device: cuDNN's tensor cores want it,
# and on the CPU oneDNN's convolutions are as fast or faster in it (benchmarks/train_step.py).
MEMORY_FORMAT = torch.channels_last


def create_model(params: TrainParams, *, num_classes: int) -> torch.nn.Module:
    kwargs: dict = {"num_classes": num_classes, "drop_rate": params.dropout}
    if params.drop_path > 0:
        kwargs["drop_path_rate"] = params.drop_path
    cfg = get_pretrained_cfg(params.backbone)
    if cfg is not None and cfg.fixed_input_size:
        kwargs["img_size"] = params.image_size  # ViT-style models are built for one size
    stored = pretrained.stored_file(params.backbone) if params.pretrained else None
    if stored is not None:  # else from scratch, or from timm's own cache or the hub
        pretrained.verify(stored)
        # timm loads the stored file as it loads the hub's: through the model's own filter (a
        # ViT's position embeddings resampled to the trial's size), the classifier left out
        # where the classes differ, and strict about everything else.
        kwargs["pretrained_cfg_overlay"] = {"file": str(stored), "source": ""}
    try:
        model = timm.create_model(params.backbone, pretrained=params.pretrained, **kwargs)
    except RuntimeError as exc:
        if stored is None:
            raise
        why = str(exc).strip().splitlines()
        raise pretrained.WeightsImportError(
            f"{stored} does not fit {params.backbone}: {' '.join(why[:3])}"
        ) from exc
    if params.pretrained and num_classes != getattr(cfg, "num_classes", None):
        _zero_head(model)  # a new head (the pretrained one is kept where the classes are its)
    return model


def _zero_head(model: torch.nn.Module) -> None:
    """A new head on a pretrained body starts at zero: every class equally likely, whatever the
    features. timm's EfficientNet initialises a head uniformly in ±1/sqrt(classes), ±0.71 for
    two classes, which swamps pooled features of about 0.2; a linear head on frozen
    EfficientNet-Lite0 features went from 0.61 to 0.93 on hymenoptera (4 epochs, AdamW 3e-3)
    when it started at zero instead (benchmarks/README.md, "Transfer learning")."""
    head = classifier(model)
    if isinstance(head, torch.nn.Linear):
        torch.nn.init.zeros_(head.weight)
        if head.bias is not None:
            torch.nn.init.zeros_(head.bias)


def classifier(model: torch.nn.Module) -> torch.nn.Module | None:
    """The classifier head (timm's ``get_classifier``), or None for a model without one."""
    get = getattr(model, "get_classifier", None)
    return get() if get is not None else None


def set_head(model: torch.nn.Module, head: torch.nn.Linear) -> None:
    """Copy ``head``'s weights into ``model``'s classifier (same shape, or a clear error)."""
    target = classifier(model)
    if not isinstance(target, torch.nn.Linear) or target.weight.shape != head.weight.shape:
        raise ValueError(
            f"{type(model).__name__}'s classifier {target!r} is not a Linear layer of shape "
            f"{tuple(head.weight.shape)}: a head fitted on its features does not fit it"
        )
    with torch.no_grad():
        target.weight.copy_(head.weight)
        target.bias.copy_(head.bias)


def head_parameters(model: torch.nn.Module) -> set[int]:
    """The ids of the classifier head's parameters; none for a model without one."""
    head = classifier(model)
    return {id(p) for p in head.parameters()} if head is not None else set()


def load_trained(
    params: TrainParams, path: str | os.PathLike, *, num_classes: int, device: torch.device
) -> torch.nn.Module:
    """A model autoclf trained and saved: weights only, never unpickled objects; a model
    trained on a GPU loads on a CPU-only machine."""
    model = create_model(dataclasses.replace(params, pretrained=False), num_classes=num_classes)
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.to(device, memory_format=MEMORY_FORMAT).eval()


def normalization(backbone: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The mean and std the backbone's pretrained weights expect (ImageNet's by default)."""
    cfg = get_pretrained_cfg(backbone)
    if cfg is None:
        return IMAGENET_MEAN, IMAGENET_STD
    return tuple(cfg.mean or IMAGENET_MEAN), tuple(cfg.std or IMAGENET_STD)


def interpolation(backbone: str) -> str:
    """How the backbone's pretrained weights saw their images resized: ``bicubic`` or
    ``bilinear`` (timm's pretrained config; bilinear where it names neither)."""
    cfg = get_pretrained_cfg(backbone)
    mode = getattr(cfg, "interpolation", None) if cfg is not None else None
    return mode if mode in ("bicubic", "bilinear") else "bilinear"


def ensure_pretrained(backbones: Iterable[str]) -> list[str]:
    """Find pretrained weights for every backbone, once, before any trial (see
    ``autoclf.pretrained`` for the order); import a package's weights into the store, or
    download from the hub, where that is where they are. Returns a line per import.

    Without a network, timm retries each download for about a minute; this looks everywhere
    local first, then whether the hub answers at all, and fails at once with a way out.
    """
    notes, missing = [], []
    for name in dict.fromkeys(backbones):
        source = pretrained.locate(name, hub=False)
        if source.kind == "store":
            pretrained.verify(Path(source.detail))  # a changed file stops the search here
        elif source.kind == "package":
            path = pretrained.import_from_package(name)
            notes.append(f"{name}: ImageNet weights imported from {source.detail} into {path}")
        elif source.kind == "missing":
            missing.append(name)
    if not missing:
        return notes
    endpoint = _hub_endpoint()
    if not hub_reachable():
        ways = "; ".join(f"{name}: {pretrained.how_to_get(name)}" for name in missing)
        raise PretrainedUnavailableError(
            f"pretrained weights for {', '.join(missing)} are not in autoclf's weights store "
            f"({pretrained.store_dir()}) nor timm's cache, and {endpoint} cannot be reached. "
            f"To get them: {ways}. Or do without them: set 'pretrained: false' in the search "
            "space, or use --space tiny."
        )
    for name in missing:
        try:
            timm.create_model(name, pretrained=True)
        except Exception as exc:  # any hub or file error means the same to the user
            raise PretrainedUnavailableError(
                f"could not download pretrained weights for {name!r}: {exc}"
            ) from exc
        notes.append(f"{name}: downloaded from {endpoint} into timm's cache")
    return notes


def weights_cached(name: str) -> bool:
    """Whether timm's own cache (Hugging Face hub or torch hub) holds ``name``'s weights."""
    cfg = get_pretrained_cfg(name)
    if cfg is None:
        return False
    if cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        repo = cfg.hf_hub_id.split("@")[0]
        files = (
            [cfg.hf_hub_filename]
            if cfg.hf_hub_filename
            else ["model.safetensors", "pytorch_model.bin"]
        )
        if any(isinstance(try_to_load_from_cache(repo, f), str) for f in files):
            return True
    if cfg.url:
        filename = os.path.basename(urlparse(cfg.url).path)
        return os.path.isfile(os.path.join(torch.hub.get_dir(), "checkpoints", filename))
    return False


def _hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub (``HF_ENDPOINT``) answers; never with HF_HUB_OFFLINE."""
    endpoint = _hub_endpoint()
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    url = urlparse(endpoint)
    try:
        with socket.create_connection((url.hostname, url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False
