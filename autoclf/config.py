"""Frozen configuration: read once at the edge, written next to the results for replay."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal, get_args

from autoclf.errors import AutoclfError

# The fixed choices, each a Literal type and the tuple of its values.
Scheduler = Literal["cosine", "onecycle", "step", "plateau", "constant"]
SCHEDULERS: tuple[Scheduler, ...] = get_args(Scheduler)
# Class imbalance: none; weights (the loss weighs each class by n / (classes * n_class));
# sampler (batches drawn with replacement, each class equally likely).
Balance = Literal["none", "weights", "sampler"]
BALANCE: tuple[Balance, ...] = get_args(Balance)
# Which epoch's model a fold keeps and is scored by: its best on the validation fold, or the
# last. "best" picks the epoch on the same images it then reports, which flatters long runs.
Keep = Literal["best", "last"]
KEEP: tuple[Keep, ...] = get_args(Keep)
# What a trial trains: the whole network ("finetune"), or a linear head on the frozen
# pretrained body's pooled features, computed once per study ("head"; autoclf/head.py).
Kind = Literal["finetune", "head"]
KINDS: tuple[Kind, ...] = get_args(Kind)
# finalize: how members are picked, how they vote, what they are retrained into.
Select = Literal["greedy", "topk"]
Vote = Literal["soft", "hard", "auto"]
Refit = Literal["full", "folds"]
# finalize's test-time augmentation: auto, off, or a number of views ("4"), as typed.
Tta = Literal["auto", "off"] | str
# The settings a head-only trial uses; every other one is a fine-tune setting.
HEAD_PARAMS = frozenset(
    {
        "kind",
        "backbone",
        "pretrained",
        "image_size",
        "hflip",
        "lr",
        "weight_decay",
        "batch_size",
        "epochs",
        "dropout",
        "label_smoothing",
        "balance",
        "amp",
    }
)


@dataclass(frozen=True, kw_only=True)
class TrainParams:
    """Everything one training run needs; a trial's sampled values plus the space's fixed ones.

    ``optimizer`` is any name timm's ``create_optimizer_v2`` knows: ``adamw``, ``adam``,
    ``sgd`` (SGD with Nesterov momentum), ``momentum`` (SGD with plain momentum), ``rmsprop``,
    ``lamb``, ``lion``, …
    """

    backbone: str
    kind: Kind = "finetune"  # one of KINDS
    pretrained: bool = False
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9
    batch_size: int = 64
    dropout: float = 0.0
    drop_path: float = 0.0
    aug_strength: float = 0.0
    hflip: bool = True  # horizontal flips among the augmentations (off for text, digits, …)
    scheduler: Scheduler = "cosine"
    warmup_epochs: float = 0.0
    epochs: int = 10
    image_size: int = 224
    label_smoothing: float = 0.0
    grad_clip: float = 0.0  # max gradient norm; 0 turns clipping off
    patience: int = 0  # early stopping after this many epochs without improvement; 0 = off
    keep: Keep = "best"  # one of KEEP: the epoch whose weights, score and OOF a fold keeps
    amp: bool = True  # mixed precision on CUDA (bf16 where supported, else fp16); ignored on CPU
    balance: Balance = "none"  # one of BALANCE
    # Fine-tuning a pretrained body: the new head learns at lr × head_lr_mult (the body at lr);
    # the first freeze_epochs epochs train the head alone; freeze_bn keeps BatchNorm's
    # pretrained running statistics (its layers in eval mode), which small batches would spoil.
    head_lr_mult: float = 1.0
    freeze_epochs: int = 0
    freeze_bn: bool = False
    # Linear probing, then fine-tuning (LP-FT; Kumar et al., ICLR 2022): each fold starts from
    # a head fitted on the frozen body's cached features instead of a zero one.
    lp_ft: bool = False

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainParams:
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))


@dataclass(frozen=True, kw_only=True)
class SearchConfig:
    """The options of one ``autoclf search`` run, after the CLI resolved them."""

    data: str
    study: str
    space: str
    folds: int = 5
    seed: int = 0
    metric: str = "auto"  # a name in metrics.METRICS; "auto": f1_macro if imbalanced, else accuracy
    trials: int = 20
    timeout: float | None = None
    epoch_budget: int | None = None  # at most this many epochs over all trials (pruned included)
    storage: str | None = None
    studies_dir: str = "studies"
    device: str = "auto"  # where `run` trains in this process; worker processes use `gpus`
    loader_workers: int | None = None  # DataLoader worker processes; None = auto
    gpus: str = "auto"  # "auto", "cpu", or GPU indices "0,1": one group of workers per device
    workers: int = 1  # worker processes per device (per GPU, or on the CPU)
    heartbeat: int = 60  # seconds; a trial with no heartbeat for 3 of these is retried
    skip_bad_images: bool = False  # leave out undecodable images (listed in excluded.csv)
    balance: Balance | None = None  # none|weights|sampler for every trial; None: the space decides
    # Near-duplicate images: "group" keeps each set in one fold; "ignore" only reports them.
    # Decides the folds when a study is created; a resumed study keeps its folds.
    duplicates: str = "group"
    # The best this many complete trials keep their fold weights on disk, so that finalize
    # need not train them again (0: none; finalize retrains every member's folds).
    keep_weights: int = 5

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, kw_only=True)
class FinalizeConfig:
    """The options of one ``autoclf finalize`` run."""

    study: str
    studies_dir: str = "studies"
    storage: str | None = None
    top_k: int = 5  # the most distinct members the ensemble may have
    select: Select = "greedy"  # greedy (Caruana, with replacement) | topk
    vote: Vote = "auto"  # soft | hard | auto (the better on OOF)
    tta: Tta = "auto"  # auto | off | a number of views
    refit: Refit = "folds"  # folds (keep the K fold models) | full (retrain on all data)
    test: str | None = None
    skip_bad_images: bool = False  # leave out test images that cannot be decoded
    device: str = "auto"
    loader_workers: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def study_path(studies_dir: str | Path, study: str) -> Path:
    """``studies_dir/study``, for a study name that is one plain folder name: a name such as
    ``a/b`` or ``../x`` would put the study's files somewhere else."""
    if not study or not study[0].isalnum() or not all(c.isalnum() or c in "-_." for c in study):
        raise AutoclfError(
            f"study name {study!r}: use letters, digits, '-', '_' and '.', starting with a "
            "letter or digit (it names the study's folder under --studies-dir)"
        )
    return Path(studies_dir).resolve() / study
