"""One training step on the CPU: the trainer's layout and optimiser against the plain ones.

autoclf trains in channels_last with a fused optimiser where torch has one (Adam, AdamW, SGD,
Adagrad). This times one step (zero_grad, forward, loss, backward, gradient clipping,
optimiser step) on random inputs, in four ways, each the best of ``--reps`` runs of
``--steps`` steps after a warm-up:

- plain: contiguous (NCHW) model and inputs, torch's default (per-parameter loop) optimiser;
- fused: the fused optimiser only;
- channels_last: the layout only;
- autoclf: both, built by the trainer's own ``build_optimizer`` and ``MEMORY_FORMAT``.

It also times an inference forward pass (batch 256) in both layouts, as validation runs it
each epoch. The ratio columns are plain / autoclf: above 1 is faster.

    python benchmarks/train_step.py       # about 3 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import time

import torch
from timm.optim import create_optimizer_v2

from autoclf.config import TrainParams
from autoclf.models import MEMORY_FORMAT, create_model
from autoclf.optim import build_optimizer

# (backbone, image size, batch, threads): the tiny space as the benchmarks run it (one thread
# per run, two runs at a time), then ImageNet-sized models on both cores.
CASES = [
    ("test_resnet", 32, 32, 1),
    ("test_efficientnet", 32, 32, 1),
    ("test_convnext", 32, 32, 1),
    ("test_byobnet", 32, 32, 1),
    ("resnet18", 128, 16, 2),
    ("efficientnet_b0", 128, 16, 2),
    ("convnext_atto", 128, 16, 2),
]
# name → (optimiser, channels_last); "autoclf" builds its optimiser with the trainer's own
# build_optimizer (fused where torch has one).
VARIANTS = {
    "plain": ("loop", False),
    "fused": ("fused", False),
    "channels_last": ("loop", True),
    "autoclf": ("autoclf", True),
}


def best_ms(fn, *, steps: int, reps: int) -> float:
    fn()
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        for _ in range(steps):
            fn()
        best = min(best, (time.perf_counter() - start) / steps)
    return best * 1000


def train_step_ms(params, *, batch, optimizer, channels_last, steps, reps) -> float:
    torch.manual_seed(0)
    layout = MEMORY_FORMAT if channels_last else torch.contiguous_format
    model = create_model(params, num_classes=10).to(memory_format=layout)
    if optimizer == "autoclf":
        opt = build_optimizer(model, params)
    else:
        opt = create_optimizer_v2(
            model,
            opt=params.optimizer,
            lr=params.lr,
            weight_decay=params.weight_decay,
            **({"fused": True} if optimizer == "fused" else {}),
        )
    x = torch.randn(batch, 3, params.image_size, params.image_size).contiguous(memory_format=layout)
    y = torch.randint(0, 10, (batch,))
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 2.0)
        opt.step()

    return best_ms(step, steps=steps, reps=reps)


@torch.inference_mode()
def eval_ms(params, *, channels_last: bool, reps: int) -> float:
    model = create_model(params, num_classes=10).eval()
    x = torch.randn(256, 3, params.image_size, params.image_size)
    if channels_last:
        model = model.to(memory_format=MEMORY_FORMAT)
        x = x.contiguous(memory_format=MEMORY_FORMAT)
    return best_ms(lambda: model(x), steps=1, reps=reps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    print(
        "| backbone | size | batch | threads | plain ms | fused ms | channels_last ms "
        "| autoclf ms | plain / autoclf | eval 256 plain ms | eval 256 channels_last ms "
        "| eval plain / channels_last |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for backbone, size, batch, threads in CASES:
        torch.set_num_threads(threads)
        # The ImageNet-sized models take half a second a step: fewer of them.
        steps, reps = (args.steps, args.reps) if size <= 64 else (3, 3)
        params = TrainParams(
            backbone=backbone, image_size=size, optimizer="adamw", lr=3e-3, dropout=0.1
        )
        ms = {
            name: train_step_ms(
                params, batch=batch, optimizer=opt, channels_last=cl, steps=steps, reps=reps
            )
            for name, (opt, cl) in VARIANTS.items()
        }
        ev = {cl: eval_ms(params, channels_last=cl, reps=3) for cl in (False, True)}
        print(
            f"| {backbone} | {size} | {batch} | {threads} | {ms['plain']:.1f} | {ms['fused']:.1f} "
            f"| {ms['channels_last']:.1f} | {ms['autoclf']:.1f} "
            f"| **{ms['plain'] / ms['autoclf']:.2f}×** | {ev[False]:.1f} | {ev[True]:.1f} "
            f"| {ev[False] / ev[True]:.2f}× |",
            flush=True,
        )


if __name__ == "__main__":
    main()
