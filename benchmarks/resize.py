"""Training images resized as eval resizes them, against the old training resize: a harm check.

Until 2026-12-07 the training pipeline resized cache rows with OpenCV's bilinear, without
antialiasing (``A.Resize`` at strength 0, ``A.RandomResizedCrop`` above it), while validation,
finalize and predict resize on the device with the weights' interpolation (bicubic for
EfficientNet-Lite), antialiased. Now strength 0 leaves the resize to that same device path, and
the random crop uses the weights' interpolation, by area where it shrinks.

This fits lite0 on hymenoptera/train (cache 224 px, as the ``cpu`` space builds it) at 160 px
with fixed ``cpu``-like settings, the old pipeline against autoclf's, seeds 0-4 at each
strength, and scores each on hymenoptera/val (153 images, one image is 0.0065).

    .venv/bin/python benchmarks/resize.py     # 20 fits; 5-15 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import tempfile
import time

import albumentations as A
import numpy as np
import torch
from albumentations.pytorch import ToTensorV2

from autoclf import trainer
from autoclf.augment import train_transform
from autoclf.config import TrainParams
from autoclf.data.cache import build_cache
from autoclf.data.index import build_index
from autoclf.inference import Preprocess, predict_views
from autoclf.metrics import get_metric
from autoclf.models import ensure_pretrained

DATA = "../shared/datasets/hymenoptera"
LITE0 = "tf_efficientnet_lite0"


def old_transform(*, strength, size, hflip=True, seed=None, interpolation="bilinear"):
    """The training pipeline as it was: OpenCV bilinear, no antialiasing, whatever the weights."""
    if strength == 0.0:
        return A.Compose([A.Resize(size, size), ToTensorV2()], seed=seed)
    ops = list(train_transform(strength=strength, size=size, hflip=hflip, seed=seed).transforms)
    ops[0] = A.RandomResizedCrop(size=(size, size), scale=ops[0].scale)
    return A.Compose(ops, seed=seed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=DATA)
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="autoclf-resize-")
    train = build_index(f"{args.data}/train", datasets_dir=work)
    val = build_index(f"{args.data}/val", datasets_dir=work)
    train_rows = np.asarray(build_cache(train.paths, size=224, cache_dir=f"{work}/c").images)
    val_rows = np.asarray(build_cache(val.paths, size=224, cache_dir=f"{work}/c").images)
    ensure_pretrained([LITE0])
    cpu, accuracy = torch.device("cpu"), get_metric("accuracy")
    scores: dict[tuple[float, str], list[float]] = {}
    for strength in (0.0, 0.2):
        for arm, transform in (("old", old_transform), ("autoclf", train_transform)):
            for seed in range(args.seeds):
                trainer.train_transform = transform
                params = TrainParams(
                    backbone=LITE0, pretrained=True, image_size=160, lr=5e-5, head_lr_mult=60.0,
                    weight_decay=1e-3, batch_size=32, freeze_bn=True, epochs=4,
                    scheduler="cosine", warmup_epochs=0.5, label_smoothing=0.1,
                    aug_strength=strength, grad_clip=1.0, keep="last",
                )  # fmt: skip
                start = time.time()
                fitted = trainer.fit(
                    params, images=train_rows, labels=train.label_array,
                    train_idx=np.arange(len(train)), val_idx=None, num_classes=2,
                    metric=accuracy, seed=seed, device=cpu, keep_weights=True,
                )  # fmt: skip
                model = trainer.create_model(params, num_classes=2)
                model.load_state_dict(fitted.state_dict)
                model = model.to(memory_format=torch.channels_last)
                preprocess = Preprocess(LITE0, size=160, device=cpu)
                probs = predict_views(model, val_rows, preprocess=preprocess)[0]
                score = accuracy(val.label_array, probs)
                scores.setdefault((strength, arm), []).append(score)
                print(f"strength {strength} {arm:7} seed {seed}: {score:.4f} "
                      f"({time.time() - start:.0f} s)", flush=True)  # fmt: skip
    trainer.train_transform = train_transform
    print("\n| aug_strength | old resize | autoclf's | autoclf − old, images per seed | mean |")
    print("|---|---|---|---|---|")
    for strength in (0.0, 0.2):
        old, new = np.array(scores[(strength, "old")]), np.array(scores[(strength, "autoclf")])
        diff = np.round((new - old) * len(val)).astype(int)
        print(f"| {strength} | {old.mean():.4f} | {new.mean():.4f} | "
              f"{', '.join(f'{d:+d}' for d in diff)} | {diff.mean():+.1f} |")  # fmt: skip


if __name__ == "__main__":
    main()
