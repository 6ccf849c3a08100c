"""Head-only training: a linear classifier on the frozen body's cached features.

A head-only trial (``kind: head``) fits one per fold in seconds, and is saved as the full timm
model (the pretrained body with this head as its classifier), so finalize, TTA, predict and
the report's Grad-CAM take it like any other model. An LP-FT fine-tune (``lp_ft: true``)
starts each fold from a head fitted here with :data:`PROBE`'s settings.

The head sees every cached view of a training image (the image and its mirror image) as a
sample, and is scored on the plain view, as a fine-tuned model is during the search.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable

import numpy as np
import torch

from autoclf.config import TrainParams
from autoclf.metrics import Metric, get_metric
from autoclf.models import create_model, set_head
from autoclf.trainer import EpochReport, FitResult, class_balance, seed_everything

LOG_LOSS = get_metric("log_loss")
# The head an LP-FT fine-tune starts from: AdamW on the cached features. On hymenoptera's 245
# photos (lite0 at 224 px, 5-fold CV) lr 3e-3 to 3e-2, 10 to 60 epochs and weight decay 1e-3
# to 0.1 all scored 0.93-0.95, within 4 images of each other; these are the cheapest of the best.
PROBE = {"lr": 3e-3, "weight_decay": 1e-3, "epochs": 10, "batch_size": 32, "dropout": 0.0}


def train_head(
    params: TrainParams,
    *,
    features: np.ndarray,
    labels: np.ndarray,
    train_idx: np.ndarray,
    num_classes: int,
    seed: int,
) -> torch.nn.Linear:
    """A linear head fitted on ``features[:, train_idx]`` (views, rows, dims) with ``params``'
    lr, weight decay, epochs, batch size, dropout, label smoothing and class balance: AdamW on
    a cosine schedule, from zero (as ``models.create_model`` starts a new head)."""
    seed_everything(seed)
    views, _, dims = features.shape
    x = torch.from_numpy(np.ascontiguousarray(features[:, train_idx]).reshape(-1, dims))
    y = torch.from_numpy(np.tile(labels[train_idx], views).astype(np.int64))
    head = torch.nn.Linear(dims, num_classes)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    drop = torch.nn.Dropout(params.dropout)
    generator = torch.Generator().manual_seed(seed)
    sampler, class_weights = class_balance(
        y.numpy(), num_classes=num_classes, mode=params.balance, generator=generator
    )
    loss_fn = torch.nn.CrossEntropyLoss(
        weight=class_weights, label_smoothing=params.label_smoothing
    )
    # Weight decay skips the bias, as a fine-tune's optimiser does (optim.param_groups).
    groups = [{"params": [head.weight]}, {"params": [head.bias], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=params.lr, weight_decay=params.weight_decay)
    batch = min(params.batch_size, len(y))
    steps = params.epochs * math.ceil(len(y) / batch)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, steps) / steps))
    )
    head.train()
    for _ in range(params.epochs):
        order = (
            torch.tensor(list(sampler), dtype=torch.long)
            if sampler is not None
            else torch.randperm(len(y), generator=generator)
        )
        for rows in order.split(batch):
            loss = loss_fn(head(drop(x[rows])), y[rows])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    return head.eval()


def fit_head(
    params: TrainParams,
    *,
    features: np.ndarray,
    labels: np.ndarray,
    train_idx: np.ndarray,
    val_idx: np.ndarray | None,
    num_classes: int,
    metric: Metric,
    seed: int,
    keep_weights: bool = False,
    on_epoch: Callable[[EpochReport], None] | None = None,
) -> FitResult:
    """:func:`autoclf.trainer.fit` for a head-only trial: the same result (the fold's score,
    its validation probabilities, and with ``keep_weights`` the full model's weights), one
    report at the end of the fold."""
    start = time.perf_counter()
    head = train_head(
        params,
        features=features,
        labels=labels,
        train_idx=train_idx,
        num_classes=num_classes,
        seed=seed,
    )
    with torch.no_grad():
        train_logits = head(torch.from_numpy(np.ascontiguousarray(features[0, train_idx])))
        train_loss = LOG_LOSS(labels[train_idx], torch.softmax(train_logits, 1).numpy())
    result = FitResult(kept_epoch=params.epochs, kept_score=None, val_probs=None, epochs_run=0)
    val_loss = None
    if val_idx is not None:
        with torch.no_grad():
            logits = head(torch.from_numpy(np.ascontiguousarray(features[0, val_idx])))
        result.val_probs = torch.softmax(logits, dim=1).numpy().astype(np.float32)
        result.kept_score = metric(labels[val_idx], result.val_probs)
        val_loss = LOG_LOSS(labels[val_idx], result.val_probs)
    if keep_weights:
        result.state_dict = full_model_state(params, head, num_classes=num_classes)
    report = EpochReport(
        params.epochs,
        params.epochs,
        train_loss,
        result.kept_score,
        result.kept_score,
        0.0,
        time.perf_counter() - start,
        val_loss,
    )
    result.history.append(report)
    if on_epoch is not None:
        on_epoch(report)
    return result


def full_model_state(
    params: TrainParams, head: torch.nn.Linear, *, num_classes: int
) -> dict[str, torch.Tensor]:
    """The weights of the whole timm model: its pretrained body, ``head`` as its classifier."""
    model = create_model(params, num_classes=num_classes)
    set_head(model, head)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def probe_params(params: TrainParams) -> TrainParams:
    """The settings of an LP-FT trial's first head: :data:`PROBE`, with the trial's label
    smoothing and class balance."""
    return dataclasses.replace(params, kind="head", **PROBE)
