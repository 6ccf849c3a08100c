from __future__ import annotations

import numpy as np
import pytest
import torch

from autoclf import models, trainer
from autoclf.config import TrainParams
from autoclf.data.cache import build_cache
from autoclf.data.folds import assign_folds
from autoclf.data.index import build_index
from autoclf.metrics import get_metric
from autoclf.trainer import NonFiniteLossError, class_balance, fit, release_memory


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    root = tmp_path_factory.mktemp("digits")
    index = build_index("digits", datasets_dir=root)
    cache = build_cache(index.paths, size=16, cache_dir=root / "cache")
    # A 600-image subset keeps these tests to seconds.
    keep = np.sort(np.random.default_rng(0).choice(len(index), 600, replace=False))
    labels = index.label_array[keep]
    folds = assign_folds(labels, n_splits=3, seed=0)
    return np.asarray(cache.images)[keep], labels, folds


def _fit(
    digits, on_epoch=None, loader_workers=None, keep_weights=False, micro_batch=None, **overrides
):
    images, labels, folds = digits
    params = TrainParams(
        **{
            "backbone": "test_efficientnet",
            "image_size": 16,
            "epochs": 4,
            "lr": 5e-3,
            "batch_size": 32,
            "warmup_epochs": 0.5,
            **overrides,
        }
    )
    return fit(
        params,
        images=images,
        labels=labels,
        train_idx=np.flatnonzero(folds != 0),
        val_idx=np.flatnonzero(folds == 0),
        num_classes=10,
        metric=get_metric("accuracy"),
        seed=7,
        device=torch.device("cpu"),
        loader_workers=loader_workers,
        on_epoch=on_epoch,
        keep_weights=keep_weights,
        micro_batch=micro_batch,
    )


def test_learns_digits_and_hook_sees_every_epoch(digits):
    seen = []
    result = _fit(digits, on_epoch=seen.append)
    assert [r.epoch for r in seen] == [1, 2, 3, 4] == [r.epoch for r in result.history]
    assert result.kept_score > 0.6  # chance is 0.1
    assert result.kept_score == max(r.score for r in seen)
    assert result.val_probs.shape == (200, 10)
    assert np.allclose(result.val_probs.sum(axis=1), 1.0, atol=1e-4)
    assert result.history[-1].train_loss < result.history[0].train_loss
    # The kept epoch's validation loss is that of the probabilities it kept.
    p_true = result.val_probs[np.arange(200), digits[1][digits[2] == 0]]
    kept = seen[result.kept_epoch - 1]
    assert kept.val_loss == pytest.approx(-np.log(p_true).mean(), rel=1e-5)
    assert seen[-1].val_loss < seen[0].val_loss


def test_same_seed_same_result(digits):
    a = _fit(digits, epochs=2, aug_strength=0.5)
    b = _fit(digits, epochs=2, aug_strength=0.5)
    assert np.array_equal(a.val_probs, b.val_probs)


def test_hook_can_stop_training(digits):
    class Stop(Exception):
        pass

    def stop_at_two(report):
        if report.epoch == 2:
            raise Stop

    with pytest.raises(Stop):
        _fit(digits, on_epoch=stop_at_two)


def test_early_stopping_keeps_best_epoch(digits):
    # With no learning to speak of, the score stalls and training stops early.
    result = _fit(digits, lr=1e-12, scheduler="constant", warmup_epochs=0, epochs=10, patience=2)
    assert result.epochs_run < 10
    assert result.epochs_run == result.kept_epoch + 2
    best = max(result.history, key=lambda r: r.score)
    assert best.epoch == result.kept_epoch and best.score == result.kept_score


def test_keep_last_scores_the_last_epoch_not_the_best(digits):
    # With no learning to speak of, the score wanders (BatchNorm statistics still move), and
    # the best of the four epochs is not the last.
    stalled = {"lr": 1e-12, "scheduler": "constant", "warmup_epochs": 0}
    best = _fit(digits, **stalled)
    assert best.kept_epoch < 4
    seen = []
    result = _fit(digits, keep="last", keep_weights=True, on_epoch=seen.append, **stalled)
    assert [r.score for r in seen] == [r.score for r in best.history]  # the same four epochs
    assert result.kept_epoch == 4 and result.kept_score == seen[-1].score != best.kept_score
    assert seen[-1].best_score == best.kept_score  # the report still shows the best so far
    assert not np.array_equal(result.val_probs, best.val_probs)
    # The kept weights are the last epoch's: they give back its validation probabilities.
    model = models.create_model(TrainParams(backbone="test_efficientnet"), num_classes=10)
    model.load_state_dict(result.state_dict)
    images, _, folds = digits
    pre = trainer.Preprocess("test_efficientnet", size=16, device=torch.device("cpu"))
    probs = trainer.predict_views(model, images, indices=np.flatnonzero(folds == 0), preprocess=pre)
    assert np.allclose(probs[0], result.val_probs, atol=1e-5)


def test_non_finite_loss_stops_within_a_step(digits):
    with pytest.raises(NonFiniteLossError, match="epoch 1"):
        _fit(
            digits,
            optimizer="sgd",
            lr=1e6,
            scheduler="constant",
            warmup_epochs=0,
            grad_clip=0.0,
            label_smoothing=0.0,
        )


def test_train_without_validation_keeps_last_weights(digits):
    images, labels, _ = digits
    params = TrainParams(backbone="test_resnet", image_size=16, epochs=2, batch_size=64)
    result = fit(
        params,
        images=images,
        labels=labels,
        train_idx=np.arange(len(labels)),
        val_idx=None,
        num_classes=10,
        metric=get_metric("accuracy"),
        seed=0,
        device=torch.device("cpu"),
        keep_weights=True,
    )
    assert result.kept_epoch == 2 and result.kept_score is None and result.val_probs is None
    assert result.state_dict and all(t.device.type == "cpu" for t in result.state_dict.values())


def test_trains_in_channels_last_and_saved_weights_load_back_so(digits, tmp_path):
    # channels_last on the CPU too (oneDNN is faster in it); the kept and reloaded weights too.
    result = _fit(digits, epochs=1, keep_weights=True)
    convs = [t for t in result.state_dict.values() if t.ndim == 4 and t.shape[-1] > 1]
    assert convs and all(t.is_contiguous(memory_format=torch.channels_last) for t in convs)
    assert not all(t.is_contiguous() for t in convs)
    torch.save(result.state_dict, tmp_path / "w.pt")
    params = TrainParams(backbone="test_efficientnet", image_size=16)
    cpu = torch.device("cpu")
    model = models.load_trained(params, tmp_path / "w.pt", num_classes=10, device=cpu)
    weights = [p for p in model.parameters() if p.ndim == 4 and p.shape[-1] > 1]
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in weights)


def test_loader_worker_processes_are_seeded_and_deterministic(digits):
    # The CUDA default path: augmentation runs in worker processes, each with its own stream.
    a = _fit(digits, epochs=2, aug_strength=0.5, loader_workers=2)
    b = _fit(digits, epochs=2, aug_strength=0.5, loader_workers=2)
    assert np.array_equal(a.val_probs, b.val_probs)
    assert a.kept_score > 0.25  # it learns (chance is 0.1)


@pytest.mark.parametrize("micro_batch", [16, 3])
def test_gradient_accumulation_matches_the_full_batch(digits, micro_batch):
    # No BatchNorm, dropout or augmentation: the chunks then see exactly what the batch sees.
    # 3 does not divide the batch of 32, so its chunks are ragged. SGD, because Adam divides by
    # the gradient's size: the key bias of attention has a zero gradient, and Adam would blow
    # its rounding noise (which the summation order changes) up to a step of lr.
    kw = dict(backbone="test_vit", epochs=1, dropout=0.0, optimizer="sgd", keep_weights=True)
    full = _fit(digits, **kw)
    accumulated = _fit(digits, micro_batch=micro_batch, **kw)
    assert full.state_dict.keys() == accumulated.state_dict.keys()
    for name, weight in full.state_dict.items():
        assert torch.allclose(weight, accumulated.state_dict[name], atol=1e-5), name
    assert accumulated.kept_score == full.kept_score
    assert np.allclose(accumulated.val_probs, full.val_probs, atol=1e-5)
    assert accumulated.history[0].train_loss == pytest.approx(full.history[0].train_loss, rel=1e-5)


def test_on_a_cpu_frozen_batchnorm_trains_in_small_passes_to_the_same_weights(digits, monkeypatch):
    """With BatchNorm frozen, chunks of a batch change nothing but the speed (1.6x at 224 px
    on the CPU), so they are the CPU's default, a class-weighted loss included; where
    BatchNorm trains, a batch is one pass."""
    passes = {}  # (freeze_bn, training) -> the rows of each forward pass
    real = trainer.create_model

    def spied(params, **kwargs):
        model = real(params, **kwargs)
        key = lambda m: (params.freeze_bn, m.training)  # noqa: E731
        model.register_forward_hook(lambda m, i, o: passes.setdefault(key(m), set()).add(len(i[0])))
        return model

    monkeypatch.setattr(trainer, "create_model", spied)
    kw = dict(backbone="test_resnet", image_size=128, epochs=1, optimizer="sgd", keep_weights=True)
    chunked = _fit(digits, freeze_bn=True, **kw)
    assert passes[(True, True)] == {16} and passes[(True, False)] <= {16, 8}  # 2^18 pixels
    one_pass = _fit(digits, freeze_bn=True, micro_batch=32, **kw)
    assert passes[(True, True)] == {16, 32}
    for name, weight in one_pass.state_dict.items():
        assert torch.allclose(weight, chunked.state_dict[name], atol=1e-5), name
    assert np.allclose(one_pass.val_probs, chunked.val_probs, atol=1e-5)
    _fit(digits, freeze_bn=False, **kw)
    assert passes[(False, True)] == {32}  # BatchNorm's statistics are the whole batch's
    passes.clear()
    # Class weights: each chunk's weighted sum over the whole batch's weight, not its own
    # weighted mean. Digits 5-9 made rare in training, so the weights differ 4-fold.
    images, labels, folds = digits
    folds = np.where((labels >= 5) & (np.arange(len(labels)) % 4 != 0), 0, folds)
    rare = (images, labels, folds)
    weighted = _fit(rare, freeze_bn=True, balance="weights", **kw)
    assert passes[(True, True)] == {16}
    weighted_one_pass = _fit(rare, freeze_bn=True, balance="weights", micro_batch=32, **kw)
    for name, weight in weighted_one_pass.state_dict.items():
        assert torch.allclose(weight, weighted.state_dict[name], atol=1e-5), name


def test_gradient_accumulation_trains_batchnorm_models(digits):
    result = _fit(digits, epochs=1, micro_batch=7)  # test_efficientnet has BatchNorm
    assert np.isfinite(result.history[0].train_loss)
    assert np.isfinite(result.val_probs).all()


class _OutOfMemoryAbove(torch.nn.Module):
    """A model that, like a full GPU, runs out of memory on more than ``limit`` rows at once."""

    def __init__(self, model: torch.nn.Module, limit: int):
        super().__init__()
        self.model, self.limit, self.largest = model, limit, 0

    def forward(self, x):
        if x.shape[0] > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        self.largest = max(self.largest, x.shape[0])
        return self.model(x)


def test_out_of_memory_propagates_and_a_smaller_micro_batch_fits(digits, monkeypatch):
    created = []

    def create_model(params, *, num_classes):
        created.append(_OutOfMemoryAbove(models.create_model(params, num_classes=num_classes), 8))
        return created[-1]

    monkeypatch.setattr(trainer, "create_model", create_model)
    with pytest.raises(torch.OutOfMemoryError, match="injected"):
        _fit(digits, backbone="test_resnet", epochs=1)
    release_memory(torch.device("cpu"))
    # Validation goes through the same model, so it too has to stay within the limit.
    result = _fit(digits, backbone="test_resnet", epochs=1, micro_batch=8)
    assert created[-1].largest == 8
    assert np.isfinite(result.history[0].train_loss) and result.val_probs.shape == (200, 10)


def test_micro_batch_must_be_positive(digits):
    with pytest.raises(ValueError, match="micro_batch.*0"):
        _fit(digits, micro_batch=0)


IMBALANCED = np.array([0] * 900 + [1] * 90 + [2] * 10)


def test_sampler_balance_draws_every_class_about_equally_often():
    generator = torch.Generator().manual_seed(0)
    sampler, weights = class_balance(IMBALANCED, num_classes=3, mode="sampler", generator=generator)
    drawn = IMBALANCED[list(sampler)]
    assert weights is None and len(drawn) == len(IMBALANCED)
    shares = np.bincount(drawn, minlength=3) / len(drawn)
    assert np.abs(shares - 1 / 3).max() < 0.05  # 90% / 9% / 1% in the data


def test_weights_balance_makes_every_class_weigh_the_same_in_sum():
    generator = torch.Generator().manual_seed(0)
    sampler, weights = class_balance(IMBALANCED, num_classes=3, mode="weights", generator=generator)
    per_class = weights.numpy() * np.bincount(IMBALANCED)
    assert sampler is None and np.allclose(per_class, len(IMBALANCED) / 3)
    assert class_balance(IMBALANCED, num_classes=3, mode="none", generator=generator) == (
        None,
        None,
    )


@pytest.mark.parametrize("mode", ["weights", "sampler"])
def test_balanced_training_learns(digits, mode):
    result = _fit(digits, balance=mode, epochs=2)
    assert np.isfinite([r.train_loss for r in result.history]).all()
    assert result.kept_score > 0.3  # ten classes: chance is 0.1


def test_nan_probabilities_keep_their_score_and_a_nan_validation_loss(digits, monkeypatch):
    # Weights that give NaN on the validation images while the training loss stays finite:
    # the epoch is scored as before (argmax of NaN is class 0), and its loss is NaN, where
    # scikit-learn's log loss would raise and fail the trial.
    def nan_views(model, images, *, indices, **kwargs):
        return [np.full((len(indices), 10), np.nan, dtype=np.float32)]

    monkeypatch.setattr(trainer, "predict_views", nan_views)
    seen = []
    result = _fit(digits, epochs=1, on_epoch=seen.append)
    assert result.kept_score == pytest.approx(np.mean(digits[1][digits[2] == 0] == 0))
    assert np.isnan(seen[0].val_loss)


def _initial_state(**overrides) -> dict[str, torch.Tensor]:
    """The weights fit() starts from with _fit's seed."""
    trainer.seed_everything(7)
    params = TrainParams(backbone="test_efficientnet", image_size=16, **overrides)
    state = models.create_model(params, num_classes=10).state_dict()
    return {k: v.clone() for k, v in state.items()}


def test_freeze_epochs_train_the_head_alone_first(digits):
    start = _initial_state()
    one = _fit(digits, epochs=1, freeze_epochs=1, keep="last", keep_weights=True).state_dict
    moved = {k for k, v in one.items() if v.is_floating_point() and not torch.equal(v, start[k])}
    # The head moved; the body's parameters did not (BatchNorm's running statistics may).
    assert {"classifier.weight", "classifier.bias"} <= moved
    assert all(k.startswith("classifier.") or "running_" in k for k in moved), moved
    two = _fit(digits, epochs=2, freeze_epochs=1, keep="last", keep_weights=True).state_dict
    assert not torch.equal(two["conv_stem.weight"], start["conv_stem.weight"])  # then all learn


def test_freeze_bn_keeps_the_running_statistics(digits):
    start = _initial_state()
    frozen = _fit(digits, epochs=1, freeze_bn=True, keep="last", keep_weights=True).state_dict
    running = [k for k in start if "running_mean" in k or "running_var" in k]
    assert running and all(torch.equal(frozen[k], start[k]) for k in running)
    assert not torch.equal(frozen["conv_stem.weight"], start["conv_stem.weight"])
    free = _fit(digits, epochs=1, keep="last", keep_weights=True).state_dict
    assert not all(torch.equal(free[k], start[k]) for k in running)
