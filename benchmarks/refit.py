"""Retrain each member on every image, or keep its fold models? ``finalize --refit full``
against ``--refit folds`` (the default, and what ``search_quality.py`` finalizes with), on the
studies ``search_quality.py`` left under ``--work``.

Each study is copied into a scratch folder, so the records and the benchmark's own ``final/``
are left as they were, and finalized again with ``--refit full`` and the same other options.
Selection, TTA and the vote are chosen on out-of-fold predictions, which the refit does not
touch, so both runs pick the same members, views and vote, and the fold models are reused:
the only difference is the model each member predicts the test images with (one trained on
all the images for the mean of its folds' kept epochs, or the average of its K fold models).

    python benchmarks/refit.py --work benchmarks/runs/search_quality

For each dataset and method: the mean test score with each refit, the paired difference
(mean ± sd over seeds) and on how many seeds the full refit is ahead, level or behind.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
from search_quality import METHODS, REPO, finalize_config, fmt, quiet

from autoclf.finalize import finalize


def refit_full(record_path: Path, scratch: Path, top_k: int, threads: int) -> dict:
    """Finalize a copy of one benchmark study with ``--refit full``; its record, with the
    test score of both refits."""
    quiet()
    torch.set_num_threads(threads)
    record = json.loads(record_path.read_text())
    study = record_path.parent.name
    shutil.copytree(record_path.parent, scratch / study)
    start = time.perf_counter()
    result = finalize(finalize_config(study, scratch, record["dataset"], top_k=top_k, refit="full"))
    members = [m.trial for m in result.members]
    if members != record["members"]:
        raise SystemExit(f"{study}: members {members}, but --refit folds chose {record['members']}")
    return {
        **record,
        "study": study,
        "test_full": float(result.test.metrics[record["metric"]]),
        "refit_s": time.perf_counter() - start,
    }


def table(rows: list[dict], dataset: str) -> list[str]:
    lines = [
        f"**{dataset}** ({rows[0]['metric']}, mean ± sd over seeds)",
        "",
        "| method | seeds | test, --refit folds | test, --refit full | full − folds "
        "| seeds ahead / level / behind | refit minutes |",
        "|---|---|---|---|---|---|---|",
    ]
    for method in METHODS:
        mine = [r for r in rows if r["method"] == method]
        if not mine:
            continue
        diffs = [r["test_full"] - r["test"] for r in mine]
        ahead = sum(d > 1e-9 for d in diffs)
        behind = sum(d < -1e-9 for d in diffs)
        lines.append(
            f"| {method} | {len(mine)} | {fmt([r['test'] for r in mine])} "
            f"| {fmt([r['test_full'] for r in mine])} | {fmt(diffs)} "
            f"| {ahead} / {len(diffs) - ahead - behind} / {behind} "
            f"| {statistics.fmean(r['refit_s'] for r in mine) / 60:.1f} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--work", type=Path, default=REPO / "benchmarks" / "runs" / "search_quality"
    )
    parser.add_argument("--top-k", type=int, default=3, help="what search_quality.py used")
    parser.add_argument("--jobs", type=int, default=2, help="studies at once, sharing the cores")
    args = parser.parse_args()
    records = sorted(args.work.glob("*/record.json"))
    if not records:
        raise SystemExit(f"no finished runs under {args.work} (run search_quality.py first)")
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch, ProcessPoolExecutor(args.jobs) as pool:
        futures = [
            pool.submit(refit_full, path, Path(scratch), args.top_k, threads) for path in records
        ]
        rows = []
        for future in futures:
            rows.append(row := future.result())
            print(
                f"{row['study']}: test {row['test']:.4f} (folds), {row['test_full']:.4f} (full)",
                flush=True,
            )
    print(f"\n{(time.perf_counter() - start) / 60:.0f} minutes with --jobs {args.jobs}\n")
    for dataset in sorted({r["dataset"] for r in rows}):
        print("\n".join(table([r for r in rows if r["dataset"] == dataset], dataset)))
        print()


if __name__ == "__main__":
    main()
