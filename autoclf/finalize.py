"""autoclf finalize: from a finished search to a saved ensemble, scored on OOF predictions.

1. members   pick trials on their stored OOF probabilities (greedy Caruana or plain top-k)
2. folds     each member's K fold models: those the search kept (``--keep-weights``), else
             retrained with the search's own seeds; every held-out image predicted under
             every TTA view: OOF probabilities per view
3. TTA       per member, keep the views only where they improve its OOF score
4. vote      soft or hard, whichever scores better on OOF (or as asked)
5. refit     keep each member's K fold models (``folds``, the default) or retrain it on all
             images (``full``)
6. save      weights and manifest.json (all ``predict`` needs), summary.json, the final
             model's OOF probabilities (oof.npy); with a test set, predictions.csv and test metrics

Every expensive step leaves a file under ``final/members/<trial>/`` and is skipped when that
file exists, so a finalize that was interrupted picks up where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args

import numpy as np
import optuna
import torch

import autoclf
from autoclf import atomic
from autoclf.config import FinalizeConfig, Refit, Select, TrainParams, Vote
from autoclf.data.cache import build_cache
from autoclf.ensemble import Selection, rank_key, select_greedy, select_top_k, vote
from autoclf.errors import AutoclfError
from autoclf.features import FeatureStore, feature_views
from autoclf.inference import VIEWS, Preprocess, View, predict_views, views_for
from autoclf.metrics import Metric, get_metric
from autoclf.models import load_trained
from autoclf.predict import Images, PredictResult, load_images, predict, write_predictions
from autoclf.search import record, weights
from autoclf.search.objective import fit_fold_or_oom, trial_dir_of, trial_seed
from autoclf.search.record import best_first
from autoclf.study import StudyFiles, load_study, open_study_dir
from autoclf.trainer import FitResult, resolve_device

TTA_PREFIXES = (2, 4, 8)  # the view counts --tta auto tries against the identity alone
StepFn = Callable[[str], None]


@dataclass
class MemberReport:
    trial: int
    weight: float
    params: dict[str, Any]
    cv_value: float  # the trial's CV value from the search
    oof: float  # OOF score of its retrained fold models, no TTA
    oof_tta: float  # OOF score with the views kept
    views: list[str]
    refit_epochs: int | None = None
    # The micro-batch the search (or finalize) fell back to after running out of memory.
    micro_batch: int | None = None


@dataclass
class FinalResult:
    final_dir: Path
    metric: str
    members: list[MemberReport]
    ensemble: dict[str, dict[str, float]]  # {"soft"|"hard": {"plain": s, "tta": s}}
    vote: str
    oof_score: float
    best_single: float
    selection_history: list[float]
    test: PredictResult | None = None
    notes: list[str] = field(default_factory=list)


def finalize(config: FinalizeConfig, *, on_step: StepFn = lambda _: None) -> FinalResult:
    """The steps of this module's docstring, each a function below."""
    _check_options(config)
    files = open_study_dir(config.studies_dir, config.study)
    study = load_study(files, config.storage)
    metric = get_metric(files.config.metric)
    device = resolve_device(config.device)
    final_dir = files.dir / "final"
    test_images = None
    if config.test is not None:
        # Index and decode the test images before any training: a wrong path or a broken
        # image stops here, not after the members are retrained.
        test_images = load_images(
            config.test,
            classes=files.index.classes,
            size=files.space.max_image_size,
            final_dir=final_dir,
            studies_dir=config.studies_dir,
            skip_bad=config.skip_bad_images,
        )
    chosen, selection = _pick_members(study, files, config, metric, on_step)
    cache = build_cache(
        files.index.paths, size=files.space.max_image_size, cache_dir=files.dir / "cache"
    )
    features = FeatureStore(files.dir / "features", cache.images, cache.path.name, device)
    scored = [
        _member_oof(trial, weight, files, cache.images, features, device, config, metric, on_step)
        for trial, weight in zip(chosen, selection.weights, strict=True)
    ]
    voted = _vote(scored, files.index.label_array, metric, config)
    for member in voted.members:
        member.refit_epochs, member.micro_batch = _refit(
            member, files, cache.images, features, device, config, on_step
        )
    result = FinalResult(
        final_dir=final_dir,
        metric=metric.name,
        members=voted.members,
        ensemble=voted.ensemble,
        vote=voted.kind,
        oof_score=metric(files.index.label_array, voted.probs),
        best_single=max(
            (m.oof_tta for m in voted.members),
            key=lambda s: s if metric.direction == "maximize" else -s,
        ),
        selection_history=list(selection.history),
        notes=voted.notes,
    )
    _save(result, voted.probs, files, config, test_images, device, on_step)
    return result


def _pick_members(
    study: optuna.Study,
    files: StudyFiles,
    config: FinalizeConfig,
    metric: Metric,
    on_step: StepFn,
) -> tuple[list[optuna.trial.FrozenTrial], Selection]:
    """1. members: trials picked on their stored OOF probabilities."""
    trials = _complete_trials(study, files)
    here = {t.number for t in trials}
    elsewhere = [
        t.number
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if t.number not in here
    ]
    if elsewhere:  # run by workers on another machine, with their own studies folder
        on_step(
            f"trials {elsewhere} have no out-of-fold predictions under {files.dir / 'trials'} "
            "(searched on another machine?) and are left out; copy their trials/<number>/ "
            "folders here to include them"
        )
    labels = files.index.label_array
    candidates = [np.load(files.dir / t.user_attrs[record.OOF_PATH]) for t in trials]
    if config.select == "greedy":
        selection = select_greedy(candidates, labels, metric=metric, max_members=config.top_k)
    else:
        selection = select_top_k(candidates, labels, metric=metric, k=config.top_k)
    chosen = [trials[i] for i in selection.members]
    on_step(
        f"members: trials {[t.number for t in chosen]} "
        f"(from {len(trials)} complete trials, {config.select} selection)"
    )
    return chosen, selection


@dataclass
class _ScoredMember:
    report: MemberReport
    plain: np.ndarray  # OOF probabilities under the identity view
    tta: np.ndarray  # OOF probabilities averaged over the views it keeps


def _member_oof(
    trial: optuna.trial.FrozenTrial,
    weight: float,
    files: StudyFiles,
    images: np.ndarray,
    features: FeatureStore,
    device: torch.device,
    config: FinalizeConfig,
    metric: Metric,
    on_step: StepFn,
) -> _ScoredMember:
    """2. folds and 3. TTA: a member's OOF probabilities from its K fold models under every
    view, and the views it keeps."""
    labels = files.index.label_array
    params = TrainParams.from_dict(trial.user_attrs[record.CONFIG])
    n_views = len(VIEWS) if config.tta == "auto" else 1 if config.tta == "off" else int(config.tta)
    views = views_for(params.hflip)[:n_views]
    if params.kind == "head":  # a head trained on these views' features and no others
        views = tuple(v for v in views if v in feature_views(params.hflip))
    micro_batch = trial.user_attrs.get(record.MICRO_BATCH)
    oof_views, micro_batch = _fold_oof(
        trial.number, params, micro_batch, files, images, features, views, device, config, on_step
    )
    n_kept = _choose_views(config.tta, oof_views, labels, metric)
    tta = oof_views[:n_kept].mean(axis=0)
    report = MemberReport(
        trial=trial.number,
        weight=weight,
        params=params.to_dict(),
        cv_value=float(trial.value),
        oof=metric(labels, oof_views[0]),
        oof_tta=metric(labels, tta),
        views=[v.name for v in views[:n_kept]],
        micro_batch=micro_batch,
    )
    return _ScoredMember(report, oof_views[0], tta)


@dataclass
class _Voted:
    members: list[MemberReport]
    ensemble: dict[str, dict[str, float]]  # {"soft"|"hard": {"plain": s, "tta": s}}
    kind: str  # soft or hard
    probs: np.ndarray  # the final model's OOF probabilities
    notes: list[str]


def _vote(
    scored: list[_ScoredMember], labels: np.ndarray, metric: Metric, config: FinalizeConfig
) -> _Voted:
    """4. vote: soft or hard, with or without the members' views, whichever scores better on
    OOF (or as asked); a single member that beats the ensemble is the final model."""
    members = [s.report for s in scored]
    plain, tta = [s.plain for s in scored], [s.tta for s in scored]
    member_weights = [m.weight for m in members]
    # The four ensembles, voted once: reported in the summary and chosen among below.
    voted = {
        (kind, use): vote(kind, tta if use else plain, member_weights)
        for kind in ("soft", "hard")
        for use in (False, True)
    }
    ensemble = {
        kind: {
            "plain": metric(labels, voted[kind, False]),
            "tta": metric(labels, voted[kind, True]),
        }
        for kind in ("soft", "hard")
    }
    notes: list[str] = []
    kind, use_tta = _choose_vote_and_tta(config, voted, labels, metric)
    if not use_tta and any(len(m.views) > 1 for m in members):
        # Views that help members one by one can still hurt their vote: the ensemble decides.
        notes.append("TTA helped single members but not the ensemble; the ensemble runs without it")
        for member in members:
            member.views, member.oof_tta = ["identity"], member.oof
        tta = plain
    probs = voted[kind, use_tta]
    best = max(range(len(members)), key=lambda i: rank_key(metric, labels, tta[i]))
    if rank_key(metric, labels, tta[best]) > rank_key(metric, labels, probs):
        # The ensemble must earn its cost: a single member that beats it on OOF is the answer.
        notes.append(
            f"trial {members[best].trial} alone beat the ensemble on OOF; it is the final model"
        )
        members = [members[best]]
        members[0].weight = 1.0
        kind = "soft"  # one member's own probabilities, not one-hot vote shares
        probs = tta[best]
    return _Voted(members, ensemble, kind, probs, notes)


def _save(
    result: FinalResult,
    probs: np.ndarray,
    files: StudyFiles,
    config: FinalizeConfig,
    test_images: Images | None,
    device: torch.device,
    on_step: StepFn,
) -> None:
    """6. save: the manifest (all ``predict`` needs), the final model's OOF probabilities, the
    test set's predictions, and the summary, which is written last."""
    final_dir = result.final_dir
    manifest = _manifest(files, result.members, result.vote, config)
    # An earlier run's summary goes first: interrupted below, this run leaves no summary that
    # describes another ensemble than the manifest's.
    (final_dir / "summary.json").unlink(missing_ok=True)
    atomic.write_json(final_dir / "manifest.json", manifest)
    # The final model's out-of-fold probabilities: the report's confusion matrix and mistakes.
    atomic.save_npy(final_dir / "oof.npy", probs.astype(np.float32))
    if config.test is not None:
        on_step(f"predicting {config.test}")
        result.test = predict(final_dir, config.test, device=device, images=test_images)
        write_predictions(result.test, final_dir / "predictions.csv")
    elif (final_dir / "predictions.csv").is_file():  # kept: it is someone's result
        result.notes.append(
            f"{final_dir / 'predictions.csv'} is from an earlier finalize, not from this "
            "ensemble; `autoclf predict` or `finalize --test` writes new ones"
        )
    atomic.write_json(final_dir / "summary.json", _summary(result, config))


def _check_options(config: FinalizeConfig) -> None:
    if config.top_k < 1:
        raise AutoclfError(f"--top-k must be at least 1, got {config.top_k}")
    for option, value, kinds in (
        ("select", config.select, Select),
        ("vote", config.vote, Vote),
        ("refit", config.refit, Refit),
    ):
        if value not in get_args(kinds):
            raise AutoclfError(f"--{option} must be {' or '.join(get_args(kinds))}, got {value!r}")
    if config.tta not in ("auto", "off") and not (
        config.tta.isdigit() and 1 <= int(config.tta) <= len(VIEWS)
    ):
        raise AutoclfError(
            f"--tta must be auto, off or a number of views from 1 to {len(VIEWS)}, "
            f"got {config.tta!r}"
        )


def _complete_trials(study: optuna.Study, files: StudyFiles) -> list[optuna.trial.FrozenTrial]:
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    trials = [
        t
        for t in best_first(study.get_trials(deepcopy=False), maximize)
        if record.OOF_PATH in t.user_attrs and (files.dir / t.user_attrs[record.OOF_PATH]).is_file()
    ]
    if not trials:
        raise AutoclfError(
            f"study {files.config.study!r} has no complete trial with out-of-fold predictions yet; "
            "run `autoclf search` until at least one trial completes"
        )
    return trials


def _fold_oof(
    number: int,
    params: TrainParams,
    micro_batch: int | None,
    files: StudyFiles,
    images: np.ndarray,
    features: FeatureStore,
    views: tuple[View, ...],
    device: torch.device,
    config: FinalizeConfig,
    on_step: StepFn,
) -> tuple[np.ndarray, int | None]:
    """OOF probabilities of every view, (views, images, classes), from retrained fold models,
    and the micro-batch they trained at."""
    member_dir = files.dir / "final" / "members" / str(number)
    oof_path = member_dir / f"oof_views{len(views)}.npy"
    fold_paths = [weights.fold_weights(member_dir, k) for k in range(files.n_folds)]
    if oof_path.is_file() and all(weights.is_finished(path) for path in fold_paths):
        return np.load(oof_path), micro_batch
    labels, n_classes = files.index.label_array, len(files.index.classes)
    preprocess = Preprocess(params.backbone, size=params.image_size, device=device)
    oof = np.zeros((len(views), len(labels), n_classes), dtype=np.float32)
    for fold in range(files.n_folds):
        val_idx = np.flatnonzero(files.folds == fold)
        weights_path = fold_paths[fold]
        if not weights.is_finished(weights_path) and _from_search(
            weights.fold_weights(trial_dir_of(files.dir, number), fold), weights_path
        ):
            on_step(f"trial {number}: fold {fold + 1}/{files.n_folds} as the search trained it")
        if not weights.is_finished(weights_path):
            result, micro_batch = _fit(
                params,
                micro_batch,
                f"trial {number}: fold {fold + 1}/{files.n_folds}",
                on_step,
                features=features,
                images=images,
                labels=labels,
                train_idx=np.flatnonzero(files.folds != fold),
                val_idx=val_idx,
                num_classes=n_classes,
                metric=get_metric(files.config.metric),
                seed=trial_seed(files.config.seed, number, fold),
                device=device,
                loader_workers=config.loader_workers,
                keep_weights=True,
            )
            weights.save_weights(weights_path, result.state_dict, kept_epoch=result.kept_epoch)
            on_step(
                f"trial {number}: fold {fold + 1}/{files.n_folds} retrained "
                f"(kept epoch {result.kept_epoch})"
            )
        model = load_trained(params, weights_path, num_classes=n_classes, device=device)
        oof[:, val_idx] = predict_views(
            model,
            images,
            indices=val_idx,
            preprocess=preprocess,
            views=views,
            amp=params.amp,
        )
    atomic.save_npy(oof_path, oof)
    return oof, micro_batch


def _fit(
    params: TrainParams, micro_batch: int | None, what: str, on_step: StepFn, **kwargs
) -> tuple[FitResult, int | None]:
    """:func:`fit_fold`, once more at half the micro-batch if memory runs out (on a device that
    another job now shares, say); the result and the micro-batch it fit at."""
    retried = False
    while isinstance(result := fit_fold_or_oom(params, micro_batch=micro_batch, **kwargs), str):
        tried = micro_batch or params.batch_size
        if retried or tried < 2:
            raise AutoclfError(
                f"{what}: out of memory at micro-batch {tried} (batch {params.batch_size}): "
                f"{result}. What finalize finished is kept: free the device and run it again, "
                "or run it with --device cpu"
            )
        micro_batch, retried = tried // 2, True
        on_step(f"{what}: {result}; again with micro-batch {micro_batch}")
    return result, micro_batch


def _choose_views(tta: str, oof_views: np.ndarray, labels: np.ndarray, metric: Metric) -> int:
    """How many views a member keeps: all asked for, or under auto, the prefix that scores
    best on OOF, where the identity alone wins ties."""
    if tta != "auto":
        return len(oof_views)
    best, best_key = 1, rank_key(metric, labels, oof_views[0])
    for n in TTA_PREFIXES:
        key = rank_key(metric, labels, oof_views[:n].mean(axis=0))
        if key > best_key:
            best, best_key = n, key
    return best


def _choose_vote_and_tta(
    config: FinalizeConfig,
    voted: dict[tuple[str, bool], np.ndarray],
    labels: np.ndarray,
    metric: Metric,
) -> tuple[str, bool]:
    """The vote (auto: the better on OOF) and, under ``--tta auto``, whether the ensemble keeps
    its members' views at all. On a tie, soft and no TTA (the cheaper) win."""
    kinds = ("soft", "hard") if config.vote == "auto" else (config.vote,)
    tta_options = (False, True) if config.tta == "auto" else (True,)
    options = [(kind, use) for kind in kinds for use in tta_options]
    keys = {o: rank_key(metric, labels, voted[o]) for o in options}
    return max(options, key=lambda o: keys[o])  # max keeps the first of equals


def _refit(
    member: MemberReport,
    files: StudyFiles,
    images: np.ndarray,
    features: FeatureStore,
    device: torch.device,
    config: FinalizeConfig,
    on_step: StepFn,
) -> tuple[int | None, int | None]:
    """With ``--refit full``, train the member on every image for as many epochs as its folds
    settled on; the epochs (None: its fold models are the member) and the micro-batch."""
    if config.refit == "folds":
        return None, member.micro_batch
    member_dir = files.dir / "final" / "members" / str(member.trial)
    folds = [
        json.loads(weights.fold_weights(member_dir, k).with_suffix(".json").read_text())
        for k in range(files.n_folds)
    ]
    # "best_epoch": the key's name in fold records of older autoclf versions (a resumed finalize).
    kept_epochs = [fold.get("kept_epoch", fold.get("best_epoch")) for fold in folds]
    epochs = max(1, round(float(np.mean(kept_epochs))))
    weights_path = member_dir / "full.pt"
    if weights.is_finished(weights_path):
        return epochs, member.micro_batch
    params = dataclasses.replace(TrainParams.from_dict(member.params), epochs=epochs, patience=0)
    result, micro_batch = _fit(
        params,
        member.micro_batch,
        f"trial {member.trial}: the model on every image",
        on_step,
        features=features,
        images=images,
        labels=files.index.label_array,
        train_idx=np.arange(len(files.index)),
        val_idx=None,
        num_classes=len(files.index.classes),
        metric=get_metric(files.config.metric),
        seed=trial_seed(files.config.seed, member.trial, files.n_folds),
        device=device,
        loader_workers=config.loader_workers,
        keep_weights=True,
    )
    weights.save_weights(weights_path, result.state_dict, kept_epoch=epochs)
    on_step(f"trial {member.trial}: retrained on all {len(files.index)} images for {epochs} epochs")
    return epochs, micro_batch


def _from_search(kept: Path, target: Path) -> bool:
    """Link (or copy) a fold model the search kept to where finalize keeps its own; False if
    the search kept none (or dropped it meanwhile: a search still running ranks its trials)."""
    if not weights.is_finished(kept):
        return False
    try:
        for src, dst in ((kept, target), (kept.with_suffix(".json"), target.with_suffix(".json"))):
            atomic.link_or_copy(src, dst)
    except FileNotFoundError:
        return False
    return True


def _manifest(
    files: StudyFiles, members: list[MemberReport], vote_kind: str, config: FinalizeConfig
) -> dict:
    def weight_files(m: MemberReport) -> list[str]:
        names = (
            ["full.pt"] if config.refit == "full" else [f"fold{k}.pt" for k in range(files.n_folds)]
        )
        return [f"members/{m.trial}/{n}" for n in names]

    return {
        "autoclf_version": autoclf.__version__,
        "study": files.config.study,
        "metric": files.config.metric,
        "classes": list(files.index.classes),
        "cache_size": files.space.max_image_size,
        "vote": vote_kind,
        "refit": config.refit,
        "members": [
            {
                "trial": m.trial,
                "weight": m.weight,
                "params": m.params,
                "views": m.views,
                "weights": weight_files(m),
            }
            for m in members
        ],
    }


def _summary(result: FinalResult, config: FinalizeConfig) -> dict:
    summary: dict[str, Any] = {
        "options": config.to_dict(),
        "metric": result.metric,
        "oof": {
            "ensemble": result.oof_score,
            "best_single_member": result.best_single,
            "vote": result.vote,
            "soft": result.ensemble["soft"],
            "hard": result.ensemble["hard"],
            "selection_history": result.selection_history,
        },
        "members": [dataclasses.asdict(m) for m in result.members],
        "notes": result.notes,
    }
    if result.test is not None:
        summary["test"] = {
            "data": config.test,
            "rows": len(result.test.paths),
            **result.test.metrics,
        }
        if result.test.skipped:  # --skip-bad-images: not predicted, and why
            summary["test"]["skipped"] = result.test.skipped
    return summary
