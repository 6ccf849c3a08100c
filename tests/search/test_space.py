from __future__ import annotations

import os
import subprocess
import sys

import optuna
import pytest

from autoclf.config import TrainParams
from autoclf.errors import SpaceError
from autoclf.search.space import load_space, parse_space, shipped_spaces

BASE = """
params:
  backbone: {type: categorical, choices: [test_resnet, test_vit]}
  lr: {type: float, low: 1e-4, high: 1.0e-2, log: true}
  batch_size: {type: categorical, choices: [16, 32]}
  epochs: {type: int, low: 2, high: 4}
  image_size: 32
"""


def _with(change: str) -> str:
    """BASE with the lines of ``change`` in place of its own lines for the same keys (a key
    given twice is an error of its own)."""
    keys = {line.split(":")[0] for line in change.splitlines()}
    kept = [line for line in BASE.splitlines(True) if line.split(":")[0] not in keys]
    return "".join(kept) + change


def test_shipped_spaces_load_and_cover_the_issue_list():
    assert {"tiny", "default"} <= set(shipped_spaces())
    for name in ("tiny", "default"):
        space = load_space(name)
        for key in (
            "backbone",
            "optimizer",
            "lr",
            "weight_decay",
            "batch_size",
            "dropout",
            "aug_strength",
            "scheduler",
            "epochs",
            "image_size",
        ):
            assert key in space.params, f"{name}.yaml lacks {key}"
    assert not load_space("tiny").may_use_pretrained
    assert load_space("tiny").params["hflip"].choices == (True, False)
    assert load_space("default").may_use_pretrained
    assert len(load_space("default").backbones) >= 3


def test_shipped_space_resolves_from_any_directory(tmp_path):
    code = "from autoclf.search.space import load_space; print(load_space('tiny').name)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": ""},
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "tiny"


def test_suggest_fills_fixed_values_and_defaults():
    space = parse_space(BASE)
    trial = optuna.create_study().ask()
    params = space.suggest(trial)
    assert isinstance(params, TrainParams)
    assert params.image_size == 32
    assert 1e-4 <= params.lr <= 1e-2  # "1e-4" (a string to PyYAML) was read as a number
    assert params.batch_size in (16, 32) and 2 <= params.epochs <= 4
    assert params.optimizer == TrainParams.__dataclass_fields__["optimizer"].default
    assert set(trial.params) == {"backbone", "lr", "batch_size", "epochs"}
    assert space.max_epochs == 4 and space.max_image_size == 32


@pytest.mark.parametrize(
    "change,message",
    [
        ("  learning_rate: 0.1\n", r"unknown parameter params.learning_rate"),
        ("  lr: {type: float, low: 0.1, high: 0.01}\n", r"params.lr: low \(0.1\) > high \(0.01\)"),
        ("  backbone: resnet_fifty\n", r"params.backbone = 'resnet_fifty' is not a timm model"),
        ("  backbone: test_resnett\n", r"did you mean 'test_resnet'"),
        ("  batch_size: 'big'\n", r"params.batch_size = 'big' must be an integer"),
        ("  batch_size: 0\n", r"params.batch_size = 0 must be in \[2, inf\]"),
        (
            "  dropout: {type: float, low: 0.0, high: 1.5}\n",
            r"params.dropout.high = 1.5 must be in \[0, 1\)",
        ),
        ("  optimizer: adamm\n", r"params.optimizer = 'adamm' must be one of .*did you mean 'adam"),
        (
            "  scheduler: {type: categorical, choices: [cosine, cosnie]}\n",
            r"params.scheduler.choices\[1\]",
        ),
        (
            "  lr: {type: float, low: 0.001, hgih: 0.1}\n",
            r"unknown key 'hgih' for a float parameter",
        ),
        (
            "  lr: {type: float, low: 0.0, high: 0.1, log: true}\n",
            r"params.lr.low = 0.0 must be in \(0",
        ),
        ("  pretrained: yes please\n", r"params.pretrained = 'yes please' must be true or false"),
        (
            "  epochs: {type: float, low: 1, high: 3}\n",
            r"params.epochs: type float does not fit an int",
        ),
        ("  backbone: [test_resnet]\n", r"params.backbone: a list .* is ambiguous"),
        ("  lr: {type: uniform, low: 0.1, high: 0.2}\n", r"params.lr.type = 'uniform'"),
        ("  balance: weighted\n", r"params.balance = 'weighted' must be one of .*weights"),
        (
            "  optimizer: sgd\n  momentum: {type: float, low: 0.0, high: 0.9}\n",
            r"'sgd' .* needs momentum > 0",
        ),
        ("  keep: final\n", r"params.keep = 'final' must be one of .*last"),
        ("  batch_size: 1\n", r"params.batch_size = 1 must be in \[2"),
        (
            "  keep: {type: categorical, choices: [best, last]}\n  patience: 3\n",
            r"params.patience stops a fold at its best epoch, but params.keep = 'last'",
        ),
    ],
)
def test_bad_params_name_key_and_value(change, message):
    with pytest.raises(SpaceError, match=message):
        parse_space(_with(change), where="bad.yaml")


@pytest.mark.parametrize(
    "extra,message",
    [
        (
            "pruners: {name: median}\n",
            r"unknown top-level key 'pruners' \(did you mean 'pruner'\?\)",
        ),
        (
            "pruner: {name: meadian}\n",
            r"pruner.name = 'meadian' must be one of .*did you mean 'median'",
        ),
        ("pruner: {name: median, warmup: 2}\n", r"unknown key pruner.warmup for median"),
        ("sampler: {name: tpe, n_startup: 3}\n", r"unknown key sampler.n_startup for tpe"),
        ("pruner: {name: percentile, percentile: 150}\n", r"pruner .* is invalid"),
    ],
)
def test_bad_sections(extra, message):
    with pytest.raises(SpaceError, match=message):
        parse_space(BASE + extra, where="bad.yaml")


def test_pretrained_needs_backbones_that_have_weights():
    with pytest.raises(SpaceError, match="has no pretrained weights"):
        parse_space("params:\n  backbone: vit_base_patch16_224.fake_tag\n  pretrained: true\n")
    either = "{type: categorical, choices: [true, false]}"
    space = parse_space(f"params:\n  backbone: test_resnet\n  pretrained: {either}\n")
    assert space.may_use_pretrained


def test_missing_backbone_and_bad_yaml():
    with pytest.raises(SpaceError, match="params.backbone is required"):
        parse_space("params:\n  lr: 0.1\n")
    with pytest.raises(SpaceError, match="not valid YAML"):
        parse_space("params: [unclosed\n")


def test_bad_yaml_is_named_by_its_file_line_and_column(tmp_path):
    space = tmp_path / "mine.yaml"
    space.write_text("params:\n  backbone: test_resnet\n  lr: {low: 0.1\n")
    with pytest.raises(SpaceError) as err:
        load_space(str(space))
    assert str(err.value).startswith(f"{space}:4:1: not valid YAML")
    assert "unicode string" not in str(err.value)


def test_unknown_space_name_lists_shipped_ones(tmp_path):
    with pytest.raises(SpaceError, match="unknown search space 'tinyy'.*tiny"):
        load_space("tinyy")
    with pytest.raises(SpaceError, match="not found"):
        load_space(str(tmp_path / "missing.yaml"))


def test_a_key_given_twice_is_named_with_its_line_not_silently_the_last():
    twice = (
        "params:\n  backbone: test_resnet\n  epochs: {type: int, low: 5, high: 20}\n  epochs: 3\n"
    )
    with pytest.raises(
        SpaceError, match=r"^mine.yaml:4:3: not valid YAML: 'epochs' is given twice"
    ):
        parse_space(twice, where="mine.yaml")


def test_a_space_with_sections_and_independent_tpe_builds_its_sampler():
    """TPE's group option needs multivariate; autoclf adds it only where it may."""
    text = (
        "params: {backbone: test_resnet, image_size: 16, epochs: 1}\n"
        "finetune: {lr: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}}\n"
        "sampler: {name: tpe, multivariate: false}\n"
    )
    assert isinstance(parse_space(text).make_sampler(seed=0), optuna.samplers.TPESampler)
