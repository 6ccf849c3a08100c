from __future__ import annotations

import numpy as np
import torch

from autoclf.config import TrainParams
from autoclf.inference import (
    VIEWS,
    VIEWS_BY_NAME,
    Preprocess,
    apply_views,
    predict_views,
    rows_per_pass,
    views_for,
)
from autoclf.models import create_model

CPU = torch.device("cpu")


def test_views_stack_along_the_batch_in_order():
    x = torch.rand(2, 3, 8, 8)
    views = [VIEWS_BY_NAME["identity"], VIEWS_BY_NAME["hflip"], VIEWS_BY_NAME["zoom"]]
    out = apply_views(x, views)
    assert out.shape == (6, 3, 8, 8)
    assert torch.equal(out[:2], x)
    assert torch.equal(out[2:4], x.flip(3))
    assert not torch.allclose(out[4:], x)  # zoom resamples


def test_zoom_and_shift_keep_the_picture_roughly_in_place():
    x = torch.zeros(1, 1, 33, 33)
    x[..., 16, 16] = 1.0  # a bright centre pixel
    zoomed = apply_views(x, [VIEWS_BY_NAME["zoom"]])
    assert zoomed[0, 0].argmax() == x[0, 0].argmax()  # zooming about the centre keeps it
    shifted = apply_views(x, [VIEWS_BY_NAME["shift+"]])
    row, col = divmod(int(shifted[0, 0].argmax()), 33)
    assert (row, col) != (16, 16) and abs(row - 16) <= 3 and abs(col - 16) <= 3


def test_preprocess_normalises_and_resizes_on_the_device():
    pre = Preprocess("test_resnet", size=16, device=CPU)  # test models use mean = std = 0.5
    batch = torch.full((2, 32, 32, 3), 128, dtype=torch.uint8)  # NHWC, as the cache holds
    out = pre(batch)
    assert out.shape == (2, 3, 16, 16)
    assert torch.allclose(out, torch.full_like(out, (128 - 127.5) / 127.5), atol=1e-4)
    # channels_last, as the models are, on any device, whatever layout comes in.
    nchw = torch.full((2, 3, 16, 16), 128, dtype=torch.uint8)
    assert all(pre(b).is_contiguous(memory_format=torch.channels_last) for b in (batch, nchw))


def test_predict_views_shapes_and_batching_do_not_change_results():
    torch.manual_seed(0)
    model = create_model(TrainParams(backbone="test_resnet", image_size=16), num_classes=4).eval()
    images = np.random.default_rng(0).integers(0, 256, (10, 16, 16, 3), dtype=np.uint8)
    pre = Preprocess("test_resnet", size=16, device=CPU)
    big = predict_views(model, images, preprocess=pre, views=VIEWS[:3], batch_size=256)
    small = predict_views(model, images, preprocess=pre, views=VIEWS[:3], batch_size=7)
    assert big.shape == (3, 10, 4)
    assert np.allclose(big.sum(axis=2), 1.0, atol=1e-5)
    assert np.allclose(big, small, atol=1e-5)
    rows = predict_views(model, images, preprocess=pre, indices=np.array([7, 2]))
    assert np.allclose(rows[0], big[0][[7, 2]], atol=1e-5)


def test_on_a_cpu_a_forward_pass_takes_about_a_fixed_number_of_pixels():
    """Big eval passes are slow on a CPU (benchmarks/eval_batch.py): at 224 px a pass takes one
    image's 8 views; at 16 px every row at once, up to 256; a GPU takes 256 at any size."""
    torch.manual_seed(0)
    rows_seen = []
    for size, n in ((224, 3), (16, 40)):
        model = create_model(TrainParams(backbone="test_resnet", image_size=size), num_classes=2)
        model.register_forward_hook(lambda m, inputs, out: rows_seen.append(len(inputs[0])))
        images = np.random.default_rng(0).integers(0, 256, (n, size, size, 3), dtype=np.uint8)
        pre = Preprocess("test_resnet", size=size, device=CPU)
        out = predict_views(model.eval(), images, preprocess=pre, views=VIEWS)
        assert out.shape == (8, n, 2)
    assert rows_seen == [8, 8, 8, 256, 64]  # 40 images × 8 views = 320 rows
    assert rows_per_pass(CPU, 224) == 5 and rows_per_pass(CPU, 16) == 256
    assert rows_per_pass(torch.device("cuda"), 224) == 256


def test_a_model_trained_without_flips_is_not_shown_flipped_views():
    assert views_for(True) == VIEWS
    unflipped = views_for(False)
    assert unflipped[0] == VIEWS[0] and len(unflipped) >= 2
    assert not any(v.flip for v in unflipped)


def test_amp_takes_fp16_where_bf16_is_only_emulated(monkeypatch):
    """A V100 or T4 answers is_bf16_supported() True by emulation: autoclf must take fp16
    (with loss scaling) there, and bf16 only where the GPU computes it natively."""
    from autoclf.inference import amp_dtype

    monkeypatch.setattr(
        torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation
    )
    assert amp_dtype() == torch.float16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert amp_dtype() == torch.bfloat16
