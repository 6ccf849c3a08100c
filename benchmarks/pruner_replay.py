"""Replay finished, unpruned studies through candidate pruners: how the tiny space's pruner
was chosen.

A random-search study without pruning holds every trial's whole learning curve (one value per
fold and epoch). Random sampling does not look at earlier trials, so had a pruner been on, the
same trials would have been sampled, trained and reported alike, up to the step where the pruner
stopped one. Replaying the curves in trial order through Optuna's own pruners
(``study.ask``, ``trial.report``, ``trial.should_prune``) therefore shows exactly what each
pruner would have saved, and whether it would have stopped the trial that turned out best:
minutes of arithmetic instead of hours of training.

    python benchmarks/pruner_replay.py                      # the "random" studies that
                                                            # search_quality.py left under --work
    python benchmarks/pruner_replay.py --trials 20 path/to/study.db:NAME …

For each pruner: the epochs it would have trained as a share of the unpruned ones (mean and
worst over studies), and how far below the unpruned study's best the best trial it lets finish
would be (mean and worst). The shipped pruner is the cheapest that lost nothing on any study.
"""

from __future__ import annotations

import argparse
import statistics
import warnings
from collections.abc import Callable
from pathlib import Path

import optuna

REPO = Path(__file__).resolve().parent.parent
P = optuna.pruners

CANDIDATES: dict[str, Callable[[], optuna.pruners.BasePruner]] = {
    "median, 3 startup, warmup 4 (before)": lambda: P.MedianPruner(3, 4),
    "median, 3 startup, warmup 2": lambda: P.MedianPruner(3, 2),
    "median, 2 startup, warmup 1": lambda: P.MedianPruner(2, 1),
    **{
        f"percentile {pct}, {s} startup, warmup {w}": (
            lambda pct=pct, s=s, w=w: P.PercentilePruner(pct, n_startup_trials=s, n_warmup_steps=w)
        )
        for pct in (50, 33, 25)
        for s in (2, 3)
        for w in (1, 2, 3)
    },
    **{
        f"successive halving, min {r}, factor {rf}": (
            lambda r=r, rf=rf: P.SuccessiveHalvingPruner(min_resource=r, reduction_factor=rf)
        )
        for r in (1, 2, 3)
        for rf in (3, 4)
    },
    "hyperband, min 1, factor 3": lambda: P.HyperbandPruner(min_resource=1, reduction_factor=3),
    "wilcoxon, p 0.1": lambda: P.WilcoxonPruner(p_threshold=0.1, n_startup_steps=2),
}


def curves(storage: str, name: str) -> tuple[list[optuna.trial.FrozenTrial], int]:
    """The study's complete trials in order, and +1 (maximise) or -1 (minimise)."""
    study = optuna.load_study(study_name=name, storage=storage)
    if study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.PRUNED,)):
        raise SystemExit(f"{name}: has pruned trials; replay needs a study run without pruning")
    trials = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    sign = 1 if study.direction == optuna.study.StudyDirection.MAXIMIZE else -1
    return sorted(trials, key=lambda t: t.number), sign


def replay(
    trials: list[optuna.trial.FrozenTrial], sign: int, pruner: optuna.pruners.BasePruner
) -> tuple[float, float]:
    """(epochs trained / epochs unpruned, how far the best trial left to finish falls short of
    the best of all, in the metric's units)."""
    study = optuna.create_study(direction="maximize" if sign > 0 else "minimize", pruner=pruner)
    epochs, best = 0, float("-inf")
    for source in trials:
        trial = study.ask()
        for step, value in sorted(source.intermediate_values.items()):
            trial.report(value, step)
            epochs += 1
            if trial.should_prune():
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                break
        else:
            study.tell(trial, source.value)
            best = max(best, sign * source.value)
    lost = max(sign * t.value for t in trials) - best
    return epochs / sum(len(t.intermediate_values) for t in trials), lost


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("studies", nargs="*", help="STORAGE_FILE:STUDY_NAME, or none for --work")
    parser.add_argument(
        "--work", type=Path, default=REPO / "benchmarks" / "runs" / "search_quality"
    )
    parser.add_argument("--trials", type=int, help="replay only each study's first N trials")
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
    print("| pruner | epochs vs unpruned (mean, worst) | best lost (mean, worst) |")
    print("|---|---|---|")
    rows = []
    for label, make in CANDIDATES.items():
        ratios, lost = [], []
        for trials, sign in studies.values():
            ratio, short = replay(trials, sign, make())
            ratios.append(ratio)
            lost.append(short)
        rows.append(
            (statistics.fmean(ratios), max(ratios), statistics.fmean(lost), max(lost), label)
        )
    for ratio, worst_ratio, lost, worst_lost, label in sorted(rows):
        print(f"| {label} | {ratio:.2f}, {worst_ratio:.2f} | {lost:.4f}, {worst_lost:.4f} |")


if __name__ == "__main__":
    main()
