"""Ensemble + TTA inference against the sum of its raw forward passes.

autoclf's path: uint8 cache rows → device → float, resize, normalise → TTA views stacked into
one batch → forward → softmax → (views, images, classes) → vote. The reference: the same
models run the same forward passes, on the same batch sizes, over inputs prepared in advance.
The ratio is what everything around the forward passes costs.

    python benchmarks/inference.py            # prints a table; see benchmarks/README.md
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from autoclf.config import TrainParams
from autoclf.ensemble import soft_vote
from autoclf.inference import VIEWS, Preprocess, apply_views, predict_views
from autoclf.models import MEMORY_FORMAT, create_model


def bench(
    backbones: list[str], *, size: int, n_images: int, n_views: int, batch: int, device
) -> tuple[float, float]:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n_images, size, size, 3), dtype=np.uint8)
    models = [
        create_model(TrainParams(backbone=b, image_size=size), num_classes=10)
        .to(device, memory_format=MEMORY_FORMAT)  # as autoclf loads its trained models
        .eval()
        for b in backbones
    ]
    views = VIEWS[:n_views]

    def ensemble() -> np.ndarray:
        probs = []
        for backbone, model in zip(backbones, models, strict=True):
            pre = Preprocess(backbone, size=size, device=device)
            probs.append(
                predict_views(model, images, preprocess=pre, views=views, batch_size=batch).mean(
                    axis=0
                )
            )
        return soft_vote(probs)

    # The reference inputs: exactly the tensors the models see, built before the clock starts.
    per_batch = max(1, batch // n_views)
    prepared = []
    for backbone in backbones:
        pre = Preprocess(backbone, size=size, device=device)
        prepared.append(
            [
                apply_views(pre(torch.from_numpy(images[i : i + per_batch])), views)
                for i in range(0, n_images, per_batch)
            ]
        )

    @torch.inference_mode()
    def raw() -> None:
        for model, inputs in zip(models, prepared, strict=True):
            for x in inputs:
                model(x)
        if device.type == "cuda":
            torch.cuda.synchronize()

    ensemble()  # warm-up
    t0 = time.perf_counter()
    raw()
    # Interleaved, so drift hits both alike; best of 3, or of up to 15 for the sub-second
    # cases, whose run-to-run noise on a shared machine is larger than the gap measured.
    repeats = max(3, min(15, int(10 / (time.perf_counter() - t0))))
    t_ens, t_raw = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        ensemble()
        t_ens.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        raw()
        t_raw.append(time.perf_counter() - t0)
    return min(t_ens), min(t_raw)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    cases = [
        (["test_resnet", "test_efficientnet", "test_convnext"], 64, 8),
        (["test_resnet", "test_efficientnet", "test_convnext"], 64, 1),
        (["resnet18", "efficientnet_b0"], 128, 8),  # about 12 minutes on 2 CPU cores
    ]
    print(
        f"device {device}, {args.images} images, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads\n"
    )
    print("| members | size | views | ensemble+TTA s | raw forwards s | ratio |")
    print("|---|---|---|---|---|---|")
    for backbones, size, n_views in cases:
        t_ens, t_raw = bench(
            backbones, size=size, n_images=args.images, n_views=n_views, batch=256, device=device
        )
        print(
            f"| {' + '.join(backbones)} | {size} | {n_views} | "
            f"{t_ens:.3f} | {t_raw:.3f} | {t_ens / t_raw:.3f} |"
        )


if __name__ == "__main__":
    main()
