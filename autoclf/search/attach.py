"""A worker process joins a study that :func:`autoclf.search.runner.prepare` set up: it reads
the saved index, folds and space back, maps the decoded cache, and loads the study."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
import torch

from autoclf.search.events import EventFn
from autoclf.search.objective import Objective
from autoclf.search.storage import ClaimLock, claim_lock, open_storage
from autoclf.study import open_study_dir
from autoclf.trainer import resolve_device


@dataclass
class AttachedWorker:
    study: optuna.Study
    objective: Objective
    claim: ClaimLock
    device: torch.device


def attach(
    study_dir: Path,
    *,
    storage_url: str,
    cache_path: str,
    device: str,
    heartbeat: int,
    loader_workers: int | None,
    sampler_seed: int,
    worker: str,
    on_event: EventFn,
) -> AttachedWorker:
    """What a worker process needs to run trials of a prepared study: the saved index and
    folds, the decoded cache (memory-mapped, shared), the study."""
    files = open_study_dir(study_dir.parent, study_dir.name)
    config = files.config
    study = optuna.load_study(
        study_name=config.study,
        storage=open_storage(storage_url, heartbeat=heartbeat),
        sampler=files.space.make_sampler(sampler_seed),
        pruner=files.space.make_pruner(),
    )
    torch_device = resolve_device(device)
    images = np.load(cache_path, mmap_mode="r")  # the parent's decoded cache, shared
    objective = Objective.for_study(
        config,
        space=files.space,
        index=files.index,
        folds=files.folds,
        images=images,
        cache_name=Path(cache_path).name,
        device=torch_device,
        study_dir=study_dir,
        on_event=on_event,
        loader_workers=loader_workers,
        worker=worker,
    )
    return AttachedWorker(study, objective, claim_lock(storage_url, config.study), torch_device)
