"""Small real studies for the tests that need one: a 2-fold digits search of tiny timm models."""

from __future__ import annotations

from pathlib import Path

SPACE = """
params:
  backbone: {type: categorical, choices: [test_efficientnet, test_resnet]}
  lr: {type: categorical, choices: [0.01, 0.005]}
  batch_size: 64
  epochs: 2
  image_size: 16
  aug_strength: 0.1
pruner: {name: none}
"""


def search_digits(
    root: Path, space: str, trials: list[dict], *, data: str = "digits", seed: int = 0
):
    """A finished 2-fold search of ``data`` under ``root/studies`` (study ``s``), running
    exactly ``trials``."""
    from autoclf.config import SearchConfig
    from autoclf.search.runner import prepare, run

    (root / "space.yaml").write_text(space)
    config = SearchConfig(
        data=data,
        study="s",
        space=str(root / "space.yaml"),
        folds=2,
        trials=len(trials),
        seed=seed,
        studies_dir=str(root / "studies"),
    )
    prepared = prepare(config)
    for params in trials:
        prepared.study.enqueue_trial(params)
    return run(prepared)


def finalize_study(studies: Path, **options):
    from autoclf.config import FinalizeConfig
    from autoclf.finalize import finalize

    return finalize(FinalizeConfig(study="s", studies_dir=str(studies), **options))


def flipped_digits(root: Path, *, fraction: float, seed: int) -> tuple[Path, set[str]]:
    """digits' training images as a CSV (path,label) in ``root`` with ``fraction`` of the
    labels flipped to another class at random (``seed``); returns it and the flipped paths."""
    import csv

    import numpy as np

    from autoclf.data.index import materialize_digits

    train = materialize_digits(root / "studies" / "_datasets") / "train"
    rows = sorted((str(p.resolve()), p.parent.name) for p in train.rglob("*.png"))
    classes = sorted({label for _, label in rows})
    rng = np.random.default_rng(seed)
    flipped = rng.choice(len(rows), size=round(fraction * len(rows)), replace=False)
    for i in flipped:
        path, label = rows[i]
        rows[i] = (path, str(rng.choice([c for c in classes if c != label])))
    target = root / f"digits-flipped-{seed}.csv"
    with target.open("w", newline="") as f:
        csv.writer(f).writerows([("path", "label"), *rows])
    return target, {rows[i][0] for i in flipped}
