from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from autoclf.config import TrainParams
from autoclf.inference import Preprocess
from autoclf.models import create_model
from autoclf.reports.gradcam import grad_cam, overlay

CPU = torch.device("cpu")
SQUARE = 8  # side of the coloured square that decides the class in the localisation tests


def timm_model(backbone: str) -> nn.Module:
    torch.manual_seed(0)
    params = TrainParams(backbone=backbone, pretrained=False, image_size=32)
    return create_model(params, num_classes=2).eval()


class PixelModel(nn.Module):
    """Features are the normalised input itself; the head is a linear map of their spatial
    mean. Grad-CAM for class k is then relu(sum_c W[k, c] * x_c), up to a positive factor."""

    def __init__(self, weight: torch.Tensor, output_fmt: str = "NCHW"):
        super().__init__()
        self.fc = nn.Linear(3, weight.shape[0], bias=False)
        self.fc.weight.data.copy_(weight)
        self.output_fmt = output_fmt

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 2, 3, 1) if self.output_fmt == "NHWC" else x

    def forward_head(self, feats: torch.Tensor) -> torch.Tensor:
        dims = (1, 2) if self.output_fmt == "NHWC" else (2, 3)
        return self.fc(feats.mean(dim=dims))


class TinyCNN(nn.Module):
    """A timm-style CNN (forward_features / forward_head) small enough to train in a test."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 16, 3, padding=1),
            nn.ReLU(),
        )
        self.fc = nn.Linear(16, 2)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)  # (B, 16, 8, 8) for 32×32 inputs

    def forward_head(self, feats: torch.Tensor) -> torch.Tensor:
        return self.fc(feats.mean(dim=(2, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def squares(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """32×32 noise images with one square at a random place: red for class 1, green for
    class 0. Returns images, labels and the squares' top-left corners (row, col)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 160, (n, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 2, n)
    corners = rng.integers(0, 32 - SQUARE + 1, (n, 2))
    for image, label, (r, c) in zip(images, labels, corners, strict=True):
        image[r : r + SQUARE, c : c + SQUARE] = (255, 0, 0) if label == 1 else (0, 255, 0)
    return images, labels, corners


@pytest.fixture(scope="module")
def trained() -> tuple[TinyCNN, Preprocess]:
    """TinyCNN trained until it tells red squares from green ones, wherever they are."""
    torch.manual_seed(0)
    model = TinyCNN().train()
    pre = Preprocess("test_resnet", size=32, device=CPU)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(30):
        images, labels, _ = squares(32, seed=100 + step)
        loss = F.cross_entropy(model(pre(torch.from_numpy(images))), torch.from_numpy(labels))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    return model.eval(), pre


def test_heat_maps_match_the_grad_cam_formula():
    weight = torch.tensor([[1.0, -1.0, 0.0], [-0.5, 0.25, 1.0]])
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    classes = [0, 1, 1, 0]
    pre = Preprocess("test_resnet", size=16, device=CPU)  # mean = std = 0.5
    heat = grad_cam(PixelModel(weight), images, preprocess=pre, classes=classes)

    x = (images.astype(np.float64) - 127.5) / 127.5
    for i, k in enumerate(classes):
        cam = np.maximum(x[i] @ weight[k].numpy().astype(np.float64), 0)
        assert heat[i].max() == pytest.approx(1.0)
        np.testing.assert_allclose(heat[i], cam / cam.max(), atol=1e-5)


def test_channels_last_features_give_the_same_maps():
    weight = torch.tensor([[1.0, -1.0, 0.0], [-0.5, 0.25, 1.0]])
    images = np.random.default_rng(1).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    pre = Preprocess("test_resnet", size=16, device=CPU)
    nchw = grad_cam(PixelModel(weight), images, preprocess=pre, classes=[0, 1, 0])
    nhwc = grad_cam(PixelModel(weight, "NHWC"), images, preprocess=pre, classes=[0, 1, 0])
    np.testing.assert_allclose(nhwc, nchw, atol=1e-6)


def test_a_map_without_positive_evidence_stays_zero():
    images = np.zeros((2, 16, 16, 3), dtype=np.uint8)  # normalised to -1 everywhere
    pre = Preprocess("test_resnet", size=16, device=CPU)
    heat = grad_cam(PixelModel(torch.ones(2, 3)), images, preprocess=pre, classes=[0, 1])
    assert heat.dtype == np.float32
    assert np.array_equal(heat, np.zeros_like(heat))


@pytest.mark.parametrize(
    "backbone", ["test_resnet", "test_efficientnet", "test_convnext", "test_mambaout"]
)
def test_maps_come_back_at_the_images_size_in_0_1(backbone: str):
    model = timm_model(backbone)
    images = np.random.default_rng(0).integers(0, 256, (3, 40, 24, 3), dtype=np.uint8)
    pre = Preprocess(backbone, size=64, device=CPU)  # a 2×2 feature map, upsampled to 40×24
    heat = grad_cam(model, images, preprocess=pre, classes=[0, 1, 1])
    assert heat.shape == (3, 40, 24) and heat.dtype == np.float32
    assert np.isfinite(heat).all() and heat.min() >= 0 and heat.max() <= 1
    peaks = heat.max(axis=(1, 2))
    assert peaks.max() == pytest.approx(1.0)
    assert all(p == 0 or p == pytest.approx(1.0) for p in peaks)


def test_token_features_are_refused():
    model = timm_model("test_vit")
    images = np.zeros((1, 32, 32, 3), dtype=np.uint8)
    pre = Preprocess("test_vit", size=32, device=CPU)
    with pytest.raises(ValueError, match="ViT"):
        grad_cam(model, images, preprocess=pre, classes=[0])


def test_classes_must_match_the_images():
    images = np.zeros((2, 16, 16, 3), dtype=np.uint8)
    pre = Preprocess("test_resnet", size=16, device=CPU)
    with pytest.raises(ValueError, match="classes"):
        grad_cam(PixelModel(torch.ones(2, 3)), images, preprocess=pre, classes=[0])


def test_heat_concentrates_on_the_evidence(trained):
    model, pre = trained
    images, labels, corners = squares(48, seed=1)
    with torch.inference_mode():
        accuracy = (model(pre(torch.from_numpy(images))).argmax(1).numpy() == labels).mean()
    assert accuracy >= 0.95, "the model did not learn the task; the test proves nothing"

    heat = grad_cam(model, images, preprocess=pre, classes=labels.tolist())
    near = np.zeros(heat.shape, dtype=bool)  # the square plus a 2-pixel margin
    for m, (r, c) in zip(near, corners, strict=True):
        m[max(r - 2, 0) : r + SQUARE + 2, max(c - 2, 0) : c + SQUARE + 2] = True
    mass = (heat * near).sum(axis=(1, 2)) / heat.sum(axis=(1, 2))
    peak_near = np.array([m.flat[h.argmax()] for m, h in zip(near, heat, strict=True)])
    # The region covers at most 144 of 1024 pixels (14 %); for each class the heat peaks there
    # in (nearly) every image and puts far more than its share of the mass there.
    for label in (0, 1):
        assert peak_near[labels == label].mean() >= 0.9
        assert np.median(mass[labels == label]) > 0.3


def test_batches_and_frozen_parameters_do_not_change_the_maps(trained):
    model, pre = trained
    images, labels, _ = squares(35, seed=2)  # more than one batch of 32
    whole = grad_cam(model, images, preprocess=pre, classes=labels.tolist())
    alone = grad_cam(model, images[33:], preprocess=pre, classes=labels[33:].tolist())
    np.testing.assert_allclose(whole[33:], alone, atol=1e-5)
    flipped = grad_cam(model, images[:3], preprocess=pre, classes=(1 - labels[:3]).tolist())
    assert not np.allclose(flipped, whole[:3], atol=1e-3)  # the class asked for matters

    for p in model.parameters():
        p.requires_grad_(False)
    try:
        frozen = grad_cam(model, images, preprocess=pre, classes=labels.tolist())
    finally:
        for p in model.parameters():
            p.requires_grad_(True)
    np.testing.assert_allclose(frozen, whole, atol=1e-6)


def test_the_model_is_left_as_it_was_even_under_inference_mode():
    model = timm_model("test_resnet")
    model.fc.weight.requires_grad_(False)  # a mix of frozen and trainable parameters
    before = {k: v.clone() for k, v in model.state_dict().items()}  # BN running stats too
    flags = [p.requires_grad for p in model.parameters()]
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    pre = Preprocess("test_resnet", size=64, device=CPU)
    plain = grad_cam(model, images, preprocess=pre, classes=[0, 1, 0])

    model.train()  # Grad-CAM runs in eval mode but hands the model back in its own modes
    model.bn1.eval()  # e.g. a frozen BatchNorm in a model being fine-tuned
    with torch.inference_mode():
        inside = grad_cam(model, images, preprocess=pre, classes=[0, 1, 0])
    assert model.training and model.layer1.training and not model.bn1.training
    model.eval()

    np.testing.assert_allclose(inside, plain, atol=1e-6)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    assert not model._forward_hooks and not model._backward_hooks
    assert all(not m._forward_hooks and not m._backward_hooks for m in model.modules())


def test_overlay_blends_a_jet_colour_map():
    image = np.random.default_rng(0).integers(0, 256, (10, 12, 3), dtype=np.uint8)
    heat = np.zeros((10, 12), dtype=np.float32)
    heat[:, 6:] = 1.0
    out = overlay(image, heat)
    assert out.shape == (10, 12, 3) and out.dtype == np.uint8
    assert np.array_equal(overlay(image, heat, alpha=0.0), image)
    assert not np.array_equal(out, image)

    colours = overlay(image, heat, alpha=1.0).astype(int)  # the colour map alone, in RGB
    cold, hot = colours[:, :6], colours[:, 6:]
    assert (cold[..., 2] > cold[..., 0]).all()  # 0 is blue
    assert (hot[..., 0] > hot[..., 2]).all()  # 1 is red
    with pytest.raises(ValueError):
        overlay(image, heat[:, :5])
