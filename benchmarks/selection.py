"""Does greedy ensemble selection overfit a small out-of-fold set? ``finalize --select greedy``
(Caruana et al. 2004: the best trial, then whichever addition most improves the OOF score, the
default) against ``--select topk`` (the ``--top-k`` best trials, equally weighted), paired on
the same studies, everything else finalize's default (``--refit folds``, TTA and vote auto).

- **hymenoptera**: the ``cpu``-space studies ``transfer.py`` (c) left under ``--work``
  (245 training photos, scored on the 153 of ``val``). Each study is linked into a scratch
  folder without its ``final/`` and finalized with ``--select topk``; the greedy result is the
  one ``transfer.py`` recorded (``refit_folds`` in ``c-<seed>.json``). A top-5 trial whose fold
  models the search did not keep is trained again, with the search's seeds.
- **digits** (the check that is not hymenoptera ``val``): the README's first search
  (``autoclf search digits --space tiny --trials 6``) on each seed, finalized both ways and
  scored on ``digits-test`` (360 images).

    python benchmarks/selection.py --seeds 2,3,4,5,6,7,8,9,10,11 --digits-seeds 0,1,2,3,4,5

Results are kept in ``--work``/selection-*.json and not run again.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HYMENOPTERA_VAL = ROOT.parent / "shared" / "datasets" / "hymenoptera" / "val"
EXE = str(Path(sys.executable).parent / "autoclf")
BIG = (".pt", ".npy", ".npz", ".bin")  # linked, not copied: finalize replaces, never edits


def _link_or_copy(src: str, dst: str) -> None:
    if src.endswith(BIG):
        os.link(src, dst)
    else:
        shutil.copy2(src, dst)


def finalize(study: str, studies: Path, test: str, select: str) -> dict:
    start = time.perf_counter()
    cmd = [EXE, "finalize", "--study", study, "--studies-dir", str(studies), "--test", test]
    cmd += ["--select", select, "--skip-bad-images"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    summary = json.loads((studies / study / "final" / "summary.json").read_text())
    return {
        "test_accuracy": summary["test"]["accuracy"],
        "rows": summary["test"]["rows"],
        "members": [m["trial"] for m in summary["members"]],
        "oof": summary["oof"]["ensemble"],
        "seconds": time.perf_counter() - start,
    }


def hymenoptera(seed: int, work: Path, scratch: Path) -> dict | None:
    """Seed ``seed``'s (c) study finalized with ``--select topk``, paired with its recorded
    greedy ``--refit folds`` result; None without the study or that result."""
    record = work / f"c-{seed}.json"
    study, source = f"hymenoptera-cpu-{seed}", work / f"studies-{seed}"
    if not record.is_file() or not (source / study / "study.db").is_file():
        return None
    recorded = json.loads(record.read_text())
    if "refit_folds" not in recorded:
        return None
    # The same selection, views and vote as the --refit full run recorded beside it.
    members = [m["trial"] for m in recorded["summary"]["members"]]
    greedy = {**recorded["refit_folds"], "members": members}
    target = scratch / f"hymenoptera-{seed}"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(
        source / study,
        target / study,
        copy_function=_link_or_copy,
        ignore=lambda folder, names: ["final"] if Path(folder) == source / study else [],
    )
    topk = finalize(study, target, str(HYMENOPTERA_VAL), "topk")
    shutil.rmtree(target)
    return {"greedy": greedy, "topk": topk}


def digits(seed: int, scratch: Path) -> dict:
    """The README's first search on ``seed``, finalized with each selection in turn."""
    studies, study = scratch / f"digits-{seed}", f"digits-{seed}"
    shutil.rmtree(studies, ignore_errors=True)
    cmd = [EXE, "search", "digits", "--study", study, "--studies-dir", str(studies)]
    cmd += ["--space", "tiny", "--trials", "6", "--seed", str(seed)]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    result = {}
    for select in ("greedy", "topk"):
        shutil.rmtree(studies / study / "final", ignore_errors=True)
        result[select] = finalize(study, studies, "digits-test", select)
    shutil.rmtree(studies)
    return result


def table(name: str, rows: dict[int, dict]) -> list[str]:
    gains = {s: r["topk"]["test_accuracy"] - r["greedy"]["test_accuracy"] for s, r in rows.items()}
    n = next(iter(rows.values()))["topk"]["rows"]
    lines = [
        f"**{name}** (test accuracy, {n} images; topk − greedy in images)",
        "",
        "| seed | greedy | topk | topk − greedy | greedy members | topk members |",
        "|---|---|---|---|---|---|",
    ]
    for s, r in sorted(rows.items()):
        g, t = r["greedy"], r["topk"]
        lines.append(
            f"| {s} | {g['test_accuracy']:.3f} | {t['test_accuracy']:.3f} | "
            f"{round(gains[s] * n):+d} | {g.get('members', '')} | {t['members']} |"
        )
    images = [round(g * n) for g in gains.values()]
    sd = statistics.stdev(images) if len(images) > 1 else 0.0
    mean = statistics.mean
    lines += [
        "",
        f"greedy {mean(r['greedy']['test_accuracy'] for r in rows.values()):.3f}, "
        f"topk {mean(r['topk']['test_accuracy'] for r in rows.values()):.3f}; "
        f"topk − greedy {mean(images):+.1f} images (sd {sd:.1f}) over {len(images)} seeds: "
        f"ahead {sum(i > 0 for i in images)}, level {sum(i == 0 for i in images)}, "
        f"behind {sum(i < 0 for i in images)}",
        "",
    ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "runs" / "transfer")
    parser.add_argument("--scratch", type=Path, default=ROOT / "benchmarks" / "runs" / "select")
    parser.add_argument("--seeds", default="2,3,4,5,6,7,8,9,10,11")
    parser.add_argument("--digits-seeds", default="0,1,2,3,4,5")
    args = parser.parse_args()
    args.scratch.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[int, dict]] = {"hymenoptera": {}, "digits": {}}
    for name, seeds in (("hymenoptera", args.seeds), ("digits", args.digits_seeds)):
        for seed in [int(s) for s in seeds.split(",") if s]:
            path = args.work / f"selection-{name}-{seed}.json"
            if path.is_file():
                results[name][seed] = json.loads(path.read_text())
                continue
            if name == "hymenoptera":
                result = hymenoptera(seed, args.work, args.scratch)
            else:
                result = digits(seed, args.scratch)
            if result is None:
                continue
            path.write_text(json.dumps(result, indent=1))
            results[name][seed] = result
            print(
                f"{name} seed {seed}: greedy {result['greedy']['test_accuracy']:.3f}, "
                f"topk {result['topk']['test_accuracy']:.3f}",
                flush=True,
            )
    for name, rows in results.items():
        if rows:
            print("\n".join(table(name, rows)))


if __name__ == "__main__":
    main()
