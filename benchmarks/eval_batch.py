"""Rows per forward pass on the CPU: how many images (TTA views count as images) one eval
forward pass should take, and what training in such chunks gains where BatchNorm is frozen.

autoclf predicts in three places: each epoch's validation fold, finalize's out-of-fold TTA
views, and ``predict``. For every model and image size below, the same images are predicted
by :func:`autoclf.inference.predict_views` (one view; channels_last, as ``load_trained`` gives
the models) at each number of rows a forward pass, best of ``--repeats``: the time a pass over
all the images, the fastest, and autoclf's own choice (:func:`rows_per_pass`) against 256 rows,
the default before 2026-12-07.

Then one epoch of :func:`autoclf.trainer.fit` (196 training images, 49 validated; the ``cpu``
space's settings: ``freeze_bn``, batch 32, AdamW) with the batch in one pass
(``micro_batch=32``, as before 2026-12-07) against autoclf's default chunks.

    python benchmarks/eval_batch.py             # about 4 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import timm
import torch

from autoclf.config import TrainParams
from autoclf.inference import Preprocess, predict_views, rows_per_pass
from autoclf.metrics import get_metric
from autoclf.trainer import fit

CASES = (  # (timm name, image size, images)
    ("test_resnet", 32, 1024),
    ("resnet18", 128, 256),
    ("tf_efficientnet_lite0", 160, 256),
    ("tf_efficientnet_lite0", 224, 128),
    ("tf_efficientnet_lite1", 224, 128),
)
ROWS = (4, 8, 16, 32, 64, 256)


def seconds(model, images, preprocess, rows: int) -> float:
    start = time.perf_counter()
    predict_views(model, images, preprocess=preprocess, batch_size=rows)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    cpu = torch.device("cpu")
    head = " | ".join(f"{r} rows s" for r in ROWS)
    print(f"{torch.get_num_threads()} threads, torch {torch.__version__}\n")
    print(f"| model | size | images | {head} | fastest | autoclf's rows | autoclf / 256 |")
    print("|---|---|---|" + "---|" * len(ROWS) + "---|---|---|")
    for name, size, n in CASES:
        torch.manual_seed(0)
        model = timm.create_model(name, num_classes=10).eval()
        model = model.to(memory_format=torch.channels_last)
        images = np.random.default_rng(0).integers(0, 256, (n, size, size, 3), dtype=np.uint8)
        preprocess = Preprocess(name, size=size, device=cpu)
        seconds(model, images[:8], preprocess, 8)  # warm-up
        ours = rows_per_pass(cpu, size)
        best = {r: float("inf") for r in (*ROWS, ours)}
        for _ in range(args.repeats):  # interleaved, so drift hits every batch size alike
            for rows in best:
                best[rows] = min(best[rows], seconds(model, images, preprocess, rows))
        fastest = min(best, key=best.get)
        cells = " | ".join(f"{best[r]:.2f}" for r in ROWS)
        print(
            f"| {name} | {size} | {n} | {cells} | {fastest} | {ours}: {best[ours]:.2f} s | "
            f"{best[ours] / best[256]:.2f} |",
            flush=True,
        )

    print("\n| fit, one epoch | px | one pass of 32 s | autoclf's chunks | autoclf s | ratio |")
    print("|---|---|---|---|---|---|")
    for name, size in (("tf_efficientnet_lite0", 160), ("tf_efficientnet_lite0", 224)):
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, (245, size, size, 3), dtype=np.uint8)
        labels = rng.integers(0, 2, 245)
        params = TrainParams(
            backbone=name, image_size=size, batch_size=32, epochs=1, freeze_bn=True, keep="last"
        )
        best = {32: float("inf"), None: float("inf")}
        for _ in range(args.repeats):
            for micro_batch in best:
                start = time.perf_counter()
                fit(
                    params,
                    images=images,
                    labels=labels,
                    train_idx=np.arange(196),
                    val_idx=np.arange(196, 245),
                    num_classes=2,
                    metric=get_metric("accuracy"),
                    seed=0,
                    device=cpu,
                    micro_batch=micro_batch,
                )
                best[micro_batch] = min(best[micro_batch], time.perf_counter() - start)
        print(
            f"| {name} | {size} | {best[32]:.1f} | {rows_per_pass(cpu, size)} rows | "
            f"{best[None]:.1f} | {best[None] / best[32]:.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
