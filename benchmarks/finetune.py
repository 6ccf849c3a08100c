"""What matters when fine-tuning a pretrained body on a few hundred photos, through autoclf's own
trainer: EfficientNet-Lite0 trained on all of hymenoptera ``train`` (245 photos) and scored on
``val`` (153), one change at a time from a base recipe.

The base is the ``cpu`` space's fixed settings with one choice of its searched ones: lite0 at
224 px, AdamW, body lr 5e-5 and head lr 3e-3 (``head_lr_mult`` 60), weight decay 0.01, batch
32, 4 epochs, cosine with half an epoch of warmup, label smoothing 0.1, light augmentation,
BatchNorm statistics kept (``freeze_bn``). Each variant changes one thing.

    python benchmarks/finetune.py --seeds 0,1          # 15-60 s a run on 2 cores
    python benchmarks/finetune.py --variants base,bn_trains --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "datasets" / "hymenoptera"

BASE = dict(
    backbone="tf_efficientnet_lite0",
    pretrained=True,
    optimizer="adamw",
    lr=5e-5,
    head_lr_mult=60.0,
    weight_decay=0.01,
    batch_size=32,
    freeze_bn=True,
    dropout=0.2,
    aug_strength=0.2,
    scheduler="cosine",
    warmup_epochs=0.5,
    epochs=4,
    image_size=224,
    label_smoothing=0.1,
    grad_clip=1.0,
    keep="last",
)
VARIANTS = {
    "base": {},
    "bn_trains": {"freeze_bn": False},
    "one_lr_3e-3": {"lr": 3e-3, "head_lr_mult": 1.0},
    "body_lr_2e-4": {"lr": 2e-4, "head_lr_mult": 15.0},
    "body_lr_1e-5": {"lr": 1e-5, "head_lr_mult": 300.0},
    "head_first": {"freeze_epochs": 1},
    "head_first_2_of_6": {"freeze_epochs": 2, "epochs": 6},
    "head_lr_1e-2": {"head_lr_mult": 200.0},
    "no_aug": {"aug_strength": 0.0},
    "onecycle": {"scheduler": "onecycle", "warmup_epochs": 0.0},
    "160px": {"image_size": 160},
    "192px": {"image_size": 192},
    "lite1": {"backbone": "tf_efficientnet_lite1"},
    "8_epochs": {"epochs": 8},
}


def caches(size: int, work: Path):
    from autoclf.data.cache import build_cache
    from autoclf.data.index import build_index

    out = {}
    for split in ("train", "val"):
        index = build_index(str(DATA / split), datasets_dir=work)
        cache = build_cache(
            index.paths, size=size, cache_dir=work / f"cache-{split}", skip_bad=True
        )
        keep = np.array([p not in cache.skipped for p in index.paths])
        out[split] = (np.asarray(cache.images), index.label_array[keep])
    return out


def run(params, data, seed: int) -> tuple[float, float]:
    import torch

    from autoclf.metrics import get_metric
    from autoclf.models import ensure_pretrained
    from autoclf.trainer import fit

    ensure_pretrained([params.backbone])
    train_x, train_y = data["train"]
    val_x, val_y = data["val"]
    images = np.concatenate([train_x, val_x])
    labels = np.concatenate([train_y, val_y])
    start = time.perf_counter()
    result = fit(
        params,
        images=images,
        labels=labels,
        train_idx=np.arange(len(train_y)),
        val_idx=np.arange(len(train_y), len(labels)),
        num_classes=2,
        metric=get_metric("accuracy"),
        seed=seed,
        device=torch.device("cpu"),
    )
    return result.kept_score, time.perf_counter() - start


def main() -> None:
    from autoclf.config import TrainParams

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--seeds", default="0,1")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    print("| variant | val accuracy per seed | mean | time per run |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        by_size: dict[int, dict] = {}
        for name in args.variants.split(","):
            params = dataclasses.replace(TrainParams(**BASE), **VARIANTS[name])
            if params.image_size not in by_size:
                by_size[params.image_size] = caches(params.image_size, Path(tmp))
            scores, seconds = zip(
                *(run(params, by_size[params.image_size], s) for s in seeds), strict=True
            )
            print(
                f"| {name} | {', '.join(f'{s:.3f}' for s in scores)} "
                f"| **{statistics.mean(scores):.3f}** | {statistics.mean(seconds):.0f} s |",
                flush=True,
            )


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
