"""A search from start to end: prepare everything before the first trial, then run trials
until the study holds ``trials`` finished ones (COMPLETE or PRUNED) or time runs out.

Every check that can fail on bad input (data, space, pretrained weights, a study created
with other settings) runs in :func:`prepare`, before any compute is spent.
"""

from __future__ import annotations

import csv
import difflib
import io
import json
import shlex
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import optuna
import torch

import autoclf
from autoclf import atomic
from autoclf.config import SearchConfig, study_path
from autoclf.data.cache import ImageCache, build_cache
from autoclf.data.duplicates import Duplicates, find_duplicates, fold_groups, perceptual_hashes
from autoclf.data.folds import assign_folds, check_splittable
from autoclf.data.index import DataIndex, build_index, load_index, save_index
from autoclf.errors import AutoclfError, DataError, StudyMismatchError
from autoclf.metrics import AUTO, Metric, choose_metric, get_metric
from autoclf.models import ensure_pretrained
from autoclf.search.budget import EpochBudget
from autoclf.search.events import EventFn, TrialFinished, ignore
from autoclf.search.objective import Objective
from autoclf.search.space import SearchSpace, load_space, same_search
from autoclf.search.storage import (
    cannot_open,
    claim_lock,
    default_storage_url,
    mask_url,
    open_storage,
)
from autoclf.search.worker import FINISHED, STOPPING, failure_message, sampler_seed, work
from autoclf.trainer import resolve_device

# Settings that define a study: resuming with any other value would mix incomparable trials.
IDENTITY_KEYS = ("data", "folds", "seed", "metric", "balance")


class SearchFailedError(AutoclfError):
    """Trials keep failing; the message carries the last failure reason."""


@dataclass
class PreparedSearch:
    config: SearchConfig
    space: SearchSpace
    metric: Metric
    index: DataIndex
    folds: np.ndarray
    cache: ImageCache
    study: optuna.Study
    study_dir: Path
    storage_url: str
    resumed: bool
    device: torch.device
    excluded: dict[str, str]  # images left out (--skip-bad-images): path → reason
    duplicates: Duplicates | None  # found when the study was created; None on a resume
    notes: list[str] = field(default_factory=list)  # e.g. pretrained weights imported

    def finished(self) -> int:
        return len(self.study.get_trials(deepcopy=False, states=FINISHED))

    @property
    def budget(self) -> EpochBudget | None:
        """``--epoch-budget`` as the workers apply it (None without one)."""
        if self.config.epoch_budget is None:
            return None
        return EpochBudget.of(self.config.epoch_budget, int(self.folds.max()) + 1, self.space)

    def done(self) -> bool:
        """The study holds ``--trials`` finished trials, or no further trial fits the budget."""
        budget = self.budget
        return self.finished() >= self.config.trials or (
            budget is not None and not budget.room(self.study.get_trials(deepcopy=False))
        )


def study_dir_for(config: SearchConfig) -> Path:
    return study_path(config.studies_dir, config.study)


@contextmanager
def tidy_if_unbound(study_dir: Path) -> Iterator[None]:
    """Around a first run: if it stops before the study is bound (no index.csv), take away what
    it made, so that a typo or bad data leaves no study behind. A first run refused for bad
    input leaves nothing: the fixed data will need a new cache anyway. One that was interrupted
    keeps a log with something in it and the cache it wrote, for the next try. A folder that
    was there before the run is never removed: it may be anything the user named."""
    bound = (study_dir / "index.csv").is_file()
    made = not study_dir.exists()
    try:
        yield
    except AutoclfError:
        if made and not (study_dir / "index.csv").is_file():
            shutil.rmtree(study_dir, ignore_errors=True)
        raise
    finally:
        if not bound and not (study_dir / "index.csv").is_file():
            for log in (study_dir / "logs").glob("*.log"):
                if log.stat().st_size == 0:
                    log.unlink()
            for folder in (study_dir / "logs", study_dir / "cache", study_dir):
                with suppress(OSError):  # not empty, or not there
                    folder.rmdir()


@dataclass
class Inputs:
    """A search's space and data, checked (see :func:`check_inputs`)."""

    space: SearchSpace
    index: DataIndex


# What autoclf keeps in a study's folder (docs/search.md, "What a study leaves on disk").
STUDY_FILES = frozenset(
    {
        "config.json",
        "space.yaml",
        "index.csv",
        "excluded.csv",
        "duplicates.csv",
        "study.db",
        "study.db-wal",
        "study.db-shm",
        "study.claim.lock",
        "logs",
        "cache",
        "features",
        "trials",
        "final",
        "report.html",
    }
)


def start_over(config: SearchConfig) -> str:
    """The command that deletes a study (its trials, folds, cache and models), to start it
    again under the same name; in words instead where its folder holds files of someone else's."""
    study_dir = study_dir_for(config).resolve()
    delete = None  # with the default storage, the SQLite file is in the folder
    if config.storage is not None:
        # Quoted: a URL's query string ("?password=***&sslmode=require") holds "&".
        delete = shlex.join(
            ["optuna", "delete-study", "--storage", mask_url(config.storage), "--study-name"]
            + [config.study]
        )
    others = sorted(p.name for p in study_dir.iterdir() if p.name not in STUDY_FILES)
    if others:
        files = f"delete autoclf's files from {study_dir} ({others[0]!r} there is not autoclf's)"
        return f"{delete}, then {files}" if delete else files
    remove = f"rm -r {shlex.quote(str(study_dir))}"
    return f"{delete} && {remove}" if delete else remove


def check_inputs(config: SearchConfig) -> Inputs:
    """Every check of a search's input that needs neither a decoded image nor the storage: the
    metric's name, the space file, the epoch budget, and for a new study the data (two classes
    or more, each with an image per fold). It makes nothing on disk but the built-in data sets,
    so ``autoclf search`` runs it before it starts a worker or makes the study's folder."""
    study_dir = study_dir_for(config)  # a name that is not one folder name is refused first
    if config.metric != AUTO:
        get_metric(config.metric)  # an unknown name fails before any work
    space = load_space(config.space)
    if config.epoch_budget is not None:
        budget = EpochBudget.of(config.epoch_budget, config.folds, space)
        if not budget.room([]):  # not even one trial fits
            raise AutoclfError(
                f"--epoch-budget {budget.total} is less than one trial of {space.name}: "
                f"{config.folds} folds × {space.max_epochs} epochs = {budget.per_trial}"
            )
    index = build_index(config.data, datasets_dir=Path(config.studies_dir).resolve() / "_datasets")
    if not (study_dir / "index.csv").is_file():  # a resume checks its saved folds
        check_splittable(
            index.label_array, n_splits=config.folds, classes=index.classes, groups=index.groups
        )
    return Inputs(space, index)


def prepare(
    config: SearchConfig,
    *,
    inputs: Inputs | None = None,
    allow_space_change: bool = False,
    on_cache_progress: Callable[[int, int], None] | None = None,
) -> PreparedSearch:
    """Everything a search needs before its first trial; ``inputs`` are :func:`check_inputs`'s
    for this ``config``, if it was already called.

    A study is bound to its settings once its index (the folds) is written: a resume checks
    that nothing changed since; a new study decodes its data and makes its folds. A first run
    that stopped on bad input before that point binds nothing."""
    inputs = inputs or check_inputs(config)
    device = resolve_device(config.device)
    study_dir = study_dir_for(config)
    study_dir.mkdir(parents=True, exist_ok=True)
    bound = (study_dir / "index.csv").is_file()
    if bound:
        data = _resume(config, inputs, study_dir, allow_space_change, on_cache_progress)
    else:
        data = _create(config, inputs, study_dir, on_cache_progress)
    config, space = data.config, inputs.space
    metric = get_metric(config.metric)
    storage_url = config.storage or default_storage_url(study_dir)
    study, resumed = _open_study(config, space, metric, storage_url)
    _check_or_write_study_attrs(study, config, space, data.index)

    # Everything is checked: record the set-up that every later run of this study must match.
    if not bound:
        if data.excluded:
            _write_excluded(study_dir / "excluded.csv", data.excluded)
        if data.duplicates.groups:
            _write_duplicates(study_dir / "duplicates.csv", data.duplicates, data.index)
        save_index(data.index, data.folds, study_dir / "index.csv")
    # The storage URL is kept for status, report and finalize; with a password in it, the
    # file is readable by its owner alone, as ~/.pgpass must be.
    has_password = mask_url(storage_url) != storage_url
    atomic.write_json(study_dir / "config.json", config.to_dict(), private=has_password)
    atomic.write_text(study_dir / "space.yaml", space.source)
    return PreparedSearch(
        config=config,
        space=space,
        metric=metric,
        index=data.index,
        folds=data.folds,
        cache=data.cache,
        study=study,
        study_dir=study_dir,
        storage_url=storage_url,
        resumed=resumed,
        device=device,
        excluded=data.excluded,
        duplicates=data.duplicates,
        notes=data.notes,
    )


@dataclass
class _StudyData:
    config: SearchConfig  # its metric resolved
    index: DataIndex  # less the images left out
    folds: np.ndarray
    cache: ImageCache
    excluded: dict[str, str]  # images left out when the study was created: path → reason
    duplicates: Duplicates | None  # found when the study is created; None on a resume
    notes: list[str]  # e.g. pretrained weights imported


def _resume(
    config: SearchConfig,
    inputs: Inputs,
    study_dir: Path,
    allow_space_change: bool,
    on_cache_progress: Callable[[int, int], None] | None,
) -> _StudyData:
    """A bound study goes on as it was created: same settings, space, data and folds."""
    config = _resolve_from_saved(config, study_dir)
    _check_same_config(config, study_dir)
    _check_same_space(inputs.space, study_dir, allow_change=allow_space_change)
    excluded = _read_excluded(study_dir / "excluded.csv")
    index = inputs.index.without(excluded)  # images this study left out when it was created
    index, folds = _saved_index(config, index, study_dir / "index.csv")
    notes = _ensure_pretrained(inputs.space)
    cache = _decode(index, config, inputs.space, study_dir, on_cache_progress)
    if cache.skipped:
        raise StudyMismatchError(
            f"{len(cache.skipped)} image(s) of study {config.study!r} no longer decode "
            f"(first: {next(iter(cache.skipped.values()))}); restore them, or start over: "
            f"{start_over(config)}"
        )
    return _StudyData(config, index, folds, cache, excluded, None, notes)


def _create(
    config: SearchConfig,
    inputs: Inputs,
    study_dir: Path,
    on_cache_progress: Callable[[int, int], None] | None,
) -> _StudyData:
    """A new study: decode its images (leaving out the bad ones with --skip-bad-images), find
    its duplicates, make its folds, and pick its metric."""
    index, excluded = inputs.index, {}
    notes = _ensure_pretrained(inputs.space)
    cache = _decode(index, config, inputs.space, study_dir, on_cache_progress)
    if cache.skipped:
        index, excluded = index.without(cache.skipped), cache.skipped
        emptied = [name for name, n in index.class_counts().items() if n == 0]
        if emptied:
            raise DataError(
                f"class(es) {emptied} have no image that decodes: --skip-bad-images left out "
                f"{len(excluded)} image(s), e.g. {next(iter(excluded.values()))}; fix them, "
                "or take the class out of DATA"
            )
    duplicates = find_duplicates(perceptual_hashes(cache.images))
    groups = index.groups
    if config.duplicates == "group":  # near-identical images never straddle a split
        groups = fold_groups(len(index), index.groups, duplicates)
    folds = assign_folds(
        index.label_array,
        n_splits=config.folds,
        seed=config.seed,
        groups=groups,
        classes=index.classes,
    )
    if config.metric == AUTO:  # decided by the data, then saved with the study
        config = replace(config, metric=choose_metric(index.class_counts().values()))
    return _StudyData(config, index, folds, cache, excluded, duplicates, notes)


def _decode(
    index: DataIndex,
    config: SearchConfig,
    space: SearchSpace,
    study_dir: Path,
    on_progress: Callable[[int, int], None] | None,
) -> ImageCache:
    """The study's images decoded once into its cache, at the space's largest image size."""
    return build_cache(
        index.paths,
        size=space.max_image_size,
        cache_dir=study_dir / "cache",
        on_progress=on_progress,
        skip_bad=config.skip_bad_images,
    )


def _ensure_pretrained(space: SearchSpace) -> list[str]:
    return ensure_pretrained(space.backbones) if space.may_use_pretrained else []


def _open_study(
    config: SearchConfig, space: SearchSpace, metric: Metric, storage_url: str
) -> tuple[optuna.Study, bool]:
    """The study in its storage, created if new; and whether it existed."""
    try:
        storage = open_storage(storage_url, heartbeat=config.heartbeat)
    except Exception as exc:  # a missing driver too
        raise cannot_open(storage_url, exc) from exc
    resumed = config.study in {s.study_name for s in optuna.get_all_study_summaries(storage)}
    study = optuna.create_study(
        storage=storage,
        study_name=config.study,
        direction=metric.direction,
        sampler=space.make_sampler(config.seed),
        pruner=space.make_pruner(),
        load_if_exists=True,
    )
    if study.trials:
        # A fresh sampler seeded as before would draw the first trials' "random" parameters
        # again; salted with the trials so far, a resumed run goes on to new ones.
        study.sampler = space.make_sampler(sampler_seed(config.seed, len(study.trials)))
    return study, resumed


def run(prepared: PreparedSearch, *, on_event: EventFn = ignore) -> optuna.Study:
    """Run trials in this process until the study holds ``config.trials`` finished trials
    (a resume counts the old ones) or ``config.epoch_budget`` is spent. ``autoclf search``
    runs the same loop in worker processes instead (see ``pool.py``). Ctrl-C fails the
    running trial and queues it again, as in a worker, then raises KeyboardInterrupt."""
    config, study = prepared.config, prepared.study
    objective = Objective.for_study(
        config,
        space=prepared.space,
        index=prepared.index,
        folds=prepared.folds,
        images=prepared.cache.images,
        cache_name=prepared.cache.path.name,
        device=prepared.device,
        study_dir=prepared.study_dir,
        on_event=on_event,
        loader_workers=config.loader_workers,
    )
    with STOPPING.ctrl_c():  # a Ctrl-C fails and re-queues the trial, as in a worker
        result = work(
            study,
            objective,
            target=config.trials,
            claim=claim_lock(prepared.storage_url, config.study),
            deadline=time.time() + config.timeout if config.timeout else None,
            budget=prepared.budget,
            on_finished=lambda trial: on_event(TrialFinished(trial, best_or_none(study))),
            device=prepared.device,
        )
    if result.why == "failed":
        raise SearchFailedError(failure_message(result.failures))
    return study


def best_or_none(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    try:
        return study.best_trial
    except ValueError:  # no COMPLETE trial yet
        return None


def _saved_index(
    config: SearchConfig, index: DataIndex, saved_path: Path
) -> tuple[DataIndex, np.ndarray]:
    """The study's saved index and folds, after checking the data has not changed since. The
    saved index keeps the class order the study's models were trained with."""
    saved, folds = load_index(saved_path)
    if saved.paths != index.paths or _names(saved) != _names(index) or saved.groups != index.groups:
        added = len(set(index.paths) - set(saved.paths))
        removed = len(set(saved.paths) - set(index.paths))
        raise StudyMismatchError(
            f"the data changed since study {config.study!r} was created "
            f"({added} image(s) added, {removed} removed, or labels/groups changed); "
            f"start a new study with another --study name, or start over: {start_over(config)}"
        )
    return saved, folds  # the same folds as every earlier run of this study


def _names(index: DataIndex) -> list[str]:
    return [index.classes[label] for label in index.labels]


def _read_excluded(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    with path.open(newline="", encoding="utf-8") as fh:
        return {row["path"]: row["reason"] for row in csv.DictReader(fh)}


def _write_excluded(path: Path, excluded: dict[str, str]) -> None:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["path", "reason"])
    writer.writerows(sorted(excluded.items()))
    atomic.write_text(path, out.getvalue())


def _resolve_from_saved(config: SearchConfig, study_dir: Path) -> SearchConfig:
    """An existing study goes on as it was created: ``--metric auto`` means its metric, and no
    ``--storage`` its storage (not a second study in the default SQLite file, whose trial
    numbers would overwrite the first one's predictions); another ``--storage`` is an error."""
    path = study_dir / "config.json"
    if not path.is_file():
        return config
    saved = json.loads(path.read_text())
    if config.metric == AUTO:
        config = replace(config, metric=saved["metric"])
    if config.storage is None:
        return replace(config, storage=saved.get("storage"))

    def where(url: str | None) -> str:  # the password may be given in the URL or elsewhere
        return mask_url(url or default_storage_url(study_dir)).replace(":***@", "@")

    if where(config.storage) != where(saved.get("storage")):
        raise StudyMismatchError(
            f"study {config.study!r} is stored in {where(saved.get('storage'))}, not in "
            f"--storage {where(config.storage)}; leave --storage out to go on with it, or use "
            "another --study name"
        )
    return config


def _write_duplicates(path: Path, duplicates: Duplicates, index: DataIndex) -> None:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["group", "path", "label"])
    for number, group in enumerate(duplicates.groups, start=1):
        writer.writerows([number, index.paths[i], index.classes[index.labels[i]]] for i in group)
    atomic.write_text(path, out.getvalue())


def _check_same_config(config: SearchConfig, study_dir: Path) -> None:
    path = study_dir / "config.json"
    current = config.to_dict()
    if path.is_file():
        saved = json.loads(path.read_text())
        diff = [
            f"{k}: {saved.get(k)!r} → {current[k]!r}"
            for k in IDENTITY_KEYS
            if saved.get(k) != current[k]
        ]
        if diff:
            raise StudyMismatchError(
                f"study {config.study!r} was created with other settings ({'; '.join(diff)}); "
                "re-run with the original values, use another --study name, or start over: "
                f"{start_over(config)}"
            )


def _check_same_space(space: SearchSpace, study_dir: Path, *, allow_change: bool) -> None:
    path = study_dir / "space.yaml"
    if path.is_file() and not same_search(path.read_text(), space.source) and not allow_change:
        diff = "".join(
            difflib.unified_diff(
                path.read_text().splitlines(keepends=True),
                space.source.splitlines(keepends=True),
                fromfile="study's space.yaml",
                tofile=f"{space.name} (this run)",
            )
        )
        raise StudyMismatchError(
            f"the search space differs from the one this study was created with:\n{diff}\n"
            "Trials sampled from different spaces do not compare; pass --allow-space-change "
            "to go on anyway, or use another --study name."
        )


def _check_or_write_study_attrs(
    study: optuna.Study, config: SearchConfig, space: SearchSpace, index: DataIndex
) -> None:
    attrs = {
        "autoclf_version": autoclf.__version__,
        "data": config.data,
        "metric": config.metric,
        "folds": config.folds,
        "seed": config.seed,
        "space": space.name,
        "classes": list(index.classes),
        "n_images": len(index),
    }
    existing = study.user_attrs
    if existing.get("metric") not in (None, config.metric):
        raise StudyMismatchError(
            f"study {config.study!r} in this storage optimises {existing['metric']!r}, "
            f"not {config.metric!r}; use another --study name"
        )
    for key, value in attrs.items():
        if existing.get(key) != value:
            study.set_user_attr(key, value)
