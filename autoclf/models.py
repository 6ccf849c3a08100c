"""timm models: creation with dropout and pretrained weights, normalisation constants, and a
single up-front check that pretrained weights can be had."""

from __future__ import annotations

import dataclasses
import os
import socket
from collections.abc import Iterable
from urllib.parse import urlparse

import timm
import torch
from timm.models import get_pretrained_cfg

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
    return timm.create_model(params.backbone, pretrained=params.pretrained, **kwargs)


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


def ensure_pretrained(backbones: Iterable[str]) -> None:
    """Fetch (or find cached) pretrained weights for every backbone, once, before any trial.

    Without a network, timm retries each download for about a minute; this checks the local
    cache first, then whether the hub answers at all, and fails at once with a way out.
    """
    missing = [b for b in dict.fromkeys(backbones) if not _weights_cached(b)]
    if not missing:
        return
    endpoint = _hub_endpoint()
    if not _reachable(endpoint):
        raise PretrainedUnavailableError(
            f"pretrained weights for {', '.join(missing)} are not in the local cache and "
            f"{endpoint} cannot be reached. Either set 'pretrained: false' in the search space "
            "(e.g. --space tiny), or download the weights once on a machine with network "
            "(python -c \"import timm; timm.create_model('NAME', pretrained=True)\") and copy "
            "~/.cache/huggingface to this one."
        )
    for name in missing:
        try:
            timm.create_model(name, pretrained=True)
        except Exception as exc:  # any hub or file error means the same to the user
            raise PretrainedUnavailableError(
                f"could not download pretrained weights for {name!r}: {exc}"
            ) from exc


def _weights_cached(name: str) -> bool:
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


def _reachable(endpoint: str, timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    url = urlparse(endpoint)
    try:
        with socket.create_connection((url.hostname, url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False
