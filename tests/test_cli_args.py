"""The CLI's options and names, checked without running a search."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize(
    "option,message",
    [
        (("--trials", "0"), "--trials: must be at least 1, got 0"),
        (("--folds", "1"), "--folds: must be at least 2, got 1"),
        (("--timeout", "-5"), "--timeout: must be more than 0, got -5"),
        (("--loader-workers", "-2"), "--loader-workers: must be at least 0, got -2"),
        (("--folds", "x"), "--folds: invalid int value: 'x'"),
    ],
)
def test_out_of_range_options_stop_before_anything_starts(option, message, capsys):
    # A negative --timeout had created a study and run nothing; a negative --loader-workers
    # failed every trial with DataLoader's ValueError.
    from autoclf.cli import build_parser

    with pytest.raises(SystemExit) as stopped:
        build_parser().parse_args(["search", "digits", "--study", "s", *option])
    assert stopped.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "data,name",
    [
        ("photos/val", "predictions-val.csv"),
        ("photos/val/", "predictions-val.csv"),
        ("lists/test.csv", "predictions-test.csv"),  # was predictions-test.csv.csv
        ("lists/TEST.CSV", "predictions-TEST.csv"),
        ("runs/v1.2", "predictions-v1.2.csv"),  # a dot in a folder name stays
        ("digits-test", "predictions-digits-test.csv"),
    ],
)
def test_predict_names_its_default_file_after_the_data(data, name):
    from autoclf.cli import predictions_name

    assert predictions_name(data) == name
