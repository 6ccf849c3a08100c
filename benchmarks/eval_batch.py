"""Rows per forward pass when predicting on the CPU: how many images (TTA views count as
images) one eval forward pass should take.

autoclf predicts in three places: each epoch's validation fold, finalize's out-of-fold TTA
views, and ``predict``. For every model and image size below, the same images are predicted
by :func:`autoclf.inference.predict_views` (one view; channels_last, as ``load_trained`` gives
the models) at each number of rows a forward pass, best of ``--repeats``: the time a pass over
all the images, the fastest, and autoclf's own choice (:func:`rows_per_pass`) against 256 rows,
the default before 2026-12-07.

    python benchmarks/eval_batch.py             # about 5 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import timm
import torch

from autoclf.inference import Preprocess, predict_views, rows_per_pass

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


if __name__ == "__main__":
    main()
