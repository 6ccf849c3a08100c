"""Replay finished, unpruned studies through candidate pruners: how the tiny space's pruner
was chosen.

A random-search study without pruning holds every trial's whole learning curve (one value per
fold and epoch). Random sampling does not look at earlier trials, so had a pruner been on, the
same trials would have been sampled, trained and reported alike, up to the step where the pruner
stopped one. Replaying the curves in trial order through Optuna's own pruners
(``study.ask``, ``trial.report``, ``trial.should_prune``) therefore shows exactly what each
pruner would have saved, and whether it would have stopped the trial that turned out best:
seconds of arithmetic instead of hours of training.

    python benchmarks/pruner_replay.py                      # the "random" studies that
                                                            # search_quality.py left under --work
    python benchmarks/pruner_replay.py --trials 20 path/to/study.db:NAME …
    python benchmarks/pruner_replay.py --signal loss    # prune on the validation loss instead

``--signal loss`` replays each epoch's validation loss (the trial's ``val_losses``, which
autoclf records beside the reported scores) in place of its score: what the same pruners would
do if trials reported their loss. The best trial is still judged by its final score.

For each pruner and dataset: the epochs it would have trained as a share of the unpruned ones
(mean over the dataset's studies), and how far below the unpruned study's best the best trial
it lets finish would be (mean and worst). Rows are sorted by the larger of the datasets'
shares; the tiny space's own pruner is marked.
"""

from __future__ import annotations

import argparse
import statistics
import warnings
from pathlib import Path

import optuna

from autoclf.search.space import PRUNERS, load_space

REPO = Path(__file__).resolve().parent.parent

# Pruner sections as a search space writes them.
CANDIDATES: list[dict] = [
    {"name": "median", "n_startup_trials": 3, "n_warmup_steps": 4},  # tiny's first pruner
    *(
        {"name": "percentile", "percentile": pct, "n_startup_trials": s, "n_warmup_steps": w}
        for pct in (25.0, 10.0, 5.0)
        for s in (2, 3, 4)
        for w in (2, 3, 4, 5)
    ),
    *(
        {"name": "successive_halving", "min_resource": r, "reduction_factor": rf}
        for r in (2, 3, 5)
        for rf in (3, 5)
    ),
    *(
        {"name": "hyperband", "min_resource": r, "reduction_factor": rf}
        for r in (2, 3, 5)
        for rf in (2, 3, 4)
    ),
]


def label(spec: dict) -> str:
    """The spec as a search space's ``pruner:`` line."""
    return "`{" + ", ".join(f"{k}: {v}" for k, v in spec.items()) + "}`"


def make(spec: dict) -> optuna.pruners.BasePruner:
    return PRUNERS[spec["name"]](**{k: v for k, v in spec.items() if k != "name"})


def curves(storage: str, name: str) -> tuple[list[optuna.trial.FrozenTrial], int]:
    """The study's complete trials in order, and +1 (maximise) or -1 (minimise)."""
    study = optuna.load_study(study_name=name, storage=storage)
    if study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.PRUNED,)):
        raise SystemExit(f"{name}: has pruned trials; replay needs a study run without pruning")
    trials = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not trials:
        raise SystemExit(f"{name}: no complete trial to replay yet")
    sign = 1 if study.direction == optuna.study.StudyDirection.MAXIMIZE else -1
    return sorted(trials, key=lambda t: t.number), sign


def signal(trial: optuna.trial.FrozenTrial, sign: int, kind: str) -> dict[int, float]:
    """What the trial reported at each step (``score``), or its validation loss turned to the
    study's direction (``loss``: minus the loss when the study maximises)."""
    if kind == "score":
        return dict(trial.intermediate_values)
    losses = trial.user_attrs.get("val_losses")
    if not losses:
        raise SystemExit(f"trial {trial.number} has no val_losses: run by an older autoclf")
    return {int(step): -sign * loss for step, loss in losses.items()}


def replay(
    trials: list[optuna.trial.FrozenTrial],
    sign: int,
    pruner: optuna.pruners.BasePruner,
    kind: str = "score",
) -> tuple[float, float, set[int]]:
    """(epochs trained / epochs unpruned, how far the best trial left to finish falls short of
    the best of all in the metric's units, the numbers of the trials it stops)."""
    # A fixed name: Hyperband puts each trial in a bracket by hashing the study's name with the
    # trial's number, so a random name would give another replay on every call.
    study = optuna.create_study(
        study_name="replay", direction="maximize" if sign > 0 else "minimize", pruner=pruner
    )
    epochs, best, stopped = 0, float("-inf"), set()
    for source in trials:
        trial = study.ask()
        for step, value in sorted(signal(source, sign, kind).items()):
            trial.report(value, step)
            epochs += 1
            if trial.should_prune():
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                stopped.add(source.number)
                break
        else:
            # Pruners compare the finished trials' intermediate values, not their final ones.
            study.tell(trial, source.value)
            best = max(best, sign * source.value)
    lost = max(sign * t.value for t in trials) - best
    return epochs / sum(len(t.intermediate_values) for t in trials), lost, stopped


def rank_correlation(
    trials: list[optuna.trial.FrozenTrial], sign: int, step: int, kind: str = "score"
) -> float:
    """Spearman correlation between each trial's best signal by ``step`` and its final value:
    how well a check at that step could rank the trials."""
    from scipy.stats import spearmanr

    early = [max(sign * v for s, v in signal(t, sign, kind).items() if s <= step) for t in trials]
    return float(spearmanr(early, [sign * t.value for t in trials])[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("studies", nargs="*", help="STORAGE_FILE:STUDY_NAME, or none for --work")
    parser.add_argument(
        "--work", type=Path, default=REPO / "benchmarks" / "runs" / "search_quality"
    )
    parser.add_argument("--trials", type=int, help="replay only each study's first N trials")
    parser.add_argument("--by", default="backbone", help="the parameter to group trials by")
    parser.add_argument("--top", type=int, default=5, help="each study's best trials, by final")
    parser.add_argument(
        "--signal",
        choices=("score", "loss"),
        default="score",
        help="what the replayed trials report each epoch: their score, or their validation loss",
    )
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

    specs = [s.rsplit(":", 1) for s in args.studies] or [
        (str(db), db.parent.name) for db in sorted(args.work.glob("*-random-s*/study.db"))
    ]
    if not specs:
        raise SystemExit(f"no studies given and none under {args.work}/*-random-s*")
    studies = {name: curves(f"sqlite:///{Path(db).resolve()}", name) for db, name in specs}
    if args.trials:
        studies = {name: (trials[: args.trials], sign) for name, (trials, sign) in studies.items()}
    sizes = sorted({len(trials) for trials, _ in studies.values()})
    print(f"{len(studies)} studies ({', '.join(studies)}), {'/'.join(map(str, sizes))} trials\n")
    # One pair of columns per dataset: "digits-random-s0" and "digits-random-s1" are one group.
    groups: dict[str, list[str]] = {}
    for name in studies:
        groups.setdefault(name.split("-random-s")[0], []).append(name)
    print(
        "| pruner | "
        + " | ".join(f"{g}: epochs vs unpruned | {g}: best lost (mean, worst)" for g in groups)
        + " |"
    )
    print("|---|" + "---|---|" * len(groups))
    shipped = load_space("tiny").pruner
    rows, stopped = [], {}
    for spec in CANDIDATES + ([] if shipped in CANDIDATES else [shipped]):
        result = {
            n: replay(trials, sign, make(spec), args.signal)
            for n, (trials, sign) in studies.items()
        }
        if spec == shipped:
            stopped = {n: r[2] for n, r in result.items()}  # whom it stops, for the last table
        cells, worst_ratio = [], 0.0
        for names in groups.values():
            ratio = statistics.fmean(result[n][0] for n in names)
            lost = [result[n][1] for n in names]
            worst_ratio = max(worst_ratio, ratio)
            cells.append(f"{ratio:.2f} | {statistics.fmean(lost):.4f}, {max(lost):.4f}")
        name = label(spec) + (" (**tiny's**)" if spec == shipped else "")
        rows.append((worst_ratio, f"| {name} | " + " | ".join(cells) + " |"))
    for _, line in sorted(rows, key=lambda row: row[0]):
        print(line)

    steps = (2, 3, 4, 5)
    what = "score" if args.signal == "score" else "(lowest) validation loss"
    print(f"\nSpearman correlation of the best {what} by step k with the final score:\n")
    print("| | " + " | ".join(f"k = {k}" for k in steps) + " |")
    print("|---|" + "---|" * len(steps))
    for group, names in groups.items():
        cells = [
            ", ".join(f"{rank_correlation(*studies[n], k, args.signal):.2f}" for n in names)
            for k in steps
        ]
        print(f"| {group} | " + " | ".join(cells) + " |")

    # Whom the shipped pruner stops: grouped by one parameter, the score at its first check
    # against the final one, and how many of each study's best trials it would have stopped.
    first = shipped.get("n_warmup_steps", 0) or 1
    print(
        f"\nBy {args.by}: mean score at step {first} (the first the shipped pruner may stop at) "
        f"and at the end; each study's {args.top} best trials, and how many of them it stops "
        f"(pruning on the {args.signal}):\n"
    )
    print(f"| dataset | {args.by} | trials | step {first} | final | among the best | stopped |")
    print("|---|---|---|---|---|---|---|")
    for group, names in groups.items():
        by_value: dict[object, list[tuple[float, float, bool, bool]]] = {}
        for n in names:
            trials, sign = studies[n]
            top = {t.number for t in sorted(trials, key=lambda t: -sign * t.value)[: args.top]}
            for t in trials:
                early = t.intermediate_values.get(first, float("nan"))
                row = (early, t.value, t.number in top, t.number in stopped[n])
                by_value.setdefault(t.params.get(args.by), []).append(row)
        for value, found in sorted(by_value.items(), key=lambda kv: str(kv[0])):
            top_rows = [r for r in found if r[2]]
            print(
                f"| {group} | {value} | {len(found)} | "
                f"{statistics.fmean(r[0] for r in found):.3f} | "
                f"{statistics.fmean(r[1] for r in found):.3f} | {len(top_rows)} | "
                f"{sum(r[3] for r in top_rows)} |"
            )


if __name__ == "__main__":
    main()
