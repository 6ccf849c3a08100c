"""What autoclf's workers and storage cost per trial, and what a second worker buys.

Trials here do no training: a "no-op" trial only tells the parent it started, as a real
trial does; a "sample" trial also samples the ``tiny`` space's parameters (TPE); a "sleep"
trial is a no-op trial that then sleeps 1 s. Everything else is the real
path of ``autoclf search``: worker processes, the claim lock, the SQLite storage with
heartbeats, stale-trial checks, the TPE sampler, events relayed to the parent, memory
released after each trial.

- overhead per trial: with one worker, the time from one finished trial to the next, less
  the trial's own work (0 s or 1 s);
- throughput: sleep trials finished per second with 2 workers against 1, over the trial
  phase (first trial started → last finished); the whole command, worker start-up
  included, is shown too.

    python benchmarks/orchestration.py            # prints a table; see benchmarks/README.md
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import optuna

from autoclf.config import SearchConfig
from autoclf.search import storage
from autoclf.search.events import TrialFinished, TrialStarted
from autoclf.search.pool import Pool, plan_slots
from autoclf.search.runner import prepare

# Worker processes import this module (by name) to get the trial bodies below.
HERE = Path(__file__).resolve().parent
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))


def noop_trial(objective):
    """Tell the parent the trial started, as a real trial does; sample and train nothing."""

    def trial(t: optuna.Trial) -> float:
        objective.on_event(TrialStarted(t.number, {}, objective.worker, storage.trial_id(t)))
        return 0.0

    return trial


def sample_trial(objective):
    """A no-op trial that also samples its parameters (the tiny space's 8, with TPE)."""
    noop = noop_trial(objective)

    def trial(t: optuna.Trial) -> float:
        objective.space.suggest(t)
        return noop(t)

    return trial


def sleep_trial(objective):
    """A no-op trial that then sleeps 1 s."""
    noop = noop_trial(objective)

    def trial(t: optuna.Trial) -> float:
        noop(t)
        time.sleep(1.0)
        return 0.0

    return trial


def measure(kind: str, *, workers: int, trials: int, studies_dir: str) -> dict[str, float]:
    config = SearchConfig(
        data="digits",
        study=f"{kind}-{workers}w",
        space="tiny",
        folds=2,
        trials=trials,
        studies_dir=studies_dir,
        device="cpu",
        gpus="cpu",
        workers=workers,
    )
    prepared = prepare(config)
    starts: list[float] = []
    finishes: list[float] = []

    def on_event(event) -> None:
        if isinstance(event, TrialStarted):
            starts.append(time.perf_counter())
        elif isinstance(event, TrialFinished):
            finishes.append(time.perf_counter())

    t0 = time.perf_counter()
    pool = Pool(
        plan_slots("cpu", workers),
        log_dir=prepared.study_dir / "logs",
        on_event=on_event,
        objective=f"orchestration:{kind}",
    )
    result = pool.run(prepared)
    total = time.perf_counter() - t0
    assert not result.gave_up and len(finishes) == trials, (result, len(finishes))
    gaps = [b - a for a, b in zip(finishes, finishes[1:], strict=False)]
    return {
        "total": total,
        "startup": starts[0] - t0,
        "phase": finishes[-1] - starts[0],
        "gap_mean": statistics.mean(gaps),
        "gap_median": statistics.median(gaps),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--noop-trials", type=int, default=60)
    parser.add_argument("--sleep-trials", type=int, default=20)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    with tempfile.TemporaryDirectory() as studies_dir:
        runs = {
            kind: measure(kind, workers=1, trials=n, studies_dir=studies_dir)
            for kind, n in (
                ("noop_trial", args.noop_trials),
                ("sample_trial", args.noop_trials),
                ("sleep_trial", args.sleep_trials),
            )
        }
        two = measure("sleep_trial", workers=2, trials=args.sleep_trials, studies_dir=studies_dir)
    one = runs["sleep_trial"]

    print(f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}, optuna {optuna.__version__}")
    print("\noverhead per trial, 1 worker, SQLite (finished → next finished, less the trial)")
    print(f"{'trials':<34}{'n':>4}{'mean ms':>10}{'median ms':>11}")
    rows = (
        ("no-op", "noop_trial", args.noop_trials, 0.0),
        ("no-op + sample 8 params (TPE)", "sample_trial", args.noop_trials, 0.0),
        ("sleep 1 s", "sleep_trial", args.sleep_trials, 1.0),
    )
    for label, kind, n, work in rows:
        r = runs[kind]
        print(
            f"{label:<34}{n:>4}{(r['gap_mean'] - work) * 1e3:>10.1f}"
            f"{(r['gap_median'] - work) * 1e3:>11.1f}"
        )
    print(f"\n{args.sleep_trials} sleep trials (1 s each): 2 workers against 1")
    print(f"{'':<34}{'1 worker':>10}{'2 workers':>11}{'speed-up':>10}")
    for label, key in (("trial phase, s", "phase"), ("whole command, s", "total")):
        print(f"{label:<34}{one[key]:>10.2f}{two[key]:>11.2f}{one[key] / two[key]:>9.2f}x")
    print(f"{'worker start-up, s':<34}{one['startup']:>10.2f}{two['startup']:>11.2f}")


if __name__ == "__main__":
    main()
