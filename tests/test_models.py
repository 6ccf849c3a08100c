from __future__ import annotations

import time

import pytest
import torch

from autoclf.config import TrainParams
from autoclf.errors import PretrainedUnavailableError
from autoclf.models import create_model, ensure_pretrained


def test_pretrained_unavailable_fails_fast_and_names_backbone(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty cache
    start = time.perf_counter()
    with pytest.raises(PretrainedUnavailableError, match="resnet18.a1_in1k.*pretrained: false"):
        ensure_pretrained(["resnet18.a1_in1k"])
    assert time.perf_counter() - start < 5  # not timm's minute of retries


@pytest.mark.parametrize(
    "backbone", ["test_resnet", "test_efficientnet", "test_convnext", "test_vit"]
)
def test_create_model_heads_and_sizes(backbone):
    model = create_model(TrainParams(backbone=backbone, image_size=32, dropout=0.2), num_classes=7)
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 7)
