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


def search_digits(root: Path, space: str, trials: list[dict], *, data: str = "digits"):
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
