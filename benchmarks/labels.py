"""Does ``autoclf labels`` find wrong labels? digits with a share of its training labels flipped
to another class at random (seeded), searched, finalized, then checked: of the images it lists,
how many were flipped (precision), and of the flipped, how many it lists (recall).

    python benchmarks/labels.py [--configs test,tiny] [--seeds 0,1,2] [--flip 0.05]

Configurations:
- ``test``: what ``tests/test_labels.py`` runs, so its floors can be read off this table: two
  enqueued trials of timm's test models (2 epochs, 16 px, 2 folds), finalized with the two.
- ``tiny``: the README's first command on this data: ``--space tiny --trials 6`` (5 folds),
  finalized with the defaults (`--refit folds`; the OOF predictions, all the check reads,
  do not depend on the refit).
Each seed flips other images and seeds the search differently.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests.studies: the test's own search, run here too

from tests.studies import SPACE, finalize_study, flipped_digits, search_digits  # noqa: E402

TEST_TRIALS = [
    {"backbone": "test_efficientnet", "lr": 0.01},
    {"backbone": "test_resnet", "lr": 0.01},
]


def run(config: str, seed: int, flip: float, root: Path) -> dict:
    from autoclf.config import SearchConfig
    from autoclf.labels import find_label_issues
    from autoclf.search.runner import prepare
    from autoclf.search.runner import run as run_search
    from autoclf.study import open_study_dir

    started = time.perf_counter()
    data, flipped = flipped_digits(root, fraction=flip, seed=seed)
    studies = root / "studies"
    if config == "test":
        search_digits(root, SPACE, TEST_TRIALS, data=str(data), seed=seed)
        finalize_study(studies, top_k=2, select="topk", refit="folds", device="cpu")
    elif config == "tiny":
        search = SearchConfig(
            data=str(data), study="s", space="tiny", trials=6, seed=seed, studies_dir=str(studies)
        )
        run_search(prepare(search))
        finalize_study(studies, refit="folds", device="cpu")
    else:
        raise SystemExit(f"unknown configuration {config!r}")
    found = {i.path for i in find_label_issues(open_study_dir(studies, "s")).issues}
    hits = len(found & flipped)
    return {
        "listed": len(found),
        "flipped": len(flipped),
        "precision": hits / len(found) if found else 0.0,
        "recall": hits / len(flipped),
        "seconds": time.perf_counter() - started,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="test,tiny")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--flip", type=float, default=0.05, help="share of labels flipped")
    args = parser.parse_args()
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    seeds = [int(s) for s in args.seeds.split(",")]
    print("| config | seed | flipped | listed | precision | recall | s |")
    print("|---|---|---|---|---|---|---|")
    for config in args.configs.split(","):
        results = []
        for seed in seeds:
            with tempfile.TemporaryDirectory() as tmp:
                r = run(config, seed, args.flip, Path(tmp))
            results.append(r)
            print(
                f"| {config} | {seed} | {r['flipped']} | {r['listed']} | {r['precision']:.3f} "
                f"| {r['recall']:.3f} | {r['seconds']:.0f} |",
                flush=True,
            )
        for key in ("precision", "recall"):
            values = [r[key] for r in results]
            print(
                f"| {config} | mean {key} | | | {statistics.mean(values):.3f} "
                f"(min {min(values):.3f}, max {max(values):.3f}) | | |",
                flush=True,
            )


if __name__ == "__main__":
    main()
