"""The CLI's options and names, checked without running a search."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize(
    "option,message",
    [
        (("--trials", "0"), "--trials: must be at least 1, got 0"),
        (("--folds", "1"), "--folds: must be at least 2, got 1"),
        (("--timeout", "-5"), "--timeout: must be a finite number more than 0, got -5"),
        (("--timeout", "inf"), "--timeout: must be a finite number more than 0, got inf"),
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


def _commands(parser) -> dict:
    """Every (sub)command's parser by its name: "search", "weights list", …"""
    import argparse

    found = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found[name] = sub
                found.update({f"{name} {k}": v for k, v in _commands(sub).items()})
    return found


def test_every_option_of_every_command_says_what_it_does():
    from autoclf.cli import build_parser

    commands = _commands(build_parser())
    assert list(commands)[:9] == [
        "inspect",
        "search",
        "status",
        "finalize",
        "predict",
        "export",
        "report",
        "labels",
        "weights",
    ]  # in the order a user runs them
    for name, parser in commands.items():
        for action in parser._actions:
            if action.dest == "help" or action.help == "==SUPPRESS==":
                continue
            what = action.option_strings or [action.metavar or action.dest]
            assert action.help and action.help.strip(), f"autoclf {name} {what[0]} has no help"
        if " " not in name:  # each command shows how it is run
            assert f"example:\n  autoclf {name} " in parser.epilog, name
            assert f"autoclf {name} " in parser.format_help()


def test_options_appear_only_where_they_act():
    from autoclf.cli import build_parser

    commands = _commands(build_parser())

    def options(name):
        return {s for a in commands[name]._actions for s in a.option_strings}

    # -v prints every epoch of every trial: only a search runs trials.
    assert [name for name in commands if "--verbose" in options(name)] == ["search"]
    for name in ("status", "finalize", "predict", "report"):
        assert {"--study", "--studies-dir"} <= options(name), name
    assert {n for n in commands if "--device" in options(n)} == {"finalize", "predict"}


@pytest.mark.parametrize(
    "argv, quiet, store",
    [
        ("weights list -q --weights-dir w", True, "w"),  # refused before: -q was weights' only
        ("weights -q --weights-dir w list", True, "w"),
        ("weights -q import f --backbone b", True, None),  # an action's default keeps weights' -q
        ("weights download", False, None),
    ],
)
def test_weights_options_go_before_or_after_the_action(argv, quiet, store):
    from autoclf.cli import build_parser

    args = build_parser().parse_args(argv.split())
    assert (args.quiet, args.weights_dir) == (quiet, store)


def test_the_cli_imports_no_heavy_module_until_a_command_runs():
    """``autoclf --help`` answers at once: torch, timm, optuna, scikit-learn and OpenCV are
    imported by the commands that use them."""
    import subprocess
    import sys

    heavy = ("torch", "timm", "optuna", "sklearn", "cv2", "albumentations", "sqlalchemy")
    code = (
        "import sys, contextlib, io\n"
        "import autoclf.cli\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "    autoclf.cli.main(['search', '--help'])\n"
        f"print(sorted(m for m in {heavy!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_quiet_and_verbose_exclude_each_other(capsys):
    from autoclf.cli import build_parser

    with pytest.raises(SystemExit) as stopped:
        build_parser().parse_args(["search", "digits", "--study", "s", "-q", "-v"])
    assert stopped.value.code == 2
    assert "-v/--verbose: not allowed with argument -q/--quiet" in capsys.readouterr().err
