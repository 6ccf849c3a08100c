"""GPU check: autoclf's CUDA paths turned into figures in minutes, with nothing to set up.

One command, no network (every model is built with ``pretrained: false``), six sections, each
printed as it finishes and written to ``--out`` as ``gpu_check.md`` and ``gpu_check.json``
(rewritten after every section, so a run cut short still leaves what it measured):

1. throughput: training img/s of resnet50 and tf_efficientnet_lite0 at 224 px through autoclf's
   trainer (``trainer.fit``, fed from the uint8 cache) against a bare PyTorch loop with the same
   model, batch, AMP, channels_last and fused AdamW on a batch already on the GPU. Goal: trainer
   / bare ≤ 1.05.
2. data: how busy the GPU is over an epoch fed from the decoded cache, and decoding every JPEG
   every epoch (the same trainer, augmentation 0.5, the default loader workers): the bare
   loop's time for the epoch's steps / the epoch's time. Goal: cached ≥ 0.9.
3. amp: the same short run in fp32, with AMP (bf16 where supported) and, where bf16 is, once
   more with bf16 reported unsupported so that the fp16 + GradScaler path runs: final losses
   and speed-up. Probes inside the trainer record the autocast dtype, channels_last and
   whether the loader's batches arrive in pinned memory.
4. oom: a trial whose batch is sized from the GPU's memory to overflow it (a real CUDA
   out-of-memory error) must be retried by autoclf at half the micro-batch with gradient
   accumulation, and complete; then N short trials through the worker loop, GPU memory after
   each (allocated after the trial, peak reserved during it).
5. workers: ``--gpus 0 --workers 2`` against ``--workers 1`` (autoclf's worker pool) on short
   trials: trials per hour, and what each worker process saw (CUDA_VISIBLE_DEVICES, GPUs).
6. default_space: ``autoclf search`` of the ``default`` space on hymenoptera for about a minute
   (pretrained off where the weights are not on the machine): trials per hour, seconds per
   epoch, and what 100 trials cost.

``--dry-run`` does every step at toy size on any machine (timm's test_* models, 32 px, a few
dozen images, a few trials): what truly needs CUDA is replaced and says so (the out-of-memory
error is raised by a forward hook; memory is the process's RSS; there is no fp16 run).

    python benchmarks/gpu_check.py --out DIR            # a GPU: about 5 minutes on one H100
    python benchmarks/gpu_check.py --dry-run --out DIR  # anywhere: about a minute on 2 cores

Photos: ``--photos DIR`` (class folders), else hymenoptera/train where it is found (shared/,
../shared/, .gpu_data/ from gpu_prepare.sh), else synthetic ~500×375 JPEGs; repeated (as
symbolic links) to the sizes below.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import json
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:  # autoclf from this checkout, installed or not
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import optuna  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from autoclf import pretrained, trainer  # noqa: E402
from autoclf.augment import train_transform  # noqa: E402
from autoclf.config import SearchConfig, TrainParams  # noqa: E402
from autoclf.data.cache import build_cache, resize_square  # noqa: E402
from autoclf.data.images import load_rgb  # noqa: E402
from autoclf.data.index import build_index  # noqa: E402
from autoclf.metrics import get_metric  # noqa: E402
from autoclf.models import MEMORY_FORMAT, create_model  # noqa: E402
from autoclf.search import record  # noqa: E402
from autoclf.search.events import TrialFinished, TrialStarted  # noqa: E402
from autoclf.search.pool import Pool, plan_slots  # noqa: E402
from autoclf.search.runner import prepare, run  # noqa: E402
from autoclf.search.storage import default_storage_url  # noqa: E402

PHOTO_PLACES = (
    ROOT / "shared/datasets/hymenoptera/train",
    ROOT.parent / "shared/datasets/hymenoptera/train",
    ROOT / ".gpu_data/hymenoptera/train",
)
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
MIB = 2**20


@dataclass(frozen=True)
class Plan:
    """Sizes of one run: a GPU's, or the dry run's toy ones."""

    images: int  # photos repeated to this many for sections 1-3
    size: int  # px
    batch: int
    models: tuple[str, ...]
    epochs: int  # per timed fit: the first warms up, the best of the others counts
    bare_reps: int
    amp_model: str
    amp_images: int
    amp_batch: int
    amp_epochs: int
    oom_model: str
    small_images: int  # the data of the short trials of sections 4 and 5
    trial_model: str
    trial_batch: int
    memory_trials: int
    worker_trials: int
    search_timeout: float | None  # section 6; None: --trials alone stops it
    search_trials: int
    search_folds: int | None  # None: autoclf's default (5)
    budget_s: float  # the whole run; a section that would not fit in what is left is skipped
    caps: dict[str, float]  # each section's hard limit, seconds


GPU_PLAN = Plan(
    images=4096,
    size=224,
    batch=128,
    models=("resnet50", "tf_efficientnet_lite0"),
    epochs=3,
    bare_reps=2,
    amp_model="resnet50",
    amp_images=1024,
    amp_batch=64,
    amp_epochs=3,
    oom_model="resnet50",
    small_images=128,
    trial_model="resnet50",
    trial_batch=32,
    memory_trials=20,
    worker_trials=10,
    search_timeout=60,
    search_trials=100,
    search_folds=None,
    budget_s=420,  # 7 min at most; about 5.5 expected on one H100
    caps={"throughput": 90, "data": 100, "amp": 60, "oom": 150, "workers": 150},
)
DRY_PLAN = Plan(
    images=48,
    size=32,
    batch=16,
    models=("test_resnet", "test_efficientnet"),
    epochs=3,
    bare_reps=2,
    amp_model="test_resnet",
    amp_images=48,
    amp_batch=16,
    amp_epochs=2,
    oom_model="test_resnet",
    small_images=24,
    trial_model="test_resnet",
    trial_batch=8,
    memory_trials=4,
    worker_trials=3,
    search_timeout=None,
    search_trials=2,
    search_folds=2,
    budget_s=600,
    caps={"throughput": 60, "data": 60, "amp": 60, "oom": 90, "workers": 120},
)
SEARCH_CAP_EXTRA_S = 90  # section 6: a trial that started just before --timeout
STOP_GRACE_S = 45  # section 6: then SIGINT, and this long for the search to stop

# Section key → its title in the report (the test looks for these names).
TITLES = {
    "throughput": "1. Throughput: autoclf's trainer against a bare loop",
    "data": "2. Data never the bottleneck: decoded cache against decoding every epoch",
    "amp": "3. AMP against fp32",
    "oom": "4. CUDA out of memory, and memory from trial to trial",
    "workers": "5. Workers: two on one GPU against one",
    "default_space": "6. The default space on hymenoptera: trials per hour",
}


# --- the run's context -------------------------------------------------------------------------


@dataclass
class Context:
    plan: Plan
    dry_run: bool
    device: torch.device
    work: Path
    photos: Path  # class folders: the real or synthetic photos
    photos_note: str
    paths: tuple[str, ...] = ()  # the repeated photos of sections 1-3
    labels: np.ndarray | None = None
    cache: np.ndarray | None = None
    num_classes: int = 2
    log: Callable[[str], None] = print
    bare_step_s: dict | None = None  # (model, batch) → seconds per bare step

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def gpus(self) -> str:
        return "0" if self.cuda else "cpu"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def amp_dtype(device: torch.device, amp: bool) -> torch.dtype | None:
    """The autocast dtype autoclf's rule gives (bf16 where native, else fp16); None on CPU."""
    from autoclf.inference import amp_dtype as autoclf_amp_dtype

    if device.type != "cuda" or not amp:
        return None
    return autoclf_amp_dtype()


def params_for(ctx: Context, backbone: str, **changes) -> TrainParams:
    values = dict(
        backbone=backbone,
        pretrained=False,
        image_size=ctx.plan.size,
        batch_size=ctx.plan.batch,
        epochs=ctx.plan.epochs,
        optimizer="adamw",
        lr=1e-3,
        weight_decay=1e-4,
        aug_strength=0.0,
        amp=True,
    )
    values.update(changes)
    return TrainParams(**values)


# --- photos ------------------------------------------------------------------------------------


def find_photos(given: str | None) -> Path | None:
    if given:
        return Path(given)
    return next((p for p in PHOTO_PLACES if p.is_dir()), None)


def synthetic_photos(dest: Path, per_class: int = 60) -> Path:
    """Two classes of ~500×375 JPEGs (smooth colour fields, one class warmer): what a photo
    costs to decode, and something a model can learn."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for c, name in enumerate(("warm", "cool")):
        (dest / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            w, h = int(rng.integers(440, 560)), int(rng.integers(330, 420))
            low = rng.integers(0, 256, (6, 8, 3)).astype(np.float32)
            low[..., 0 if c == 0 else 2] = 0.5 * low[..., 0 if c == 0 else 2] + 127
            img = Image.fromarray(low.astype(np.uint8)).resize((w, h), Image.BICUBIC)
            noisy = np.asarray(img, np.float32) + rng.normal(0, 12, (h, w, 3))
            Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(
                dest / name / f"{i:03d}.jpg", quality=90
            )
    return dest


def repeat_photos(source: Path, n: int, dest: Path) -> Path:
    """``dest``/<class>/ with ``n`` symbolic links to ``source``'s JPEGs, classes in turn."""
    classes = sorted(d for d in source.iterdir() if d.is_dir() and not d.name.startswith("."))
    files = [
        sorted(f for f in d.iterdir() if f.suffix.lower() in (".jpg", ".jpeg")) for d in classes
    ]
    if not classes or not all(files):
        raise RuntimeError(f"{source}: expected class folders holding JPEGs")
    for d in classes:
        (dest / d.name).mkdir(parents=True, exist_ok=True)
    for k in range(n):
        c = k % len(classes)
        f = files[c][(k // len(classes)) % len(files[c])]
        (dest / classes[c].name / f"{k:05d}_{f.name}").symlink_to(f.resolve())
    return dest


class DecodedEveryTime:
    """Stands in for the cache in ``trainer.fit``: row ``j`` is decoded from its file and
    resized (as the cache decodes it) at every access, in the loader's worker processes."""

    def __init__(self, paths: tuple[str, ...], size: int):
        self.paths, self.size = paths, size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, j) -> np.ndarray:
        return resize_square(load_rgb(self.paths[j], min_side=self.size), self.size)


# --- timing helpers ----------------------------------------------------------------------------


def fit_epochs(
    ctx: Context,
    params: TrainParams,
    *,
    images=None,
    rows: np.ndarray | None = None,
    loader_workers: int | None = None,
) -> dict:
    """One ``trainer.fit`` (no validation): each epoch's seconds and loss, the best epoch after
    the first (which starts the loader workers and picks cuDNN's algorithms)."""
    images = ctx.cache if images is None else images
    rows = np.arange(len(ctx.paths)) if rows is None else rows
    reports: list = []
    trainer.fit(
        params,
        images=images,
        labels=ctx.labels,
        train_idx=rows,
        val_idx=None,
        num_classes=ctx.num_classes,
        metric=get_metric("accuracy"),
        seed=0,
        device=ctx.device,
        loader_workers=loader_workers,
        on_epoch=reports.append,
    )
    trainer.release_memory(ctx.device)
    seconds = [r.seconds for r in reports]
    n = len(rows) // params.batch_size * params.batch_size if len(rows) > params.batch_size else 0
    return {
        "images": n or len(rows),
        "epoch_s": min(seconds[1:] or seconds),
        "epochs_s": [round(s, 4) for s in seconds],
        "losses": [round(r.train_loss, 5) for r in reports],
    }


def bare_step_seconds(
    ctx: Context, params: TrainParams, *, steps: int, remember: bool = True
) -> float:
    """A bare PyTorch training step on one batch already on the device: the same model,
    channels_last, fused AdamW, autocast dtype (and GradScaler for fp16); best of reps."""
    key = (params.backbone, params.batch_size, params.image_size)
    ctx.bare_step_s = ctx.bare_step_s or {}
    if not (remember and key in ctx.bare_step_s):
        seconds = _bare_loop(ctx, params, steps=steps) / steps
        trainer.release_memory(ctx.device)  # the loop's model and batch are gone by now
        if not remember:
            return seconds
        ctx.bare_step_s[key] = seconds
    return ctx.bare_step_s[key]


def _bare_loop(ctx: Context, params: TrainParams, *, steps: int) -> float:
    device = ctx.device
    torch.manual_seed(0)
    model = create_model(params, num_classes=ctx.num_classes)
    model = model.to(device, memory_format=MEMORY_FORMAT).train()
    opt = torch.optim.AdamW(
        model.parameters(), lr=params.lr, weight_decay=params.weight_decay, fused=True
    )
    size, batch = params.image_size, params.batch_size
    x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=MEMORY_FORMAT)
    y = torch.randint(0, ctx.num_classes, (batch,), device=device)
    dtype = amp_dtype(device, params.amp)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = loss_fn(model(x), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    for _ in range(3):
        step()
    sync(device)
    best = math.inf
    for _ in range(ctx.plan.bare_reps):
        start = time.perf_counter()
        for _ in range(steps):
            step()
        sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def loader_images_per_s(ctx: Context, images, *, aug: float) -> float:
    """The trainer's own DataLoader (dataset, transform, workers, pinning) with no model:
    the images per second it can supply, in an epoch after a first."""
    workers = trainer._loader_workers(None, ctx.device)
    dataset = trainer.CachedImages(
        images,
        ctx.labels,
        np.arange(len(ctx.paths)),
        train_transform(strength=aug, size=ctx.plan.size, hflip=True, seed=0),
    )
    loader = DataLoader(
        dataset,
        batch_size=ctx.plan.batch,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        pin_memory=ctx.cuda,
        worker_init_fn=trainer._reseed_worker,
        persistent_workers=workers > 0,
    )
    times, n = [], 0
    for _ in range(2):
        start, n = time.perf_counter(), 0
        for x, _ in loader:
            n += len(x)
        times.append(time.perf_counter() - start)
    del loader
    return n / times[-1]


@contextlib.contextmanager
def probing(found: dict, *, oom_above: int | None = None):
    """Look inside ``trainer.fit``: the first training batch as it leaves the loader (pinned?)
    and as it enters the model (channels_last? dtype), the weights' layout, the logits' dtype
    (autocast). ``oom_above``: raise ``torch.OutOfMemoryError`` in a training forward pass of
    more rows than that (the dry run's stand-in for a real CUDA out-of-memory error)."""
    real_create, real_preprocess = trainer.create_model, trainer.Preprocess

    def create(params, *, num_classes):
        model = real_create(params, num_classes=num_classes)

        def before(module, args):
            if not module.training:
                return
            x = args[0]
            found.setdefault("input_channels_last", x.is_contiguous(memory_format=MEMORY_FORMAT))
            found.setdefault("input_dtype", str(x.dtype))
            weight = next(p for p in module.parameters() if p.dim() == 4)
            found.setdefault(
                "weights_channels_last", weight.is_contiguous(memory_format=MEMORY_FORMAT)
            )
            found.setdefault("device", str(x.device))
            if oom_above is not None and len(x) > oom_above:
                found["simulated_oom"] = found.get("simulated_oom", 0) + 1
                raise torch.OutOfMemoryError(
                    f"simulated out of memory (dry run): a forward pass of {len(x)} images, "
                    f"more than {oom_above}"
                )

        def after(module, args, out):
            if module.training:
                found.setdefault("logits_dtype", str(out.dtype))

        model.register_forward_pre_hook(before)
        model.register_forward_hook(after)
        return model

    class Preprocess(real_preprocess):
        def __call__(self, x):
            found.setdefault("batch_pinned", torch.cuda.is_available() and x.is_pinned())
            found.setdefault("batch_dtype", str(x.dtype))
            return super().__call__(x)

    trainer.create_model, trainer.Preprocess = create, Preprocess
    try:
        yield found
    finally:
        trainer.create_model, trainer.Preprocess = real_create, real_preprocess


@contextlib.contextmanager
def bf16_reported_unsupported():
    """torch.cuda.is_bf16_supported() answers False, so autoclf takes its fp16 + GradScaler
    path (older GPUs') on this one."""
    real = torch.cuda.is_bf16_supported
    torch.cuda.is_bf16_supported = lambda *a, **k: False
    try:
        yield
    finally:
        torch.cuda.is_bf16_supported = real


def memory_now(device: torch.device) -> dict:
    if device.type == "cuda":
        return {
            "allocated_mib": round(torch.cuda.memory_allocated(device) / MIB, 1),
            "reserved_mib": round(torch.cuda.memory_reserved(device) / MIB, 1),
            "peak_allocated_mib": round(torch.cuda.max_memory_allocated(device) / MIB, 1),
            "peak_reserved_mib": round(torch.cuda.max_memory_reserved(device) / MIB, 1),
        }
    with open("/proc/self/status") as f:
        rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return {"rss_mib": round(rss / 1024, 1)}


def write_space(path: Path, params: dict, *, sampler: str = "random") -> Path:
    """A search space file: fixed values, and the lr sampled so trials differ a little."""
    space = {
        "description": "gpu_check.py",
        "params": {"lr": {"type": "float", "low": 3e-4, "high": 3e-3, "log": True}, **params},
        "sampler": {"name": sampler},
        "pruner": {"name": "none"},
    }
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return path


def short_trial_params(ctx: Context) -> dict:
    return {
        "backbone": ctx.plan.trial_model,
        "pretrained": False,
        "image_size": ctx.plan.size,
        "batch_size": ctx.plan.trial_batch,
        "epochs": 1,
        "aug_strength": 0.3,
        "optimizer": "adamw",
        "amp": True,
    }


def small_data(ctx: Context) -> Path:
    dest = ctx.work / "small-photos"
    if not dest.exists():
        repeat_photos(ctx.photos, ctx.plan.small_images, dest)
    return dest


def search_config(ctx: Context, study: str, data: Path, space: Path, **changes) -> SearchConfig:
    values = dict(
        data=str(data),
        study=study,
        space=str(space),
        folds=2,
        trials=1,
        studies_dir=str(ctx.work / "studies"),
        device=str(ctx.device),
        gpus=ctx.gpus,
        duplicates="ignore",
    )
    values.update(changes)
    return SearchConfig(**values)


# --- 1. throughput -----------------------------------------------------------------------------


def section_throughput(ctx: Context) -> dict:
    rows = {}
    for backbone in ctx.plan.models:
        params = params_for(ctx, backbone)
        fitted = fit_epochs(ctx, params)
        steps = fitted["images"] // params.batch_size
        bare_s = bare_step_seconds(ctx, params, steps=steps) * steps
        rows[backbone] = {
            "trainer_img_s": round(fitted["images"] / fitted["epoch_s"], 1),
            "bare_img_s": round(fitted["images"] / bare_s, 1),
            "ratio": round(fitted["epoch_s"] / bare_s, 3),
            "trainer_epoch_s": round(fitted["epoch_s"], 4),
            "bare_epoch_s": round(bare_s, 4),
            "trainer_epochs_s": fitted["epochs_s"],
        }
        ctx.log(f"  {backbone}: {rows[backbone]}")
    return {
        "size": ctx.plan.size,
        "batch": ctx.plan.batch,
        "images": len(ctx.paths),
        "amp": str(amp_dtype(ctx.device, True) or "none (fp32: autoclf uses no AMP on a CPU)"),
        "loader_workers": trainer._loader_workers(None, ctx.device),
        "models": rows,
        "goal": "trainer / bare <= 1.05",
        "goal_met": all(r["ratio"] <= 1.05 for r in rows.values()),
    }


# --- 2. data -----------------------------------------------------------------------------------


def section_data(ctx: Context) -> dict:
    aug = 0.5
    decoded = DecodedEveryTime(ctx.paths, ctx.plan.size)
    loader = {
        "cached": round(loader_images_per_s(ctx, ctx.cache, aug=aug), 1),
        "decoded": round(loader_images_per_s(ctx, decoded, aug=aug), 1),
    }
    ctx.log(f"  loader alone, img/s: {loader}")
    rows = {}
    for backbone in ctx.plan.models:
        params = params_for(ctx, backbone, aug_strength=aug)
        cached = fit_epochs(ctx, params)
        from_files = fit_epochs(ctx, params, images=decoded)
        steps = cached["images"] // params.batch_size
        compute_s = bare_step_seconds(ctx, params, steps=steps) * steps
        rows[backbone] = {
            "compute_s": round(compute_s, 4),
            "cached_epoch_s": round(cached["epoch_s"], 4),
            "decoded_epoch_s": round(from_files["epoch_s"], 4),
            "cached_busy": round(compute_s / cached["epoch_s"], 3),
            "decoded_busy": round(compute_s / from_files["epoch_s"], 3),
            "model_img_s": round(cached["images"] / compute_s, 1),
        }
        ctx.log(f"  {backbone}: {rows[backbone]}")
    return {
        "size": ctx.plan.size,
        "batch": ctx.plan.batch,
        "images": len(ctx.paths),
        "aug_strength": aug,
        "loader_workers": trainer._loader_workers(None, ctx.device),
        "loader_img_s": loader,
        "models": rows,
        "goal": "cached epoch busy >= 0.9",
        "goal_met": all(r["cached_busy"] >= 0.9 for r in rows.values()),
    }


# --- 3. amp ------------------------------------------------------------------------------------


def section_amp(ctx: Context) -> dict:
    plan = ctx.plan
    rows = np.arange(min(plan.amp_images, len(ctx.paths)))
    base = params_for(
        ctx, plan.amp_model, batch_size=plan.amp_batch, epochs=plan.amp_epochs, lr=5e-4
    )
    variants = {"fp32": (False, False), "amp": (True, False)}
    if ctx.cuda and torch.cuda.is_bf16_supported(including_emulation=False):
        variants["fp16_scaler"] = (True, True)
    runs = {}
    for name, (amp, force_fp16) in variants.items():
        found: dict = {}
        forced = bf16_reported_unsupported() if force_fp16 else contextlib.nullcontext()
        with forced, probing(found):
            fitted = fit_epochs(ctx, replace(base, amp=amp), rows=rows)
        runs[name] = {
            "epoch_s": round(fitted["epoch_s"], 4),
            "losses": fitted["losses"],
            "final_loss": fitted["losses"][-1],
            "probe": found,
        }
        ctx.log(f"  {name}: {runs[name]}")
    fp32 = runs["fp32"]
    for r in runs.values():
        r["loss_rel_diff"] = round(
            abs(r["final_loss"] - fp32["final_loss"]) / fp32["final_loss"], 4
        )
        r["speedup"] = round(fp32["epoch_s"] / r["epoch_s"], 3)
    others = [r for n, r in runs.items() if n != "fp32"]
    return {
        "model": plan.amp_model,
        "size": plan.size,
        "batch": plan.amp_batch,
        "images": len(rows),
        "epochs": plan.amp_epochs,
        "amp_dtype": str(amp_dtype(ctx.device, True) or "none: autoclf trains in fp32 on a CPU"),
        "runs": runs,
        "goal": "final training loss within 5% of fp32's",
        "goal_met": all(r["loss_rel_diff"] <= 0.05 for r in others),
    }


# --- 4. out of memory, memory from trial to trial ----------------------------------------------


def bytes_per_image(ctx: Context, params: TrainParams) -> float:
    """Peak GPU memory a training step takes per image: two batch sizes, the difference.
    cuDNN's algorithm search is off meanwhile: its trial workspaces would blur the peaks."""
    peaks = []
    torch.backends.cudnn.benchmark = False
    try:
        for batch in (32, 96):
            torch.cuda.reset_peak_memory_stats(ctx.device)
            bare_step_seconds(ctx, replace(params, batch_size=batch), steps=1, remember=False)
            peaks.append(torch.cuda.max_memory_allocated(ctx.device))
    finally:
        torch.backends.cudnn.benchmark = True
    return (peaks[1] - peaks[0]) / 64


def section_oom(ctx: Context) -> dict:
    plan, out = ctx.plan, {}
    if ctx.cuda:
        total = torch.cuda.get_device_properties(ctx.device).total_memory
        per_image = bytes_per_image(ctx, params_for(ctx, plan.oom_model))
        if per_image < 4 * MIB:  # resnet50 at 224 px takes tens of MiB an image
            raise RuntimeError(f"calibration failed: {per_image / MIB:.2f} MiB an image")
        # The batch needs about 1.4× the GPU's memory; half of it, 0.7×, fits.
        batch = 2 * math.ceil(0.7 * total / per_image)
        data = repeat_photos(ctx.photos, 2 * batch + 64, ctx.work / "oom-photos")
        out.update(
            mode="real CUDA out-of-memory error",
            gpu_memory_gib=round(total / 2**30, 1),
            mib_per_image=round(per_image / MIB, 2),
        )
        injected = contextlib.nullcontext()
    else:
        batch = plan.batch
        data = repeat_photos(ctx.photos, 3 * batch, ctx.work / "oom-photos")
        out["mode"] = (
            "simulated (dry run, no CUDA): a forward hook raises torch.OutOfMemoryError above "
            "half the batch; the retry is autoclf's own (search/objective.py)"
        )
        injected = probing({}, oom_above=batch // 2)
    space = write_space(
        ctx.work / "oom.yaml",
        {
            "backbone": plan.oom_model,
            "pretrained": False,
            "image_size": plan.size,
            "batch_size": batch,
            "epochs": 1,
            "amp": True,
        },
    )
    config = search_config(ctx, "oom", data, space, loader_workers=2 if ctx.cuda else 0)
    ctx.log(f"  a trial of batch {batch} on {len(build_index(data, datasets_dir=ctx.work))} images")
    started = time.perf_counter()
    with injected:
        study = run(prepare(config))
    trial = study.trials[-1]
    log_text = (Path(config.studies_dir) / "oom" / trial.user_attrs[record.LOG_PATH]).read_text()
    ctx.log("  the trial's log:\n" + "\n".join("    " + s for s in log_text.splitlines()[:12]))
    retry_lines = [s for s in log_text.splitlines() if "again with micro-batch" in s]
    micro = trial.user_attrs.get(record.MICRO_BATCH)
    out.update(
        batch=batch,
        images=2 * batch + 64 if ctx.cuda else 3 * batch,
        state=trial.state.name,
        micro_batch=micro,
        retried=bool(retry_lines) and micro == batch // 2,
        oom_message=retry_lines[0].split(": ", 1)[-1] if retry_lines else None,
        reason=trial.user_attrs.get(record.PRUNED_REASON)
        or trial.user_attrs.get(record.FAIL_REASON),
        trial_s=round(time.perf_counter() - started, 2),
    )
    out["memory"] = memory_trials(ctx)
    out["goal"] = (
        "the oversized trial is retried at half the micro-batch and completes; memory after the "
        "last short trial within 5% of the first's"
    )
    out["goal_met"] = bool(
        out["retried"] and out["state"] == "COMPLETE" and out["memory"]["flat"] is not False
    )
    return out


def memory_trials(ctx: Context) -> dict:
    """Short trials through the worker loop (``search.worker.work``, as ``autoclf.search.run``
    drives it): memory after each, once the loop has released it."""
    space = write_space(ctx.work / "memory.yaml", short_trial_params(ctx))
    config = search_config(
        ctx,
        "memory",
        small_data(ctx),
        space,
        trials=ctx.plan.memory_trials,
        loader_workers=2 if ctx.cuda else 0,
    )
    after: list[dict] = []  # one per trial, after the worker loop released its memory

    def on_event(event) -> None:
        if isinstance(event, TrialStarted) and ctx.cuda:
            torch.cuda.reset_peak_memory_stats(ctx.device)
        elif isinstance(event, TrialFinished):
            after.append(memory_now(ctx.device))

    study = run(prepare(config), on_event=on_event)
    states = [t.state.name for t in study.trials]
    first, last = after[0], after[-1]
    result = {"trials": len(after), "states": states, "first": first, "last": last}
    result["series"] = {k: [m[k] for m in after] for k in first}
    if ctx.cuda:
        peak_ratio = last["peak_reserved_mib"] / max(first["peak_reserved_mib"], 1e-9)
        grown = last["allocated_mib"] - first["allocated_mib"]
        result.update(
            peak_reserved_ratio=round(peak_ratio, 4),
            allocated_growth_mib=round(grown, 1),
            flat=peak_ratio <= 1.05 and grown <= 0.05 * max(first["peak_allocated_mib"], 1.0),
            what="GPU memory: allocated after the trial (released), peak reserved during it",
        )
    else:
        grown = last["rss_mib"] - first["rss_mib"]
        result.update(
            rss_growth_mib=round(grown, 1),
            flat=None,
            what="process RSS after each trial (no CUDA: informative only, no goal)",
        )
    return result


# --- 5. workers --------------------------------------------------------------------------------


def visible_trial(objective):
    """Worker processes: the real trial, after noting what this process can see."""

    def trial(t: optuna.Trial) -> float:
        cuda = torch.cuda.is_available()
        t.set_user_attr(
            "gpu_check_seen",
            {
                "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES"),
                "device_count": torch.cuda.device_count() if cuda else 0,
                "device_name": torch.cuda.get_device_name(0) if cuda else None,
                "pid": os.getpid(),
            },
        )
        return objective(t)

    return trial


def section_workers(ctx: Context) -> dict:
    space = write_space(ctx.work / "workers.yaml", short_trial_params(ctx))
    runs, seen = {}, []
    for workers in (1, 2):
        slots = plan_slots(ctx.gpus, workers)
        expected = {s.name: s.visible_gpu or "" for s in slots}
        config = search_config(
            ctx,
            f"workers-{workers}",
            small_data(ctx),
            space,
            trials=ctx.plan.worker_trials,
            workers=workers,
            keep_weights=0,
        )
        starts: list[float] = []
        finishes: list[float] = []

        def on_event(event, starts=starts, finishes=finishes) -> None:
            if isinstance(event, TrialStarted):
                starts.append(time.perf_counter())
            elif isinstance(event, TrialFinished):
                finishes.append(time.perf_counter())

        study_dir = Path(config.studies_dir) / config.study
        begin = time.perf_counter()
        # As `autoclf search` does it: the workers start (and import torch) while the study
        # is prepared.
        with Pool(
            slots,
            log_dir=study_dir / "logs",
            on_event=on_event,
            objective="gpu_check:visible_trial",
        ) as pool:
            prepared = prepare(config)
            result = pool.run(prepared)
        total = time.perf_counter() - begin
        trials = prepared.study.get_trials(deepcopy=False)
        finished = [t for t in trials if t.state in FINISHED]
        phase = (max(finishes) - min(starts)) if finishes and starts else math.nan
        for t in trials:
            worker = t.user_attrs.get(record.WORKER, "?").split(" ")[0]
            s = dict(t.user_attrs.get("gpu_check_seen", {}), workers=workers, worker=worker)
            s["expected_visible"] = expected.get(worker)
            seen.append(s)
        memory_lines = []
        for log in sorted((study_dir / "logs").glob("*.log")):
            memory_lines += [s for s in log.read_text().splitlines() if "still allocated" in s]
        runs[str(workers)] = {
            "slots": [s.name for s in slots],
            "finished": len(finished),
            "states": [t.state.name for t in trials],
            "phase_s": round(phase, 2),
            "total_s": round(total, 2),
            "trials_per_hour": round(len(finished) / phase * 3600, 1) if phase > 0 else 0.0,
            "trials_per_hour_whole_command": round(len(finished) / total * 3600, 1),
            "trial_s_mean": round(
                float(np.mean([t.user_attrs.get(record.DURATION_S, 0) for t in finished] or [0])),
                2,
            ),
            "gave_up": result.gave_up,
            "worker_memory_log": memory_lines[-2:],
        }
        ctx.log(f"  {workers} worker(s): {runs[str(workers)]}")
    count = 1 if ctx.cuda else 0
    own = bool(seen) and all(
        s.get("CUDA_VISIBLE_DEVICES") == s["expected_visible"] and s.get("device_count") == count
        for s in seen
    )
    pids = {w: len({s.get("pid") for s in seen if s["workers"] == w}) for w in (1, 2)}
    one, two = runs["1"]["trials_per_hour"], runs["2"]["trials_per_hour"]
    return {
        "model": ctx.plan.trial_model,
        "trial": "2 folds × 1 epoch, "
        + f"{ctx.plan.small_images} images, batch {ctx.plan.trial_batch}",
        "runs": runs,
        "speedup": round(two / one, 3) if one else 0.0,
        "worker_pids": pids,
        "seen": seen,
        "own_gpu_only": own,
        "goal": "each worker sees only its own GPU; 2 workers give more trials per hour",
        "goal_met": own and two > one,
    }


# --- 6. default space --------------------------------------------------------------------------


def default_space_file(ctx: Context) -> tuple[Path, str, dict]:
    source = yaml.safe_load((ROOT / "search_spaces/default.yaml").read_text())
    params = source["params"]
    backbones = params["backbone"]["choices"]
    where = {b: pretrained.locate(b, hub=False).kind for b in backbones}
    if ctx.dry_run:
        params.update(
            backbone={"type": "categorical", "choices": list(ctx.plan.models)},
            pretrained=False,
            image_size=ctx.plan.size,
            epochs=2,
            batch_size={"type": "categorical", "choices": [8, 16]},
        )
        note = (
            "dry run: default.yaml with test_* backbones, 32 px, 2 epochs, batch 8-16, "
            "pretrained false, 2 folds"
        )
    elif all(kind != "missing" for kind in where.values()):
        note = "default.yaml as shipped: every backbone's pretrained weights are on this machine"
    else:
        params["pretrained"] = False
        missing = [b for b, kind in where.items() if kind == "missing"]
        note = (
            f"default.yaml with pretrained: false (no network here; no weights for "
            f"{', '.join(missing)}): the same models and settings trained from scratch, "
            "as fast per epoch as fine-tuning them"
        )
    path = ctx.work / "default-space.yaml"
    path.write_text(yaml.safe_dump(source, sort_keys=False))
    return path, note, where


def section_default_space(ctx: Context, *, timeout: float | None, cap: float) -> dict:
    space, note, where = default_space_file(ctx)
    studies = ctx.work / "studies"
    folds = ctx.plan.search_folds or 5
    options = f"--study default --trials {ctx.plan.search_trials} --gpus {ctx.gpus} -q"
    command = [sys.executable, "-m", "autoclf", "search", str(ctx.photos), *options.split()]
    command += ["--space", str(space), "--studies-dir", str(studies), "--skip-bad-images"]
    if timeout is not None:
        command += ["--timeout", str(int(timeout))]
    if ctx.plan.search_folds:
        command += ["--folds", str(ctx.plan.search_folds)]
    ctx.log("  " + " ".join(command))
    output = ctx.work / "search-output.txt"
    begin, stopped = time.perf_counter(), None
    with open(output, "w") as out:
        proc = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True
        )
        try:
            code = proc.wait(timeout=cap)
        except subprocess.TimeoutExpired:
            stopped = f"still running after {cap:.0f} s: stopped with SIGINT"
            proc.send_signal(signal.SIGINT)  # the pool fails and re-queues running trials
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=STOP_GRACE_S)
            code = proc.returncode
        finally:  # also when this section's own time limit cut the wait short
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)  # the search and its workers
                proc.wait()
    wall = time.perf_counter() - begin
    ctx.log("  " + "\n  ".join(output.read_text().splitlines()[-8:]))
    study = optuna.load_study(
        study_name="default", storage=default_storage_url(studies / "default")
    )
    trials = study.get_trials(deepcopy=False)
    finished = [t for t in trials if t.state in FINISHED]
    epochs = sum(int(t.user_attrs.get(record.EPOCHS_RUN, 0)) for t in trials)
    seconds = sum(
        float(t.user_attrs.get(record.DURATION_S, 0))
        for t in trials
        if t.user_attrs.get(record.EPOCHS_RUN)
    )
    s_per_epoch = seconds / epochs if epochs else math.nan
    if finished:
        first = min(t.datetime_start for t in trials if t.datetime_start)
        last = max(t.datetime_complete for t in finished)
        phase = (last - first).total_seconds()
    else:
        phase = math.nan
    per_hour = len(finished) / phase * 3600 if finished and phase > 0 else 0.0
    max_epochs = int(yaml.safe_load(space.read_text())["params"]["epochs"])
    full_trial_s = s_per_epoch * folds * max_epochs
    return {
        "space": note,
        "pretrained_weights": where,
        "command": " ".join(command[1:]),
        "exit_code": code,
        "stopped": stopped,
        "wall_s": round(wall, 1),
        "timeout_s": timeout,
        "trials": len(trials),
        "finished": len(finished),
        "states": {
            s: sum(t.state.name == s for t in trials)
            for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")
        },
        "backbones": [t.params.get("backbone") for t in trials],
        "epochs_run": epochs,
        "s_per_epoch": round(s_per_epoch, 3),
        "phase_s": round(phase, 1),
        "trials_per_hour": round(per_hour, 1),
        "full_trial_s": round(full_trial_s, 1),
        "hours_per_100_trials_unpruned": round(100 * full_trial_s / 3600, 2),
        "hours_per_100_trials_at_this_rate": round(100 / per_hour, 2) if per_hour else None,
        "folds": folds,
        "epochs_per_trial_max": folds * max_epochs,
        "goal": "figures for the README (no goal)",
        "goal_met": bool(finished),
    }


# --- the report --------------------------------------------------------------------------------


def fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 10 else f"{v:,.1f}"
    return str(v)


def render(results: dict) -> str:
    meta = results["meta"]
    lines = [
        "# autoclf GPU check"
        + (" (DRY RUN at toy size: not GPU figures)" if meta["dry_run"] else ""),
        "",
        f"{meta['device']}; torch {meta['torch']}, timm {meta['timm']}, optuna {meta['optuna']}, "
        f"albumentations {meta['albumentations']}; {meta['cpus']} CPUs; {meta['started']}; "
        f"{meta.get('seconds', 0):.0f} s. Photos: {meta['photos']}.",
        "",
    ]
    for key, title in TITLES.items():
        sec = results["sections"].get(key)
        lines += [f"## {title}", ""]
        if sec is None:
            lines += ["not run yet", ""]
            continue
        status = sec.get("status", "?")
        if status != "ok":
            lines += [f"**{status}**", ""]
            continue
        lines += RENDERERS[key](sec)
        goal = "met" if sec.get("goal_met") else "NOT met"
        lines += ["", f"Goal: {sec.get('goal')}: **{goal}**. ({sec['seconds']:.0f} s)", ""]
    return "\n".join(lines)


def _table(header: str, rows: list[list]) -> list[str]:
    """A markdown table; ``header``: the column names, "|" between them."""
    names = [h.strip() for h in header.split("|")]
    out = ["| " + " | ".join(names) + " |", "|" + "---|" * len(names)]
    return out + ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]


def _pick(row: dict, keys: str) -> list:
    return [row.get(k) for k in keys.split()]


def render_throughput(s: dict) -> list[str]:
    rows = [
        [m, *_pick(r, "trainer_img_s bare_img_s"), f"**{r['ratio']:.3f}**"]
        for m, r in s["models"].items()
    ]
    return [
        f"{s['size']} px, batch {s['batch']}, AMP {s['amp']}, channels_last, fused AdamW; "
        f"{s['images']} images, best epoch of 2 after a first; loader workers "
        f"{s['loader_workers']}.",
        "",
        *_table("model | trainer img/s | bare img/s | trainer / bare", rows),
    ]


def render_data(s: dict) -> list[str]:
    keys = "model_img_s cached_epoch_s decoded_epoch_s"
    rows = [
        [m, *_pick(r, keys), f"**{r['cached_busy']:.3f}**", r["decoded_busy"]]
        for m, r in s["models"].items()
    ]
    lw = s["loader_img_s"]
    return [
        f"{s['images']} images at {s['size']} px, batch {s['batch']}, augmentation "
        f"{s['aug_strength']}, {s['loader_workers']} loader workers. Loader alone: "
        f"{fmt(lw['cached'])} img/s from the cache, {fmt(lw['decoded'])} decoding.",
        "",
        *_table(
            "model | model alone img/s | cached epoch s | decoding epoch s | cached busy "
            "| decoding busy",
            rows,
        ),
    ]


def render_amp(s: dict) -> list[str]:
    keys = "final_loss loss_rel_diff epoch_s speedup"
    probes = "input_channels_last batch_pinned"
    rows = [
        [n, r["probe"].get("logits_dtype"), *_pick(r, keys), *_pick(r["probe"], probes)]
        for n, r in s["runs"].items()
    ]
    fp16 = " fp16_scaler: bf16 reported unsupported, so autoclf's fp16 + GradScaler path runs."
    return [
        f"{s['model']} at {s['size']} px, batch {s['batch']}, {s['images']} images, "
        f"{s['epochs']} epochs, same seed; autoclf's AMP dtype here: {s['amp_dtype']}."
        + (fp16 if "fp16_scaler" in s["runs"] else ""),
        "",
        *_table(
            "run | logits dtype | final loss | vs fp32 | epoch s | speed-up | channels_last "
            "| pinned batch",
            rows,
        ),
    ]


def render_oom(s: dict) -> list[str]:
    m = s["memory"]
    size = ""
    if "mib_per_image" in s:
        size = f", {s['mib_per_image']} MiB an image on a {s['gpu_memory_gib']} GiB GPU"
    reason = f" ({s['reason']})" if s.get("reason") else ""
    error = s.get("oom_message")
    return [
        f"Mode: {s['mode']}. Batch {s['batch']} ({s['images']} images, 2 folds){size}: trial "
        f"{s['state']}, micro-batch {s['micro_batch']}, retried: {s['retried']}{reason}.",
        "",
        f"Error: `{error}`" if error else "No out-of-memory error was seen.",
        "",
        f"{m['trials']} short trials ({m['what']}): after the first {m['first']}, after the last "
        f"{m['last']}; flat: {m['flat']}.",
    ]


def render_workers(s: dict) -> list[str]:
    keys = "finished phase_s trials_per_hour total_s trials_per_hour_whole_command"
    rows = [[w, ", ".join(r["slots"]), *_pick(r, keys)] for w, r in s["runs"].items()]
    seen = {
        (x.get("worker"), x.get("CUDA_VISIBLE_DEVICES"), x.get("device_count")) for x in s["seen"]
    }
    return [
        f"Trials: {s['model']}, {s['trial']}. Speed-up 2 workers / 1: **{s['speedup']:.2f}×**.",
        "",
        *_table(
            "workers | slots | finished | trial phase s | trials/hour | whole s "
            "| trials/hour (whole)",
            rows,
        ),
        "",
        "Seen by each worker (name, CUDA_VISIBLE_DEVICES, GPUs): "
        + "; ".join(f"{w}: {v!r}, {n}" for w, v, n in sorted(seen, key=str))
        + f". Only its own GPU: **{s['own_gpu_only']}**.",
    ]


def render_default_space(s: dict) -> list[str]:
    keys = (
        "finished states epochs_run s_per_epoch trials_per_hour full_trial_s "
        "hours_per_100_trials_unpruned"
    )
    stopped = f"; {s['stopped']}" if s["stopped"] else ""
    return [
        f"Space: {s['space']}. `{s['command']}` ran {s['wall_s']} s (exit {s['exit_code']}"
        f"{stopped}).",
        "",
        *_table(
            "finished | states | epochs run | s / epoch | trials/hour | full trial s (unpruned) "
            "| 100 trials, h (unpruned)",
            [_pick(s, keys)],
        ),
        "",
        f"A full trial is {s['epochs_per_trial_max']} epochs ({s['folds']} folds); the first "
        "trials are never pruned (the median pruner starts after 5), so later trials cost less.",
    ]


RENDERERS = {
    "throughput": render_throughput,
    "data": render_data,
    "amp": render_amp,
    "oom": render_oom,
    "workers": render_workers,
    "default_space": render_default_space,
}


# --- main --------------------------------------------------------------------------------------


class SectionTimeout(BaseException):
    """A section ran past its limit. Not an Exception: a trial must not catch it (Optuna's
    catch, the objective's failure handling) and go on to the next one."""


@contextlib.contextmanager
def time_limit(seconds: float):
    def expired(signum, frame):
        raise SectionTimeout(f"stopped at its limit of {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def versions() -> dict:
    import albumentations
    import timm

    return {
        "torch": torch.__version__,
        "timm": timm.__version__,
        "optuna": optuna.__version__,
        "albumentations": albumentations.__version__,
        "python": platform.python_version(),
    }


def describe(device: torch.device) -> dict:
    if device.type != "cuda":
        return {"device": f"CPU ({platform.processor() or platform.machine()}), no CUDA"}
    p = torch.cuda.get_device_properties(device)
    return {
        "device": f"{p.name}, {p.total_memory / 2**30:.1f} GiB, compute capability "
        f"{p.major}.{p.minor}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}",
        "bf16_supported": torch.cuda.is_bf16_supported(),
    }


def run_section(ctx: Context, key: str, *, left: float) -> dict:
    """One section within its hard limit, or skipped if that is more than the budget has left;
    an error is recorded, and the other sections still run."""
    run_it: Callable[[Context], dict] = globals()[f"section_{key}"]
    limit = ctx.plan.caps.get(key, 0.0)
    if key == "default_space":
        # --timeout, then a trial that started just before it, then SIGINT and the stop.
        timeout = ctx.plan.search_timeout
        spare = SEARCH_CAP_EXTRA_S + STOP_GRACE_S + 15
        if timeout is not None:
            timeout = min(timeout, left - spare - 10)
        cap = (timeout or 60) + SEARCH_CAP_EXTRA_S
        limit = cap + STOP_GRACE_S + 15
        run_it = functools.partial(section_default_space, timeout=timeout, cap=cap)
        if timeout is not None and timeout < 20:
            return {"status": f"skipped: {left:.0f} s of the budget left, too little to search"}
    if limit > left:
        return {"status": f"skipped: {left:.0f} s of the budget left, {limit:.0f} s needed"}
    try:
        with time_limit(limit):
            return {"status": "ok", **run_it(ctx)}
    except (Exception, SectionTimeout) as exc:
        ctx.log(traceback.format_exc())
        return {"status": f"error: {type(exc).__name__}: {exc}"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder for gpu_check.md, .json and .log")
    parser.add_argument("--dry-run", action="store_true", help="every step at toy size, any device")
    parser.add_argument("--photos", help="a folder of class folders (default: hymenoptera/train)")
    parser.add_argument("--work", help="scratch folder (default: a temporary one, removed after)")
    parser.add_argument("--budget-s", type=float, help="the whole run's limit in seconds")
    parser.add_argument("--sections", default=",".join(TITLES), help="which, comma-separated")
    args = parser.parse_args()

    started = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log_file = open(out / "gpu_check.log", "w")  # noqa: SIM115 (open for the whole run)

    def log(text: str) -> None:
        print(text, flush=True)
        log_file.write(text + "\n")
        log_file.flush()

    device = torch.device("cuda" if torch.cuda.is_available() and not args.dry_run else "cpu")
    if not args.dry_run and device.type != "cuda":
        parser.error("no CUDA device here: use --dry-run")
    plan = DRY_PLAN if args.dry_run else GPU_PLAN
    if args.budget_s:
        plan = replace(plan, budget_s=args.budget_s)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    if args.dry_run:
        # Toy models on a shared CPU: denormal floats made some of test_resnet's epochs 50-100x
        # slower (10.8 s against 0.12 s at 32 px, same losses), and two threads spinning next
        # to other processes' as much again. One thread per process (its workers' too, through
        # OMP_NUM_THREADS) with denormals flushed keeps the dry run short and steady.
        torch.set_flush_denormal(True)
        torch.set_num_threads(1)
        os.environ["OMP_NUM_THREADS"] = "1"
    # Worker processes import this module (by name) for visible_trial; autoclf from here too.
    os.environ["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(HERE), str(ROOT), os.environ.get("PYTHONPATH")])
    )
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as trainer.fit sets it

    scratch = contextlib.nullcontext(args.work) if args.work else tempfile.TemporaryDirectory()
    with scratch as work_dir:
        work = Path(work_dir)
        work.mkdir(parents=True, exist_ok=True)
        photos = find_photos(args.photos)
        if photos is None:
            photos = synthetic_photos(work / "synthetic")
            note = f"synthetic ~500×375 JPEGs ({sum(1 for _ in photos.rglob('*.jpg'))})"
        else:
            note = str(photos)
        ctx = Context(plan, args.dry_run, device, work, photos, note, log=log)
        results = {
            "meta": {
                "dry_run": args.dry_run,
                **describe(device),
                **versions(),
                "cpus": os.cpu_count(),
                "started": datetime.datetime.now(datetime.timezone.utc).isoformat(
                    timespec="seconds"
                ),
                "photos": note,
                "dry_run_cpu": "denormals flushed, one thread a process" if args.dry_run else None,
                "plan": asdict(plan),
            },
            "sections": {},
        }

        def save() -> None:
            results["meta"]["seconds"] = round(time.perf_counter() - started, 1)
            (out / "gpu_check.json").write_text(json.dumps(results, indent=2, default=str))
            (out / "gpu_check.md").write_text(render(results))

        log(f"{results['meta']['device']}; {versions()}; photos: {note}")
        t0 = time.perf_counter()
        data = repeat_photos(photos, plan.images, work / "photos")
        index = build_index(data, datasets_dir=work)
        ctx.paths, ctx.labels = index.paths, index.label_array
        ctx.num_classes = len(index.classes)
        ctx.cache = build_cache(index.paths, size=plan.size, cache_dir=work / "cache").images
        log(f"{len(ctx.paths)} images decoded into the cache in {time.perf_counter() - t0:.1f} s")
        save()

        wanted = [s.strip() for s in args.sections.split(",") if s.strip()]
        for key in (k for k in TITLES if k in wanted):
            log(f"\n== {TITLES[key]}")
            begin = time.perf_counter()
            section = run_section(ctx, key, left=plan.budget_s - (begin - started))
            section["seconds"] = round(time.perf_counter() - begin, 1)
            results["sections"][key] = section
            save()
            ok = section["status"] == "ok"
            log("\n".join(RENDERERS[key](section)) if ok else section["status"])
            if ok:
                log(f"Goal: {section['goal']}: {'met' if section['goal_met'] else 'NOT met'}")
            log(f"({section['seconds']} s)")
        save()
        log(f"\nwritten: {out / 'gpu_check.md'}, {out / 'gpu_check.json'}")
    failed = [k for k, s in results["sections"].items() if s["status"] != "ok"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
