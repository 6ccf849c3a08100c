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

For each pruner: the epochs it would have trained as a share of the unpruned ones (mean and
worst over studies), and how far below the unpruned study's best the best trial it lets finish
would be (mean and worst). The tiny space's own pruner is marked.
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
        for pct in (25.0, 20.0, 15.0, 10.0)
        for s in (2, 3)
        for w in (3, 4, 5, 6)
    ),
    *(
        {"name": "successive_halving", "min_resource": r, "reduction_factor": rf}
        for r in (3, 4, 5, 6)
        for rf in (3, 4)
    ),
    *({"name": "hyperband", "min_resource": r, "reduction_factor": 3} for r in (3, 5)),
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
    shipped = load_space("tiny").pruner
    rows = []
    for spec in CANDIDATES:
        ratios, lost = [], []
        for trials, sign in studies.values():
            ratio, short = replay(trials, sign, make(spec))
            ratios.append(ratio)
            lost.append(short)
        name = label(spec) + (" (**tiny's**)" if spec == shipped else "")
        rows.append(
            (statistics.fmean(ratios), max(ratios), statistics.fmean(lost), max(lost), name)
        )
    for ratio, worst_ratio, lost, worst_lost, name in sorted(rows):
        print(f"| {name} | {ratio:.2f}, {worst_ratio:.2f} | {lost:.4f}, {worst_lost:.4f} |")


if __name__ == "__main__":
    main()
