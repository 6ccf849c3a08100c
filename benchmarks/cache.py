"""Training epochs from the decoded-image cache against decoding every file every epoch, and
against a plain torchvision ``ImageFolder`` + transforms pipeline.

All three train the same model with the same batch size and optimiser, one step per batch,
over the same images, in the same process:

- cache: autoclf's path. Rows of the uint8 memory-mapped cache (decoded and resized once per
  study), albumentations on the uint8 array, normalisation on the device.
- decode: the same, but each image is decoded from its file and resized again every epoch
  (what a pipeline without the cache does).
- torchvision: ``ImageFolder`` + ``RandomResizedCrop``, flip, ``ToTensor``, ``Normalize``.

DataLoader workers are 0 for all three, as autoclf uses on the CPU (the training itself needs
every core). The figure is the best of ``--epochs`` epochs after one warm-up epoch.

    python benchmarks/cache.py [DATA]      # default ../shared/datasets/hymenoptera/train
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torchvision
from torch.utils.data import DataLoader, Dataset

from autoclf.augment import train_transform
from autoclf.config import TrainParams
from autoclf.data.cache import build_cache, resize_square
from autoclf.data.images import load_rgb
from autoclf.data.index import build_index
from autoclf.inference import Preprocess
from autoclf.models import create_model
from autoclf.trainer import CachedImages

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared/datasets/hymenoptera/train"


class DecodedEveryEpoch(Dataset):
    """CachedImages without the cache: decode and resize the file on every access."""

    def __init__(self, paths, labels, size, transform):
        self.paths, self.labels, self.size, self.transform = paths, labels, size, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        image = resize_square(load_rgb(self.paths[i]), self.size)
        return self.transform(image=image)["image"], int(self.labels[i])


def epoch_seconds(loader, model, step, *, epochs: int) -> float:
    times = []
    for _ in range(epochs + 1):  # the first epoch warms up allocators and caches
        start = time.perf_counter()
        for x, y in loader:
            step(x, y)
        times.append(time.perf_counter() - start)
    return min(times[1:])


def bench(
    data: Path, *, size: int, backbone: str, train: bool, batch: int, epochs: int
) -> dict[str, float]:
    index = build_index(data, datasets_dir=tempfile.gettempdir())
    labels = index.label_array
    params = TrainParams(backbone=backbone, image_size=size, aug_strength=0.3)
    device = torch.device("cpu")
    model = create_model(params, num_classes=len(index.classes))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    preprocess = Preprocess(backbone, size=size, device=device)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        if x.dtype == torch.uint8:  # autoclf's pipelines normalise on the device
            x = preprocess(x)
        if not train:
            return  # the data pipeline alone: what an (infinitely) fast GPU would wait for
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        optimizer.step()

    def loader(dataset) -> DataLoader:
        return DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=0, drop_last=True)

    transform = train_transform(strength=0.3, size=size, seed=0)
    with tempfile.TemporaryDirectory() as cache_dir:
        start = time.perf_counter()
        cache = build_cache(index.paths, size=size, cache_dir=cache_dir)
        build_s = time.perf_counter() - start
        rows = np.arange(len(index))
        cached = epoch_seconds(
            loader(CachedImages(cache.images, labels, rows, transform)), model, step, epochs=epochs
        )
    decoded = epoch_seconds(
        loader(DecodedEveryEpoch(index.paths, labels, size, transform)), model, step, epochs=epochs
    )
    # Preprocess keeps mean and std scaled for uint8 input; ToTensor gives [0, 1].
    mean = (preprocess.mean.flatten() / 255).tolist()
    std = (preprocess.std.flatten() / 255).tolist()
    tv = torchvision.transforms
    folder = torchvision.datasets.ImageFolder(
        str(data),
        transform=tv.Compose(
            [
                tv.RandomResizedCrop(size, scale=(0.775, 1.0)),
                tv.RandomHorizontalFlip(),
                tv.ToTensor(),
                tv.Normalize(mean, std),
            ]
        ),
    )
    plain = epoch_seconds(loader(folder), model, step, epochs=epochs)
    return {"build": build_s, "cache": cached, "decode": decoded, "torchvision": plain}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", nargs="?", default=str(DEFAULT_DATA))
    parser.add_argument("--backbone", default="test_resnet")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"{args.data}: {args.backbone}, batch {args.batch}, {torch.get_num_threads()} threads")
    print(
        f"{'training':<22}{'size':>5}{'cache s':>9}{'decode s':>10}{'tv s':>8}"
        f"{'decode/cache':>14}{'tv/cache':>10}{'cache build s':>15}"
    )
    for train in (False, True):
        for size in (64, 224):
            r = bench(
                Path(args.data),
                size=size,
                backbone=args.backbone,
                train=train,
                batch=args.batch,
                epochs=args.epochs,
            )
            label = args.backbone if train else "none (data only)"
            print(
                f"{label:<22}{size:>5}{r['cache']:>9.2f}{r['decode']:>10.2f}"
                f"{r['torchvision']:>8.2f}{r['decode'] / r['cache']:>13.2f}x"
                f"{r['torchvision'] / r['cache']:>9.2f}x{r['build']:>15.2f}"
            )


if __name__ == "__main__":
    main()
