"""The shared trainer: one model on one fold (or on everything), top to bottom.

Every trial of every study goes through :func:`fit`. It takes images from the shared decoded
cache, so the only per-sample CPU work is augmentation.
"""

from __future__ import annotations

import gc
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from autoclf.augment import train_transform
from autoclf.config import TrainParams
from autoclf.errors import AutoclfError
from autoclf.inference import Preprocess, amp_dtype, autocast_for, predict_views, rows_per_pass
from autoclf.metrics import Metric, get_metric
from autoclf.models import MEMORY_FORMAT, create_model, head_parameters, interpolation, set_head
from autoclf.optim import LRSchedule, build_optimizer
from autoclf.threads import follow_free_cores

LOG_LOSS = get_metric("log_loss")  # each epoch's validation loss, whatever the metric


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


@dataclass(frozen=True)
class EpochReport:
    """What the per-epoch hook sees. ``score`` is None when there is no validation set."""

    epoch: int
    epochs: int
    train_loss: float
    score: float | None
    best_score: float | None
    lr: float
    seconds: float
    # The mean negative log-likelihood of the validation labels under the model's
    # probabilities: a finer-grained signal than a score that counts right and wrong images.
    val_loss: float | None = None


@dataclass
class FitResult:
    # The epoch whose weights, validation score and probabilities are kept: the best one, or
    # with ``params.keep == "last"`` the last one trained.
    kept_epoch: int
    kept_score: float | None
    val_probs: np.ndarray | None  # (len(val_idx), num_classes), float32, at kept_epoch
    epochs_run: int
    history: list[EpochReport] = field(default_factory=list)
    state_dict: dict[str, torch.Tensor] | None = None  # kept weights, on the CPU, if asked for


class CachedImages(Dataset):
    """Rows ``indices`` of the shared uint8 cache, augmented, as (uint8 CHW tensor, label)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, indices: np.ndarray, transform):
        self.images, self.labels, self.indices, self.transform = images, labels, indices, transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        j = self.indices[i]
        # np.array copies the row out of the read-only memory map (torch wants writable memory).
        return self.transform(image=np.array(self.images[j]))["image"], int(self.labels[j])


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise AutoclfError(f"--device {name!r} is not a device (auto, cpu, cuda, cuda:N)") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise AutoclfError(f"--device {name!r}: CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise AutoclfError(
                f"--device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def fit(
    params: TrainParams,
    *,
    images: np.ndarray,
    labels: np.ndarray,
    train_idx: np.ndarray,
    val_idx: np.ndarray | None,
    num_classes: int,
    metric: Metric,
    seed: int,
    device: torch.device,
    loader_workers: int | None = None,
    keep_weights: bool = False,
    on_epoch: Callable[[EpochReport], None] | None = None,
    micro_batch: int | None = None,
    head: torch.nn.Linear | None = None,
) -> FitResult:
    """Train ``params.backbone`` on ``train_idx`` and score each epoch on ``val_idx``.

    ``head``: the classifier to start from (LP-FT: fitted on the frozen body's features)
    instead of a new one.

    ``on_epoch`` runs after every epoch and may raise (``optuna.TrialPruned``) to stop. With
    ``val_idx=None`` it trains all ``params.epochs`` epochs and keeps the last weights.

    ``micro_batch`` caps the rows in one forward pass, for training and validation alike, without
    changing the training: each batch of ``params.batch_size`` accumulates its gradient over
    chunks and takes one optimizer step. A trial that ran out of GPU memory can retry with it.
    (BatchNorm still sees the chunks, not the whole batch.) On a CPU, where BatchNorm does not
    train (``freeze_bn``), chunks of :func:`~autoclf.inference.rows_per_pass` rows are the
    default: the same training, class weights or not, about 1.6x as fast as one big pass at
    224 px.
    """
    if micro_batch is not None and micro_batch < 1:
        raise ValueError(f"micro_batch must be at least 1, got {micro_batch}")
    seed_everything(seed)
    cuda = device.type == "cuda"
    workers = _loader_workers(loader_workers, device)

    model = create_model(params, num_classes=num_classes)
    if head is not None:
        set_head(model, head)
    model = model.to(device, memory_format=MEMORY_FORMAT)
    if cuda:
        torch.backends.cudnn.benchmark = True
    # Normalisation (and any resize) happens on the device, for training and validation alike.
    preprocess = Preprocess(params.backbone, size=params.image_size, device=device)

    # bf16 needs no loss scaling; fp16 (older GPUs) does. The CPU trains in fp32.
    autocast = autocast_for(device, params.amp)
    fp16 = cuda and params.amp and amp_dtype() == torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=fp16)

    train_set = CachedImages(
        images,
        labels,
        train_idx,
        train_transform(
            strength=params.aug_strength,
            size=params.image_size,
            hflip=params.hflip,
            seed=seed,
            interpolation=interpolation(params.backbone),
        ),
    )
    # Dropping the ragged last batch keeps BatchNorm away from a batch of one.
    drop_last = len(train_idx) > params.batch_size
    generator = torch.Generator().manual_seed(seed)
    sampler, class_weights = class_balance(
        labels[train_idx], num_classes=num_classes, mode=params.balance, generator=generator
    )
    if workers > 0:
        # OpenCV's thread pool does not survive a fork: a loader process forked while this
        # process has one hangs for ever at its first OpenCV call. Enlarging small images into
        # a cache starts the pool (finalize decodes a test set, then retrains). The loaders do
        # the OpenCV work from now on, so this process gives its pool up before they fork.
        cv2.setNumThreads(1)
    train_loader = DataLoader(
        train_set,
        batch_size=params.batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        drop_last=drop_last,
        num_workers=workers,
        pin_memory=cuda,
        worker_init_fn=_reseed_worker,
        generator=generator,
        persistent_workers=workers > 0,
    )

    optimizer = build_optimizer(model, params)
    schedule = LRSchedule(optimizer, params, steps_per_epoch=len(train_loader))
    weights = None if class_weights is None else class_weights.to(device)
    # Summed, then divided by the whole batch's weight below: the chunks of a batch then add up
    # to exactly its (class-weighted) mean loss and gradient.
    loss_fn = torch.nn.CrossEntropyLoss(
        weight=weights, label_smoothing=params.label_smoothing, reduction="sum"
    )

    # predict_views' own size of a pass, or smaller where training fell back to a micro-batch.
    val_batch = rows_per_pass(device, params.image_size)
    if micro_batch is not None:
        val_batch = min(val_batch, micro_batch)
    elif device.type == "cpu" and params.freeze_bn:
        micro_batch = val_batch  # with no batch statistics, chunks change nothing but the speed

    result = FitResult(kept_epoch=0, kept_score=None, val_probs=None, epochs_run=0)
    best_score, best_epoch = None, 0  # the best so far, whatever params.keep keeps
    keep_last = params.keep == "last" or val_idx is None
    timer = _Timer(device)
    for epoch in range(1, params.epochs + 1):
        timer.start()
        train_mode(model, params, epoch)
        loss_sum = torch.zeros((), device=device)
        for step, (x, y) in enumerate(train_loader):
            follow_free_cores()  # fewer CPU threads while other processes take cores
            x, y = preprocess(x), y.to(device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            # Near-equal chunks rather than micro_batch-sized ones and a remainder: a chunk of one
            # would break BatchNorm on a 1x1 feature map, which is why drop_last is on.
            chunks = 1 if micro_batch is None else math.ceil(len(y) / micro_batch)
            batch_weight = len(y) if weights is None else weights[y].sum()
            for xc, yc in zip(x.tensor_split(chunks), y.tensor_split(chunks), strict=True):
                with autocast():
                    loss = loss_fn(model(xc), yc) / batch_weight
                # This check is a CPU–GPU sync point; it is what stops a diverged run within a step.
                if not torch.isfinite(loss):
                    raise NonFiniteLossError(
                        f"loss became {loss.item()} at epoch {epoch}, step {step + 1} "
                        f"(lr={schedule.lr:.3g}, {params.optimizer})"
                    )
                scaler.scale(loss).backward()
                loss_sum += loss.detach()
            if params.grad_clip > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), params.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            schedule.step()
        train_loss = loss_sum.item() / max(1, len(train_loader))

        score, probs, val_loss = None, None, None
        improved = val_idx is None
        if val_idx is not None:
            probs = predict_views(
                model,
                images,
                indices=val_idx,
                preprocess=preprocess,
                batch_size=val_batch,
                amp=params.amp,
            )[0]
            score = metric(labels[val_idx], probs)
            # NaN probabilities keep their (poor) score; scikit-learn's log loss refuses them.
            val_loss = LOG_LOSS(labels[val_idx], probs) if np.isfinite(probs).all() else math.nan
            improved = best_score is None or metric.better(score, best_score)
        if improved:
            best_score, best_epoch = score, epoch
        if improved or keep_last:
            result.kept_epoch, result.kept_score, result.val_probs = epoch, score, probs
            if keep_weights and not keep_last:
                result.state_dict = _cpu_copy(model)
        schedule.epoch_end(improved=improved)
        result.epochs_run = epoch

        report = EpochReport(
            epoch, params.epochs, train_loss, score, best_score, schedule.lr, timer.stop(), val_loss
        )
        result.history.append(report)
        if on_epoch is not None:
            on_epoch(report)
        if params.patience and val_idx is not None and epoch - best_epoch >= params.patience:
            break
    if keep_weights and keep_last:  # once, not every epoch
        result.state_dict = _cpu_copy(model)
    return result


def _cpu_copy(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` says memory ran out, where a smaller micro-batch may fit.

    Besides ``torch.OutOfMemoryError``, PyTorch reports some exhaustion as a plain
    ``RuntimeError``: a CUDA call that fails to allocate ("CUDA error: out of memory"), cuBLAS
    failing to allocate its workspace, the CPU allocator. cuDNN answers some batches too large
    for it with ``CUDNN_STATUS_NOT_SUPPORTED``. toma and Accelerate's
    ``find_executable_batch_size`` match the same messages."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    if not isinstance(exc, RuntimeError):
        return False
    text = str(exc)
    return ("CUDA" in text and "out of memory" in text) or any(
        mark in text
        for mark in (
            "CUBLAS_STATUS_ALLOC_FAILED",
            "CUDNN_STATUS_NOT_SUPPORTED",
            "DefaultCPUAllocator: can't allocate memory",
        )
    )


def release_memory(device: torch.device) -> None:
    """Give back what a finished (or out-of-memory) trial left behind: unreachable Python
    objects that still hold tensors, then the CUDA allocator's cached blocks, so the next trial
    starts from an empty device."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def class_balance(
    train_labels: np.ndarray, *, num_classes: int, mode: str, generator: torch.Generator
) -> tuple[torch.utils.data.Sampler | None, torch.Tensor | None]:
    """(sampler, loss weights) for ``mode``: "none", "weights" (each class weighs
    n / (classes × n_class) in the loss, so all classes count alike in sum), or "sampler"
    (training images drawn with replacement, every class equally likely)."""
    counts = np.maximum(np.bincount(train_labels, minlength=num_classes), 1)
    if mode == "weights":
        return None, torch.tensor(len(train_labels) / (num_classes * counts), dtype=torch.float32)
    if mode == "sampler":
        weights = torch.as_tensor(1.0 / counts[train_labels], dtype=torch.double)
        sampler = torch.utils.data.WeightedRandomSampler(
            weights, num_samples=len(train_labels), replacement=True, generator=generator
        )
        return sampler, None
    if mode != "none":
        raise ValueError(f"balance must be one of none, weights, sampler; got {mode!r}")
    return None, None


def train_mode(model: torch.nn.Module, params: TrainParams, epoch: int) -> None:
    """``model.train()``, less what fine-tuning keeps fixed: the body during the first
    ``freeze_epochs`` (only the head learns, as fastai's ``fine_tune`` starts), and with
    ``freeze_bn`` BatchNorm's running statistics, which batches of 16–32 photos would
    replace with noisier ones than the pretrained body was trained with."""
    model.train()
    if params.freeze_epochs > 0:
        head = head_parameters(model)
        for p in model.parameters():
            if id(p) not in head:
                p.requires_grad_(epoch > params.freeze_epochs)
    if params.freeze_bn:
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.eval()


def default_loader_workers(device_type: str, cores: int) -> int:
    """DataLoader processes for a process that trains on ``device_type`` with ``cores``."""
    if device_type != "cuda":
        return 0  # on a CPU the training itself needs every core; workers would compete
    return max(1, min(8, cores - 1))


def _loader_workers(requested: int | None, device: torch.device) -> int:
    if requested is not None:
        return requested
    return default_loader_workers(device.type, os.cpu_count() or 2)


def _reseed_worker(worker_id: int) -> None:
    # One core per loader process: torch sets its own threads to 1 there, OpenCV's we do.
    cv2.setNumThreads(1)
    # Albumentations keeps its own RNG; give each worker (and each epoch) a distinct stream.
    info = torch.utils.data.get_worker_info()
    info.dataset.transform.set_random_seed(torch.initial_seed() % 2**32)


class _Timer:
    def __init__(self, device: torch.device):
        self.device = device
        self.t0 = 0.0

    def start(self) -> None:
        self.t0 = time.perf_counter()

    def stop(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter() - self.t0
