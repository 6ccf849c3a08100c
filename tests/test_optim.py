from __future__ import annotations

import pytest
import torch

from autoclf.config import TrainParams
from autoclf.optim import LRSchedule, build_optimizer, supports_fused


def _lrs(scheduler: str, *, epochs=10, steps=10, warmup=1.0, improved=None):
    model = torch.nn.Linear(2, 2)
    params = TrainParams(
        backbone="test_resnet", lr=0.1, epochs=epochs, scheduler=scheduler, warmup_epochs=warmup
    )
    opt = build_optimizer(model, params)
    schedule = LRSchedule(opt, params, steps_per_epoch=steps)
    lrs = []
    for epoch in range(epochs):
        for _ in range(steps):
            lrs.append(schedule.lr)
            schedule.step()
        schedule.epoch_end(improved=improved(epoch) if improved else True)
    return lrs


def test_warmup_rises_linearly_to_peak():
    lrs = _lrs("cosine")
    assert lrs[0] == pytest.approx(0.01)
    assert lrs[10] == pytest.approx(0.1)  # the first step after one epoch of warmup
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:11], strict=True))


def test_cosine_decays_to_floor():
    lrs = _lrs("cosine", warmup=0)
    assert lrs[0] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lrs, lrs[1:], strict=False))
    assert lrs[-1] == pytest.approx(0.1 * LRSchedule.MIN_RATIO, rel=0.05)


def test_step_drops_tenfold_at_half_and_three_quarters():
    lrs = _lrs("step", warmup=0, epochs=4, steps=10)
    assert (
        lrs[19] == pytest.approx(0.1)
        and lrs[20] == pytest.approx(0.01)
        and lrs[30] == pytest.approx(0.001)
    )


def test_onecycle_starts_low_peaks_then_anneals():
    lrs = _lrs("onecycle", warmup=0)
    peak = lrs.index(max(lrs))
    assert lrs[0] == pytest.approx(0.1 / 25)
    assert 25 <= peak <= 35  # 30% of 100 steps
    assert lrs[-1] < 1e-4


def test_plateau_drops_after_patience_epochs_without_improvement():
    lrs = _lrs("plateau", warmup=0, epochs=6, steps=1, improved=lambda e: e < 2)
    assert lrs[:4] == pytest.approx([0.1] * 4)
    assert lrs[4] == pytest.approx(0.01)


def test_no_weight_decay_on_biases():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    opt = build_optimizer(model, TrainParams(backbone="test_resnet", weight_decay=0.05))
    decays = {g["weight_decay"]: len(g["params"]) for g in opt.param_groups}
    assert decays == {0.0: 3, 0.05: 1}


@pytest.mark.parametrize("name", ["adamw", "adam", "sgd", "momentum"])
def test_torch_optimizers_run_fused(name):
    model = torch.nn.Conv2d(3, 4, 3)
    opt = build_optimizer(model, TrainParams(backbone="test_resnet", optimizer=name))
    assert opt.defaults["fused"] is True
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    before = model.weight.detach().clone()
    opt.step()
    assert not torch.equal(before, model.weight)


@pytest.mark.parametrize("name", ["lamb", "lion", "rmsprop"])
def test_optimizers_without_a_fused_kernel_are_built_without_one(name):
    assert not supports_fused(name)
    params = TrainParams(backbone="test_resnet", optimizer=name)
    opt = build_optimizer(torch.nn.Linear(2, 2), params)
    assert "fused" not in opt.defaults or not opt.defaults["fused"]


def test_the_head_learns_faster_through_warmup_and_decay():
    import timm

    model = timm.create_model("test_resnet", num_classes=3)
    params = TrainParams(
        backbone="test_resnet", lr=1e-4, head_lr_mult=30.0, weight_decay=0.01, warmup_epochs=1
    )
    opt = build_optimizer(model, params)
    head = {id(p) for p in model.get_classifier().parameters()}
    for group in opt.param_groups:
        is_head = {id(p) for p in group["params"]} <= head
        assert is_head or not ({id(p) for p in group["params"]} & head)  # never mixed
        assert group["lr"] == pytest.approx(3e-3 if is_head else 1e-4)
        if any(p.ndim == 1 for p in group["params"]):
            assert group["weight_decay"] == 0.0
    schedule = LRSchedule(opt, params, steps_per_epoch=10)
    for _ in range(25):
        schedule.step()
        groups = zip(opt.param_groups, schedule.base_lrs, strict=True)
        lrs = {round(g["lr"] / base, 9) for g, base in groups}
        assert len(lrs) == 1  # every group at the same point of the same schedule
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) == sum(
        p.numel() for p in model.parameters()
    )
