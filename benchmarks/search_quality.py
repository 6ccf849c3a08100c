"""Does the search pay? autoclf's defaults against random search and a fixed recipe.

For each dataset and seed, four ways to spend the compute, each followed by
``autoclf finalize`` with the same options and scored on held-out test images:

- **random**: the ``tiny`` space, random sampling, no pruning;
- **defaults**: the ``tiny`` space exactly as shipped (its TPE sampler and its pruner);
- **random+pruner**: random sampling with the shipped pruner;
- **fixed recipe**: one sensible configuration (the middle of the space, the most common
  choices), no search: trained for as many epochs as the defaults spent on the same seed.

Two ways to size the budget (``--budget``):

- ``trials``: the three searches run the same number of trials, so "epochs vs random" is the
  share of the compute pruning left;
- ``epochs``: the same epochs for all four. Random search runs ``--trials`` trials unpruned;
  the defaults and random search with the pruner run ``autoclf search --epoch-budget`` with
  what that spends (trials × folds × epochs), so they run more, shorter trials. The first
  ``--trials`` trials of random search with the pruner are random search's trials (the same
  seed draws the same parameters), so the pruning figures still compare the same trials.

The issue's pruning target is at most 0.35 of the epochs, at a best CV score within one
standard deviation (over seeds) of random search without pruning. Each row also has the
finalized model's out-of-fold score ("final OOF": every training image, so less noisy than
the test score). Under each table: random search's expected best CV if only as many of its
trials had finished as the defaults finished (best CV is a best over finished trials, so it
grows with their number). Every run goes through autoclf's own code (``prepare``, ``run``,
``finalize``) on the CPU; ``--jobs`` runs at once, each in its own process with an equal
share of the cores, the longest first.

    python benchmarks/search_quality.py            # the tables in benchmarks/README.md
    python benchmarks/search_quality.py --budget epochs
    python benchmarks/search_quality.py --datasets digits --seeds 0 --trials 4   # a look
    python benchmarks/search_quality.py --methods random   # only the unpruned studies, which
                                                           # pruner_replay.py replays

Finished runs are kept under ``--work`` (one ``record.json`` each) and not run again, so an
interrupted benchmark goes on where it stopped, each unfinished run from its start (as it
would have run uninterrupted); ``--fresh`` starts over. A record keeps the space it ran, the
last commit that changed the code, and the versions of the packages that can move its numbers:
a run whose space has changed since is run again, and a table whose records come from several
commits or package versions names them under it. ``benchmarks/constraints.txt`` pins the
versions the tables in ``benchmarks/results/search_quality.md`` ("The table now") were
measured with (``pip install -e '.[dev]' -c benchmarks/constraints.txt``); the script names
the versions its records had that differ.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import multiprocessing
import os
import shutil
import statistics
import subprocess
import time
import warnings
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path

import optuna
import torch
import yaml

from autoclf import atomic
from autoclf.config import FinalizeConfig, SearchConfig
from autoclf.finalize import finalize
from autoclf.metrics import get_metric
from autoclf.search.budget import epochs_trained
from autoclf.search.runner import prepare, run
from autoclf.search.space import load_space, resolve_space_path
from autoclf.search.worker import die_with_parent

REPO = Path(__file__).resolve().parent.parent
HYMENOPTERA = REPO.parent / "shared" / "datasets" / "hymenoptera"
DATASETS = {  # name → (search data, test data)
    "digits": ("digits", "digits-test"),
    "hymenoptera": (str(HYMENOPTERA / "train"), str(HYMENOPTERA / "val")),
}
METHODS = ("random", "defaults", "random+pruner", "fixed recipe")  # the order they run in
# The fixed recipe: the centre of the tiny space (geometric for log ranges), the most common
# choices for the categorical ones, and the tiny space's fixed settings. Chosen before any
# run, not tuned on these results: it stands for "skip the search, train one good model".
RECIPE = {
    "backbone": "test_resnet",
    "optimizer": "adamw",
    "lr": 3.0e-3,
    "weight_decay": 1.0e-4,
    "batch_size": 64,
    "dropout": 0.1,
    "aug_strength": 0.3,
    "hflip": True,  # what every ImageNet recipe does; the search may find it hurts
    "scheduler": "cosine",
    "patience": 0,  # it trains for its whole budget
}


def method_space(method: str, base: dict, *, recipe_epochs: int | None = None) -> dict:
    """The search space document one method runs: the shipped space, changed where the
    method differs."""
    doc = copy.deepcopy(base)
    if method == "random":
        doc["sampler"], doc["pruner"] = {"name": "random"}, {"name": "none"}
    elif method == "random+pruner":
        doc["sampler"] = {"name": "random"}
    elif method == "fixed recipe":
        doc["params"].update(RECIPE, epochs=recipe_epochs)
        doc["sampler"], doc["pruner"] = {"name": "random"}, {"name": "none"}
    return doc


def run_one(
    work: Path,
    dataset: str,
    method: str,
    seed: int,
    *,
    base: dict,
    trials: int,
    folds: int,
    top_k: int,
    recipe_epochs: int | None = None,
    epoch_budget: int | None = None,
) -> dict:
    """Search, finalize and test one (dataset, method, seed); the record is kept in
    ``work/<study>/record.json`` and read back instead of running again.

    With ``epoch_budget`` the defaults and random search with the pruner search until that
    many epochs, however many trials that takes (random search's ``trials`` are the budget;
    the recipe's ``recipe_epochs`` come from the defaults)."""
    if method == "random":
        epoch_budget = None  # the same study in both kinds of budget
    study = study_name(dataset, method, seed, epoch_budget)
    doc = method_space(method, base, recipe_epochs=recipe_epochs)
    record_path = work / study / "record.json"
    if record_path.is_file():
        record = json.loads(record_path.read_text())
        # Records written before they kept their space are trusted; a changed space is not.
        if record.get("space", doc) == doc:
            return record
    # A run stopped before its record starts over: resuming its study would retry the stopped
    # trial under another number (so another training seed) and count its epochs twice.
    shutil.rmtree(work / study, ignore_errors=True)
    data = DATASETS[dataset][0]
    recipe = method == "fixed recipe"
    space_path = work / f"{study}.yaml"
    atomic.write_text(space_path, yaml.safe_dump(doc, sort_keys=False))
    config = SearchConfig(
        data=data,
        study=study,
        space=str(space_path),
        folds=folds,
        seed=seed,
        # Each trial trains at least one epoch, so a trial count of epoch_budget never binds.
        trials=1 if recipe else (epoch_budget or trials),
        epoch_budget=None if recipe else epoch_budget,
        studies_dir=str(work),
        device="cpu",
        gpus="cpu",
        skip_bad_images=True,  # hymenoptera's train folder holds a GIF placeholder
    )
    start = time.perf_counter()
    prepared = prepare(config)
    study_obj = run(prepared)
    search_s = time.perf_counter() - start
    finished = [t for t in study_obj.get_trials(deepcopy=False) if t.state.is_finished()]
    # The first `trials` trials: with random sampling they are random search's trials, pruned
    # or not, so pruning is measured on the same trials whatever the budget.
    first = [t for t in finished if t.number < trials]
    first_complete = [t.value for t in first if t.state == optuna.trial.TrialState.COMPLETE]
    better = max if study_obj.direction == optuna.study.StudyDirection.MAXIMIZE else min
    start = time.perf_counter()
    result = finalize(finalize_config(study, work, dataset, top_k=top_k))
    record = {
        "dataset": dataset,
        "method": method,
        "seed": seed,
        "metric": prepared.metric.name,
        "trials": len(finished),
        "pruned": sum(t.state == optuna.trial.TrialState.PRUNED for t in finished),
        "epochs": epochs_trained(finished),
        "epoch_budget": epoch_budget,
        "first": {
            "trials": len(first),
            "epochs": epochs_trained(first),
            "best_cv": float(better(first_complete)) if first_complete else None,
        },
        "best_cv": float(study_obj.best_value),
        "best_params": study_obj.best_trial.user_attrs["config"],
        "final_oof": float(result.oof_score),
        "test": float(result.test.metrics[prepared.metric.name]),
        "members": [m.trial for m in result.members],
        "search_s": round(search_s, 1),
        "finalize_s": round(time.perf_counter() - start, 1),
        "space": doc,
        "code": code_version(),
        "packages": packages(),
    }
    atomic.write_json(record_path, record)
    return record


def study_name(dataset: str, method: str, seed: int, epoch_budget: int | None) -> str:
    name = method.replace(" ", "-").replace("+", "-")
    return f"{dataset}-{name}{f'-e{epoch_budget}' if epoch_budget else ''}-s{seed}"


def complete_values(work: Path, record: dict) -> list[float]:
    """The final values of a record's complete trials, from its study."""
    study = study_name(
        record["dataset"], record["method"], record["seed"], record.get("epoch_budget")
    )
    storage = f"sqlite:///{(work / study / 'study.db').resolve()}"
    trials = optuna.load_study(study_name=study, storage=storage).get_trials(
        deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)
    )
    return [t.value for t in trials]


def expected_best(values: list[float], k: int, sign: int) -> float:
    """The expected best of ``k`` of ``values`` drawn at random without replacement: the i-th
    worst is the best of the draw when the other k - 1 come from the i - 1 below it."""
    ordered = sorted(values, key=lambda v: sign * v)
    k = min(k, len(ordered))
    return sum(v * math.comb(i, k - 1) for i, v in enumerate(ordered)) / math.comb(len(ordered), k)


def finalize_config(
    study: str, studies_dir: Path, dataset: str, *, top_k: int, refit: str = "folds"
) -> FinalizeConfig:
    """The finalize every method gets: the same options for all, scored on the dataset's test
    images; ``--refit folds`` by default (the members' fold models, which the search kept:
    no training on all the data)."""
    return FinalizeConfig(
        study=study,
        studies_dir=str(studies_dir),
        top_k=top_k,
        test=DATASETS[dataset][1],
        device="cpu",
        refit=refit,
    )


# What a run's numbers depend on: a commit that touches only tests or documentation does not
# make a new version of the code.
CODE = ("autoclf", "benchmarks/*.py", "search_spaces", "pyproject.toml")


def code_version() -> str:
    """The last commit that changed the run's code, "+changes" when the checkout's code differs
    from it; "unknown" outside a git checkout."""
    try:
        commit = git("log", "-1", "--format=%h", "--abbrev=12", "--", *CODE)
        changed = git("status", "--porcelain", "--", *CODE)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+changes" if changed else "")


# The packages whose versions can move a run's numbers (a model's init, an augmentation's
# random draws, a sampler's proposals) without any change to autoclf.
PACKAGES = ("torch", "timm", "albumentations", "optuna", "numpy", "opencv-python-headless")


# The versions the tables in benchmarks/results/search_quality.md were measured with.
CONSTRAINTS = REPO / "benchmarks" / "constraints.txt"


def packages() -> str:
    """The versions of PACKAGES installed, as one string: "torch 2.14.1, timm 1.0.31, …"."""
    from importlib.metadata import PackageNotFoundError, version

    def installed(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "absent"

    return ", ".join(f"{name} {installed(name)}" for name in PACKAGES)


def unpinned(records: list[dict]) -> list[str]:
    """The versions in ``records`` that are not CONSTRAINTS' ones, as "optuna 5.1.0 (5.0.0)"."""
    pins = {}
    for line in CONSTRAINTS.read_text().splitlines():
        if line := line.split("#")[0].strip():
            name, version = line.split("==")
            pins[name] = version
    differ = set()
    for record in records:
        for entry in record.get("packages", "").split(", "):
            name, _, have = entry.partition(" ")
            if name in pins and have.split("+")[0] != pins[name]:  # "2.14.1+cu130" is 2.14.1
                differ.add(f"{name} {have} ({pins[name]})")
    return sorted(differ)


def git(*argv: str) -> str:
    return subprocess.run(
        ["git", "-C", str(REPO), *argv], capture_output=True, text=True, check=True
    ).stdout.strip()


def mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def fmt(values: list[float], digits: int = 4) -> str:
    mean, sd = mean_sd(values)
    return f"{mean:.{digits}f} ± {sd:.{digits}f}"


def table(records: list[dict], dataset: str, work: Path) -> list[str]:
    """The markdown table of one dataset, then what it says against the issue's targets, and
    what random search's best CV would be with as few finished trials as the defaults had."""
    by_method = {
        m: [r for r in records if r["dataset"] == dataset and r["method"] == m] for m in METHODS
    }
    random_epochs = {r["seed"]: r["epochs"] for r in by_method["random"]}
    metric = by_method["defaults"][0]["metric"]
    budget = by_method["defaults"][0].get("epoch_budget")
    spend = f"the same {budget} epochs" if budget else f"{by_method['random'][0]['trials']} trials"
    lines = [
        f"**{dataset}** ({len(by_method['defaults'])} seeds, {metric}, {spend} each; mean ± sd "
        "over seeds)",
        "",
        "| method | trials (pruned) | epochs | epochs vs random | best CV | final OOF | test "
        "| minutes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for method, rows in by_method.items():
        ratio = [r["epochs"] / random_epochs[r["seed"]] for r in rows]
        minutes = statistics.fmean((r["search_s"] + r["finalize_s"]) / 60 for r in rows)
        lines.append(
            f"| {method} | {statistics.fmean(r['trials'] for r in rows):.0f} "
            f"({statistics.fmean(r['pruned'] for r in rows):.1f}) "
            f"| {statistics.fmean(r['epochs'] for r in rows):.0f} | {fmt(ratio, 2)} "
            f"| {fmt([r['best_cv'] for r in rows])} | {fmt([r['final_oof'] for r in rows])} "
            f"| {fmt([r['test'] for r in rows])} "
            f"| {minutes:.1f} |"
        )
    sign = 1 if get_metric(metric).direction == "maximize" else -1
    cv = {m: mean_sd([r["best_cv"] for r in rows]) for m, rows in by_method.items()}
    test = {m: mean_sd([r["test"] for r in rows]) for m, rows in by_method.items()}
    others = [m for m in METHODS if m != "defaults"]
    # Pruning on the same trials: random search's, and random search with the pruner's first
    # as many (all of them under a trial budget).
    same = {r["seed"]: same_trials(r) for r in by_method["random+pruner"]}
    pruned_ratio = statistics.fmean(epochs / random_epochs[s] for s, (epochs, _) in same.items())
    pruned_cv = statistics.fmean(cv for _, cv in same.values())
    lines += [
        "",
        "- defaults ≥ every alternative on mean best CV: "
        + yes(all(sign * cv["defaults"][0] >= sign * cv[m][0] for m in others)),
        "- defaults ≥ every alternative on mean test score: "
        + yes(all(sign * test["defaults"][0] >= sign * test[m][0] for m in others)),
        f"- random+pruner epochs / random epochs, on random's {by_method['random'][0]['trials']} "
        f"trials: {pruned_ratio:.2f} (target ≤ 0.35): " + yes(pruned_ratio <= 0.35),
        f"- random+pruner best CV on those trials within one sd of random's "
        f"({pruned_cv:.4f} against {cv['random'][0]:.4f} ± {cv['random'][1]:.4f}): "
        + yes(abs(pruned_cv - cv["random"][0]) <= cv["random"][1]),
        as_few_finished(by_method, sign, work, random_cv=cv["random"][0], cv=cv["defaults"][0]),
        "",
        *paired(by_method, sign),
    ]
    # Finished runs are reused by name, so one --work can hold records of several versions of
    # the code or of the packages; a rerun from an empty --work may then differ by a few images.
    for what, key in (("the code", "code"), ("the packages", "packages")):
        versions = sorted({r.get(key, "unrecorded") for rows in by_method.values() for r in rows})
        if len(versions) > 1:
            lines += [
                "",
                f"Records from {len(versions)} versions of {what}: {'; '.join(versions)}.",
            ]
    return lines


def as_few_finished(
    by_method: dict[str, list[dict]], sign: int, work: Path, *, random_cv: float, cv: float
) -> str:
    """Best CV is the best of the finished trials, and more finished trials give a higher best
    from the same spread of scores. Random search's expected best from as many of its finished
    trials, drawn at random, as the defaults finished on the same seed separates the two.
    ``random_cv`` and ``cv`` are random search's and the defaults' mean best CV."""
    unpruned = {r["seed"]: complete_values(work, r) for r in by_method["random"]}
    finished = {r["seed"]: len(complete_values(work, r)) for r in by_method["defaults"]}
    best_of_as_many = [expected_best(unpruned[seed], k, sign) for seed, k in finished.items()]
    return (
        f"- the defaults finish {statistics.fmean(finished.values()):.1f} trials; random "
        f"search's best CV from as many of its finished trials, drawn at random: "
        f"{statistics.fmean(best_of_as_many):.4f} (from all of them {random_cv:.4f}; "
        f"the defaults {cv:.4f})"
    )


def paired(by_method: dict[str, list[dict]], sign: int) -> list[str]:
    """The defaults against each alternative seed by seed (same folds, same test images): the
    mean and sd of the differences, and on how many seeds the defaults are ahead, level or
    behind. A mean difference under about 2 sd / √seeds is one that other seeds could turn
    around."""
    lines = [
        "| defaults − | best CV | seeds ahead / level / behind | test "
        "| seeds ahead / level / behind |",
        "|---|---|---|---|---|",
    ]
    defaults = {r["seed"]: r for r in by_method["defaults"]}
    for method in (m for m in METHODS if m != "defaults"):
        cells = []
        for key in ("best_cv", "test"):
            diffs = [sign * (defaults[r["seed"]][key] - r[key]) for r in by_method[method]]
            ahead = sum(d > 1e-9 for d in diffs)
            behind = sum(d < -1e-9 for d in diffs)
            cells += [fmt(diffs), f"{ahead} / {len(diffs) - ahead - behind} / {behind}"]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return lines


def same_trials(record: dict) -> tuple[int, float]:
    """(epochs, best CV) of a record's first trials, as many as random search ran; records
    written before the epoch budget existed ran only those."""
    first = record.get("first")
    if first is None:
        return record["epochs"], record["best_cv"]
    return first["epochs"], first["best_cv"]


def yes(ok: bool) -> str:
    return "**yes**" if ok else "**no**"


def run_task(
    dataset: str, seed: int, method: str, args: argparse.Namespace, base: dict, budget: int | None
) -> dict:
    """One (dataset, seed, method) in a pool process, on its share of the cores. ``budget``
    is the recipe's epochs per fold (None for the searches)."""
    quiet()
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // args.jobs))
    return run_one(
        args.work,
        dataset,
        method,
        seed,
        base=base,
        trials=args.trials,
        folds=args.folds,
        top_k=args.top_k,
        recipe_epochs=budget,
        epoch_budget=args.epoch_budget,
    )


def run_all(args: argparse.Namespace, base: dict) -> list[dict]:
    """Every (dataset, seed, method), ``args.jobs`` at a time, the longest first: digits before
    hymenoptera, unpruned searches before pruned ones, and each fixed recipe (sized by the
    defaults' epochs) as soon as its defaults have finished."""
    # (dataset, seed, method, the recipe's epochs per fold or None)
    queue: list[tuple[str, int, str, int | None]] = [
        (d, s, m, None)
        for d in args.datasets
        for m in METHODS
        if m in args.methods and m != "fixed recipe"
        for s in args.seeds
    ]
    records = []
    with ProcessPoolExecutor(
        args.jobs,
        mp_context=multiprocessing.get_context("spawn"),
        # A run left behind by a killed benchmark would write into the studies of the next.
        initializer=die_with_parent,
        initargs=(os.getpid(),),
    ) as pool:
        running: dict[Future, tuple[str, int, str]] = {}
        while queue or running:
            while queue and len(running) < args.jobs:
                d, s, m, budget = queue.pop(0)
                running[pool.submit(run_task, d, s, m, args, base, budget)] = (d, s, m)
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                dataset, seed, method = running.pop(future)
                records.append(record := future.result())
                print(
                    f"{dataset} seed {seed} {method}: best CV {record['best_cv']:.4f}, "
                    f"test {record['test']:.4f}, {record['epochs']} epochs, "
                    f"{record['search_s'] + record['finalize_s']:.0f} s",
                    flush=True,
                )
                if method == "defaults" and "fixed recipe" in args.methods:
                    budget = max(1, round(record["epochs"] / args.folds))
                    queue.insert(0, (dataset, seed, "fixed recipe", budget))
    return records


def quiet() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", choices=sorted(DATASETS), default=sorted(DATASETS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument(
        "--methods",
        nargs="+",
        choices=METHODS,
        default=list(METHODS),
        help="run only these (the fixed recipe needs the defaults' epochs)",
    )
    parser.add_argument(
        "--budget",
        choices=("trials", "epochs"),
        default="trials",
        help="trials: every search runs --trials trials; epochs: every method trains as many "
        "epochs as random search's --trials unpruned trials",
    )
    parser.add_argument(
        "--trials", type=int, default=20, help="trials per search (random search's, by epochs)"
    )
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--top-k", type=int, default=3, help="finalize --top-k, for every method")
    parser.add_argument("--space", default="tiny", help="the space whose defaults are measured")
    parser.add_argument(
        "--jobs", type=int, default=2, help="runs at once, sharing the cores equally"
    )
    parser.add_argument(
        "--work", type=Path, default=REPO / "benchmarks" / "runs" / "search_quality"
    )
    parser.add_argument("--fresh", action="store_true", help="forget earlier runs under --work")
    args = parser.parse_args()
    if "fixed recipe" in args.methods and "defaults" not in args.methods:
        parser.error("the fixed recipe's budget is what the defaults spent: add --methods defaults")

    if args.fresh:
        shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True, exist_ok=True)
    base = yaml.safe_load(resolve_space_path(args.space).read_text())
    # What random search spends: its trials, unpruned, train every epoch of every fold.
    random_epochs = args.trials * args.folds * load_space(args.space).max_epochs
    args.epoch_budget = random_epochs if args.budget == "epochs" else None
    start = time.perf_counter()
    records = run_all(args, base)
    print(f"\n{(time.perf_counter() - start) / 60:.0f} minutes with --jobs {args.jobs}\n")
    if set(args.methods) < set(METHODS):
        return  # the table compares all four
    for dataset in args.datasets:
        print("\n".join(table(records, dataset, args.work)))
        print()
    if differ := unpinned(records):
        print(
            "These runs had other versions than benchmarks/constraints.txt (in brackets), with "
            f"which the pinned tables were measured: {', '.join(differ)}. Their numbers can "
            "differ by a few images."
        )


if __name__ == "__main__":
    main()
