"""``autoclf report``: one offline HTML page of what a search tried, what mattered, and, after
``finalize``, how the final model does and where it goes wrong."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from autoclf import atomic
from autoclf.data.cache import BadImagesError, decode_square
from autoclf.data.folds import describe_study_cv
from autoclf.errors import AutoclfError, DataError
from autoclf.metrics import get_metric
from autoclf.reports.html import escape, figure, page, plotly_text, table, thumbnail, tile
from autoclf.search import record
from autoclf.study import StudyFiles

MISTAKES = 12  # worst out-of-fold mistakes shown
SUSPECTS = 24  # likely label errors shown
SHOWN = 128  # px of a gallery image


def write_study_report(
    files: StudyFiles, study: optuna.Study, target: str | Path | None = None
) -> Path:
    target = atomic.target(target, files.dir / "report.html")  # a folder: report.html there
    atomic.write_text(target, render(files, study))
    return target


def render(files: StudyFiles, study: optuna.Study) -> str:
    trials = study.get_trials(deepcopy=False)
    if not trials:
        raise AutoclfError(f"study {files.config.study!r} has no trials yet; nothing to report")
    body = [
        _overview(files, trials),
        _leaderboard(files, trials),
        _optuna_plots(study, trials),
        _fold_scores(trials),
        _failures(trials),
    ]
    final = files.dir / "final"
    if (final / "summary.json").is_file() and (final / "oof.npy").is_file():
        body += _final(files, json.loads((final / "summary.json").read_text()))
    else:
        body.append(
            "<h2>Final model</h2><p class='muted'>Run <code>autoclf finalize --study "
            f"{escape(files.config.study)}</code> to add the ensemble, its confusion matrix, "
            "per-class scores and its worst mistakes to this report.</p>"
        )
    return page(f"autoclf report: study {files.config.study}", body)


# --- the search -----------------------------------------------------------------------------


def _overview(files: StudyFiles, trials: list[FrozenTrial]) -> str:
    config = files.config
    counts = {s.name: 0 for s in TrialState}
    for t in trials:
        counts[t.state.name] += 1
    cv = describe_study_cv(files.dir, config, files.index)
    rows = [
        ("data", config.data),
        ("images, classes", f"{len(files.index)}, {len(files.index.classes)}"),
        ("metric", f"{config.metric} ({cv}, seed {config.seed})"),
        ("space", config.space),
        ("trials", ", ".join(f"{n} {state.lower()}" for state, n in counts.items() if n)),
    ]
    return "<h2>Study</h2>" + table(("", ""), rows)


def _complete(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    return [t for t in trials if t.state == TrialState.COMPLETE]


def _leaderboard(files: StudyFiles, trials: list[FrozenTrial]) -> str:
    maximize = get_metric(files.config.metric).direction == "maximize"
    board = record.leaderboard(trials, maximize=maximize, top=15)
    if not board.rows:
        return "<h2>Leaderboard</h2><p>No trial has completed yet.</p>"
    rows = [
        [
            f"#{r.number}",
            f"{r.value:.4f} ± {r.cv_std if r.cv_std is not None else float('nan'):.4f}",
            *(_fmt(r.setting(k)) for k in board.settings),
            r.epochs_run,
            f"{r.duration_s or 0:.0f} s",
        ]
        for r in board.rows
    ]
    header = ("trial", f"{files.config.metric} ± sd", *board.settings, "epochs", "time")
    return "<h2>Leaderboard</h2>" + table(header, rows)


def _optuna_plots(study: optuna.Study, trials: list[FrozenTrial]) -> str:
    from optuna import visualization as vis

    parts = []
    plots = (
        ("Optimisation history", vis.plot_optimization_history, 1),
        ("Parameter importances", vis.plot_param_importances, 2),
        ("Parallel coordinates", vis.plot_parallel_coordinate, 1),
        ("Intermediate values (what pruning cut)", vis.plot_intermediate_values, 1),
    )
    complete = len(_complete(trials))
    for title, plot, needs in plots:
        if complete < needs:
            parts.append(f"<h2>{title}</h2><p class='muted'>Needs {needs} complete trial(s).</p>")
            continue
        fig = plot(study)
        fig.update_layout(height=420, title=None, margin={"t": 30})
        parts.append(f"<h2>{title}</h2>" + figure(fig))
    return "\n".join(parts)


def _fold_scores(trials: list[FrozenTrial]) -> str:
    import plotly.graph_objects as go

    done = [t for t in _complete(trials) if record.FOLD_SCORES in t.user_attrs]
    if not done:
        return ""
    fig = go.Figure()
    for t in done:
        scores = t.user_attrs[record.FOLD_SCORES]
        fig.add_trace(
            go.Box(
                y=scores,
                name=f"#{t.number}",
                boxpoints="all",
                jitter=0.3,
                hovertext=[f"fold {k + 1}: {s:.4f}" for k, s in enumerate(scores)],
            )
        )
    fig.update_layout(
        height=380,
        showlegend=False,
        xaxis_title="trial",
        yaxis_title="fold score",
        margin={"t": 20},
    )
    return "<h2>Per-fold scores</h2>" + figure(fig)


def _failures(trials: list[FrozenTrial]) -> str:
    rows = [
        (f"#{t.number}", t.state.name.lower(), _reason(t))
        for t in trials
        if t.state in (TrialState.FAIL, TrialState.PRUNED)
    ]
    if not rows:
        return "<h2>Failed and pruned trials</h2><p>None.</p>"
    return "<h2>Failed and pruned trials</h2>" + table(("trial", "state", "why"), rows)


def _reason(t: FrozenTrial) -> str:
    attrs = t.user_attrs
    return attrs.get("fail_reason") or attrs.get("pruned_reason") or "(no reason recorded)"


# --- after finalize -------------------------------------------------------------------------


def _final(files: StudyFiles, summary: dict) -> list[str]:
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    oof = np.load(files.dir / "final" / "oof.npy")
    labels = files.index.label_array
    classes = list(files.index.classes)
    predicted = oof.argmax(axis=1)
    return [
        _ensemble(summary),
        _confusion(confusion_matrix(labels, predicted, labels=range(len(classes))), classes),
        _per_class(precision_recall_fscore_support(labels, predicted, labels=range(len(classes)),
                                                   zero_division=0), classes),
        _mistakes(files, summary, oof),
        _label_issues(files),
    ]  # fmt: skip


def _ensemble(summary: dict) -> str:
    import plotly.graph_objects as go

    metric, oof = summary["metric"], summary["oof"]
    names = [f"#{m['trial']}" for m in summary["members"]] + ["ensemble"]
    scores = [m["oof_tta"] for m in summary["members"]] + [oof["ensemble"]]
    colours = ["#8aa"] * len(summary["members"]) + ["#c60"]
    fig = go.Figure(
        go.Bar(x=names, y=scores, marker_color=colours, text=[f"{s:.4f}" for s in scores])
    )
    low = min(scores)
    fig.update_layout(
        height=340,
        yaxis_title=f"OOF {metric}",
        yaxis_range=[low - 0.1 * abs(low), None],
        margin={"t": 20},
    )
    notes = "".join(f"<p>{escape(n)}</p>" for n in summary.get("notes", []))
    rows = [
        (kind, f"{oof[kind]['plain']:.4f}", f"{oof[kind]['tta']:.4f}") for kind in ("soft", "hard")
    ]
    test = summary.get("test")
    tested = (
        f"<p>Test set {escape(test['data'])}: {test['rows']} images, accuracy "
        f"{test['accuracy']:.4f}.</p>"
        if test and "accuracy" in test
        else ""
    )
    return (
        "<h2>Ensemble against its best single member</h2>"
        f"<p>The final model votes <b>{escape(oof['vote'])}</b>: OOF {escape(metric)} "
        f"<b>{oof['ensemble']:.4f}</b>, best single member {oof['best_single_member']:.4f}.</p>"
        + notes
        + figure(fig)
        + table(("vote", "without TTA", "with TTA"), rows)
        + tested
    )


def _confusion(matrix: np.ndarray, classes: list[str]) -> str:
    import plotly.graph_objects as go

    fig = go.Figure(
        go.Heatmap(
            z=matrix,
            x=[plotly_text(c) for c in classes],
            y=[plotly_text(c) for c in classes],
            text=matrix,
            texttemplate="%{text}",
            colorscale="Blues",
            hovertemplate="true %{y}, predicted %{x}: %{z}<extra></extra>",
        )
    )
    side = min(900, 200 + 40 * len(classes))
    fig.update_layout(
        height=side,
        width=side + 100,
        xaxis_title="predicted",
        yaxis_title="true",
        yaxis_autorange="reversed",
        margin={"t": 20},
    )
    return "<h2>Confusion matrix (out-of-fold)</h2>" + figure(fig)


def _per_class(scores: tuple, classes: list[str]) -> str:
    precision, recall, f1, support = scores
    rows = [
        (name, f"{p:.3f}", f"{r:.3f}", f"{f:.3f}", int(n))
        for name, p, r, f, n in zip(classes, precision, recall, f1, support, strict=True)
    ]
    return "<h2>Per-class scores (out-of-fold)</h2>" + table(
        ("class", "precision", "recall", "F1", "images"), rows
    )


def _mistakes(files: StudyFiles, summary: dict, oof: np.ndarray) -> str:
    labels = files.index.label_array
    predicted = oof.argmax(axis=1)
    wrong = np.flatnonzero(predicted != labels)
    if len(wrong) == 0:
        return "<h2>Worst mistakes</h2><p>The final model gets every image right out-of-fold.</p>"
    worst = wrong[np.argsort(-oof[wrong, predicted[wrong]], kind="stable")][:MISTAKES]
    member = max(summary["members"], key=lambda m: m["weight"])  # Grad-CAM's model
    no_heat = _why_no_heat_maps(files, member)
    heat = None
    if not no_heat:
        try:
            heat = _heat_maps(files, member, worst, predicted[worst])
        except BadImagesError as exc:  # changed since the search: the rest of the page stands
            first = next(iter(exc.bad.values()))
            no_heat = f"{len(exc.bad)} training image(s) no longer decode ({first})"
    classes = files.index.classes
    tiles = []
    for k, i in enumerate(worst):
        path = files.index.paths[i]
        shown = _picture(path)
        caption = (
            f"true {classes[labels[i]]} → {classes[predicted[i]]} ({oof[i, predicted[i]]:.2f})"
        )
        cells = _tile(shown, caption, path)
        if heat is not None:
            from autoclf.reports.gradcam import overlay

            cells += tile(thumbnail(overlay(shown, heat[k]), size=SHOWN), "Grad-CAM", title=path)
        tiles.append(f"<div class='pair'>{cells}</div>")
    how = (
        "Each with a Grad-CAM overlay: where the member with the largest weight, in the fold "
        "model that held the image out, found evidence for the wrong class."
        if heat is not None
        else f"No Grad-CAM: {escape(no_heat)}."
    )
    return (
        f"<h2>Worst mistakes (out-of-fold)</h2><p>The {len(worst)} most confident wrong "
        f"predictions of {len(wrong)}. {how}</p><div class='grid'>{''.join(tiles)}</div>"
    )


def _label_issues(files: StudyFiles) -> str:
    """The likely label errors that ``autoclf labels`` found, if it ran on this final model."""
    from autoclf import labels

    final = files.dir / "final"
    found = final / labels.CSV_NAME
    command = f"<code>autoclf labels --study {escape(files.config.study)}</code>"
    if not found.is_file():
        return (
            f"<h2>Likely label errors</h2><p class='muted'>Run {command} to list the training "
            "images whose labels the final model doubts.</p>"
        )
    if found.stat().st_mtime < (final / "oof.npy").stat().st_mtime:
        return (
            f"<h2>Likely label errors</h2><p class='muted'>{escape(found)} is from an earlier "
            f"final model: run {command} again.</p>"
        )
    issues = labels.read_csv(found)
    if not issues:
        return (
            "<h2>Likely label errors</h2><p>None: the final model's out-of-fold predictions "
            f"leave no training label in doubt ({len(files.index)} images).</p>"
        )
    tiles = [
        _tile(_picture(i.path), f"given {i.given} → {i.suggested} ({i.score:.2f})", i.path)
        for i in issues[:SUSPECTS]
    ]
    return (
        f"<h2>Likely label errors</h2><p>{len(issues)} of {len(files.index)} training images "
        f"(all in {escape(found)}), the {len(tiles)} most likely shown: given label → the "
        "class the final model suggests, with the out-of-fold probability of the given label. "
        "Confident learning (cleanlab) on the out-of-fold predictions; nothing was changed. "
        "Check them, fix the wrong labels (e.g. in a CSV of path,label) and search again.</p>"
        f"<div class='grid'>{''.join(tiles)}</div>"
    )


def _picture(path: str) -> np.ndarray | None:
    """A training image as the galleries show it; None where it can no longer be read (moved
    or deleted since the search): the report still shows everything else."""
    try:
        return decode_square(path, SHOWN)
    except DataError:
        return None


def _tile(picture: np.ndarray | None, caption: str, path: str) -> str:
    if picture is None:
        picture = np.full((SHOWN, SHOWN, 3), 235, dtype=np.uint8)
        caption = f"{caption}; cannot read {Path(path).name} now"
    return tile(thumbnail(picture, size=SHOWN), caption, title=path)


def _member_dir(files: StudyFiles, member: dict) -> Path:
    return files.dir / "final" / "members" / str(member["trial"])


def _why_no_heat_maps(files: StudyFiles, member: dict) -> str | None:
    """Why Grad-CAM cannot run with ``member``'s fold models (it needs them and every
    training image, as the cache is keyed on them), or None."""
    from autoclf.search.weights import fold_weights

    member_dir = _member_dir(files, member)
    if not all(fold_weights(member_dir, k).is_file() for k in range(files.n_folds)):
        return "the final members' fold models are not on disk"
    missing = [p for p in files.index.paths if not os.path.isfile(p)]
    if missing:
        return (
            f"{len(missing)} of the {len(files.index)} training images are no longer where "
            f"the search found them (the first: {missing[0]})"
        )
    return None


def _heat_maps(
    files: StudyFiles, member: dict, rows: np.ndarray, classes: np.ndarray
) -> np.ndarray:
    """Grad-CAM of each row's predicted class, by ``member``'s model of its fold, resized to
    the gallery size."""
    import cv2
    import torch

    from autoclf.config import TrainParams
    from autoclf.data.cache import build_cache
    from autoclf.inference import Preprocess
    from autoclf.models import load_trained
    from autoclf.reports.gradcam import grad_cam
    from autoclf.search.weights import fold_weights

    member_dir = _member_dir(files, member)
    params = TrainParams.from_dict(member["params"])
    cache = build_cache(
        files.index.paths, size=files.space.max_image_size, cache_dir=files.dir / "cache"
    )
    device = torch.device("cpu")
    preprocess = Preprocess(params.backbone, size=params.image_size, device=device)
    out = np.zeros((len(rows), SHOWN, SHOWN), dtype=np.float32)
    for fold in np.unique(files.folds[rows]):
        model = load_trained(
            params,
            fold_weights(member_dir, fold),
            num_classes=len(files.index.classes),
            device=device,
        )
        pick = np.flatnonzero(files.folds[rows] == fold)
        heat = grad_cam(
            model, cache.images[rows[pick]], preprocess=preprocess, classes=classes[pick].tolist()
        )
        for k, h in zip(pick, heat, strict=True):
            out[k] = cv2.resize(h, (SHOWN, SHOWN), interpolation=cv2.INTER_LINEAR)
    return out


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.2e}" if value and abs(value) < 0.01 else f"{value:.2f}"
    return "" if value is None else str(value)
