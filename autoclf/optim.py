"""Optimisers (timm's factory) and one LR schedule class that covers every scheduler name.

The schedule sets each param group's LR itself, once per step, so warmup composes with every
shape, plateau included, without stacking torch schedulers that overwrite each other.
"""

from __future__ import annotations

import inspect
import math

import torch
from timm.optim import create_optimizer_v2, get_optimizer_class

from autoclf.config import TrainParams
from autoclf.models import head_parameters


def build_optimizer(model: torch.nn.Module, params: TrainParams) -> torch.optim.Optimizer:
    # timm leaves biases and norm weights out of weight decay, as they should be.
    return create_optimizer_v2(
        param_groups(model, params),
        opt=params.optimizer,
        lr=params.lr,
        weight_decay=params.weight_decay,
        momentum=params.momentum,
        **({"fused": True} if supports_fused(params.optimizer) else {}),
    )


def param_groups(model: torch.nn.Module, params: TrainParams) -> list[dict]:
    """Body and head, each with and without weight decay (biases and norm weights go without,
    as timm does it). The head's groups learn at ``lr × head_lr_mult``; LRSchedule scales
    every group's own LR, so the ratio holds through warmup and decay."""
    head = head_parameters(model)
    skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()
    groups: dict[tuple[bool, bool], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decay = p.ndim > 1 and not name.endswith(".bias") and name not in skip
        groups.setdefault((id(p) in head, decay), []).append(p)
    return [
        {
            "params": ps,
            "weight_decay": params.weight_decay if decay else 0.0,
            "lr": params.lr * (params.head_lr_mult if is_head else 1.0),
        }
        for (is_head, decay), ps in sorted(groups.items())
    ]


def supports_fused(name: str) -> bool:
    """Whether the optimiser ``name`` has a fused implementation (torch's Adam, AdamW, SGD and
    Adagrad, on the CPU and CUDA): one kernel for all parameters instead of a loop over them."""
    return "fused" in inspect.signature(get_optimizer_class(name, bind_defaults=False)).parameters


class LRSchedule:
    """Per-step LR: linear warmup, then ``cosine``, ``onecycle``, ``step``, ``plateau`` or
    ``constant``. ``step()`` after every optimiser step; ``epoch_end(improved)`` after each
    validation (only ``plateau`` uses it)."""

    MIN_RATIO = 0.01  # cosine floor, as a fraction of the peak LR
    PLATEAU_PATIENCE = 2  # epochs without improvement before the LR drops
    PLATEAU_FACTOR = 0.1

    def __init__(
        self, optimizer: torch.optim.Optimizer, params: TrainParams, *, steps_per_epoch: int
    ):
        self.optimizer = optimizer
        self.kind = params.scheduler
        self.base_lrs = [group["lr"] for group in optimizer.param_groups]
        self.total = max(1, params.epochs * steps_per_epoch)
        warmup = round(params.warmup_epochs * steps_per_epoch)
        if self.kind == "onecycle" and warmup == 0:
            warmup = round(0.3 * self.total)  # OneCycle's own default rise
        self.warmup = min(warmup, self.total - 1)
        self.t = 0
        self.plateau_scale = 1.0
        self.stale_epochs = 0
        self._apply()

    def factor(self, t: int) -> float:
        """The LR multiplier at step ``t`` (before the plateau scale)."""
        if t < self.warmup:
            # OneCycle rises from lr/25; a plain warmup from lr/warmup, so step 0 still learns.
            start = 1 / 25 if self.kind == "onecycle" else 1 / self.warmup
            return start + (1 - start) * t / self.warmup
        progress = (t - self.warmup) / max(1, self.total - self.warmup)
        if self.kind == "cosine":
            return self.MIN_RATIO + (1 - self.MIN_RATIO) * 0.5 * (1 + math.cos(math.pi * progress))
        if self.kind == "onecycle":
            end = 1 / 25 / 1e4
            return end + (1 - end) * 0.5 * (1 + math.cos(math.pi * progress))
        if self.kind == "step":
            return 0.1 ** sum(progress >= m for m in (0.5, 0.75))
        return 1.0  # constant, plateau

    def step(self) -> None:
        self.t += 1
        self._apply()

    def epoch_end(self, *, improved: bool) -> None:
        if self.kind != "plateau" or self.t < self.warmup:
            return
        self.stale_epochs = 0 if improved else self.stale_epochs + 1
        if self.stale_epochs >= self.PLATEAU_PATIENCE:
            self.plateau_scale *= self.PLATEAU_FACTOR
            self.stale_epochs = 0
        self._apply()

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def _apply(self) -> None:
        scale = self.factor(min(self.t, self.total - 1)) * self.plateau_scale
        for group, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            group["lr"] = base * scale
