"""The command line: the only place that parses arguments, prints, or exits."""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import optuna
from rich.console import Console
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from autoclf import __version__
from autoclf.config import SearchConfig
from autoclf.data.index import BUILTIN
from autoclf.errors import AutoclfError
from autoclf.metrics import METRICS
from autoclf.search.events import EpochDone, Event, TrialFinished, TrialStarted
from autoclf.search.storage import dashboard_command, mask_url

console = Console()
err_console = Console(stderr=True)

KEY_PARAMS = ("backbone", "optimizer", "lr", "batch_size", "aug_strength", "scheduler")
SHORT = {"optimizer": "opt", "batch_size": "batch", "aug_strength": "aug", "scheduler": "sched"}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # Heartbeats are "experimental" in Optuna's terms; that is no news to our users.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    try:
        return args.run(args)
    except AutoclfError as exc:
        err_console.print(f"[bold red]error:[/] {mask_url(str(exc))}", highlight=False)
        return 2
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/]")
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="autoclf",
        description="AutoML for image classification: Optuna search over timm backbones.",
    )
    parser.add_argument("--version", action="version", version=f"autoclf {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    search = commands.add_parser(
        "search",
        help="run (or resume) a hyperparameter search with K-fold CV",
        description="Run, or resume, an Optuna study of image-classification trials. "
        "Re-running the same command resumes: --trials counts finished trials in total.",
    )
    search.add_argument(
        "data",
        metavar="DATA",
        help=f"a folder of class folders, a CSV (path,label[,group]), or one of {list(BUILTIN)}",
    )
    search.add_argument(
        "--study", required=True, help="study name (also its folder under --studies-dir)"
    )
    search.add_argument(
        "--space",
        default=None,
        help="search space: a shipped name (tiny, default) or a YAML path "
        "(default: 'default' with CUDA, else 'tiny')",
    )
    search.add_argument(
        "--trials",
        type=_positive_int,
        default=20,
        help="finished (complete or pruned) trials to reach in total (default 20)",
    )
    search.add_argument(
        "--timeout", type=float, default=None, help="stop starting trials after this many seconds"
    )
    search.add_argument("--folds", type=int, default=5, help="K for stratified K-fold (default 5)")
    search.add_argument(
        "--seed", type=int, default=0, help="seed for folds, sampler and training (default 0)"
    )
    search.add_argument(
        "--metric", choices=sorted(METRICS), default="accuracy", help="CV metric (default accuracy)"
    )
    search.add_argument(
        "--storage",
        default=None,
        help="Optuna storage URL (default: sqlite file in the study folder)",
    )
    search.add_argument(
        "--studies-dir", default="studies", help="where studies live (default ./studies)"
    )
    search.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    search.add_argument(
        "--loader-workers",
        type=int,
        default=None,
        help="DataLoader worker processes (default: 0 on CPU, up to 8 on CUDA)",
    )
    search.add_argument(
        "--allow-space-change",
        action="store_true",
        help="resume even though the space file differs from the study's",
    )
    search.set_defaults(run=cmd_search)
    return parser


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


# --- search ---------------------------------------------------------------------------------


def cmd_search(args: argparse.Namespace) -> int:
    from autoclf.search import prepare, run  # torch and timm load here, not for --help

    space = args.space
    if space is None:
        import torch

        space = "default" if torch.cuda.is_available() else "tiny"
        console.print(
            f"space: [bold]{space}[/] ({'CUDA found' if space == 'default' else 'no CUDA device'}; "
            "choose with --space)"
        )
    data = args.data if args.data in BUILTIN else str(Path(args.data).expanduser().resolve())
    config = SearchConfig(
        data=data,
        study=args.study,
        space=space,
        folds=args.folds,
        seed=args.seed,
        metric=args.metric,
        trials=args.trials,
        timeout=args.timeout,
        storage=args.storage,
        studies_dir=args.studies_dir,
        device=args.device,
        loader_workers=args.loader_workers,
    )
    with _progress("decoding images into the cache") as advance:
        prepared = prepare(
            config, allow_space_change=args.allow_space_change, on_cache_progress=advance
        )

    index, study = prepared.index, prepared.study
    counts = ", ".join(f"{name} {n}" for name, n in index.class_counts().items())
    console.print(
        f"data: {len(index)} images, {len(index.classes)} classes ({counts})", highlight=False
    )
    console.print(
        f"study [bold]{study.study_name}[/]: "
        + (
            f"resumed with {prepared.finished()} finished trial(s)"
            if prepared.resumed
            else "created"
        )
        + f"; {config.folds}-fold CV on {config.metric}; space {prepared.space.name}"
    )
    # soft_wrap: a command or URL broken over two lines cannot be copied and pasted.
    console.print(f"storage: {mask_url(prepared.storage_url)}", highlight=False, soft_wrap=True)
    console.print(
        f"dashboard: [bold]{dashboard_command(prepared.storage_url)}[/]",
        highlight=False,
        soft_wrap=True,
    )
    if prepared.finished() >= config.trials:
        console.print(
            f"already {prepared.finished()} finished trials "
            f"(target --trials {config.trials}); nothing to run"
        )
    else:
        view = _LiveTrial(config.metric)
        with Live(view, console=console, refresh_per_second=4, transient=True):
            run(prepared, on_event=view.handle)
    console.print(leaderboard(study, config.metric))
    return 0


class _LiveTrial:
    """The running trial as one line, plus a printed line per finished trial."""

    def __init__(self, metric: str):
        self.metric = metric
        self.text = Text("waiting for the first trial…")

    def __rich__(self) -> Text:
        return self.text

    def handle(self, event: Event) -> None:
        if isinstance(event, TrialStarted):
            self.text = Text(f"trial {event.number}: starting  {_fmt_params(event.params)}")
        elif isinstance(event, EpochDone):
            r = event.report
            self.text = Text(
                f"trial {event.number}: fold {event.fold + 1}/{event.folds}  "
                f"epoch {r.epoch}/{r.epochs}  {self.metric} {r.score:.4f} "
                f"(fold best {r.best_score:.4f})  loss {r.train_loss:.3f}  "
                f"lr {r.lr:.2e}  {r.seconds:.1f}s/epoch"
            )
        elif isinstance(event, TrialFinished):
            console.print(_finished_line(event, self.metric), highlight=False)


def _finished_line(event: TrialFinished, metric: str) -> Text:
    t = event.trial
    colour = {"COMPLETE": "green", "PRUNED": "yellow", "FAIL": "red"}.get(t.state.name, "white")
    line = Text(f"#{t.number:<3} ")
    line.append(f"{t.state.name:<8}", style=colour)
    line.append(f" {t.value:.4f}" if t.value is not None else "       -")
    line.append(f"  {_fmt_params(t.params)}")
    if t.state.name == "FAIL":
        line.append(f"  ({t.user_attrs.get('fail_reason', 'failed')})", style="red")
    elif t.state.name == "PRUNED" and "pruned_reason" in t.user_attrs:
        line.append(f"  ({t.user_attrs['pruned_reason']})", style="dim")
    if event.best is not None:
        line.append(f"  best #{event.best.number} {metric} {event.best.value:.4f}", style="bold")
    return line


def leaderboard(study: optuna.Study, metric: str, top: int = 10) -> Table:
    trials = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    reverse = study.direction == optuna.study.StudyDirection.MAXIMIZE
    trials.sort(key=lambda t: t.value, reverse=reverse)
    states: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        states[t.state.name.lower()] = states.get(t.state.name.lower(), 0) + 1
    summary = ", ".join(f"{n} {s}" for s, n in sorted(states.items()))
    table = Table(
        title=f"study {study.study_name}: {summary}",
        title_justify="left",
        box=None,
        header_style="bold underline",
        padding=(0, 1, 0, 0),
    )
    table.add_column("#", justify="right")
    table.add_column(f"{metric} ±sd", justify="right", no_wrap=True)
    for key in KEY_PARAMS:
        table.add_column(SHORT.get(key, key), no_wrap=key == "backbone")
    table.add_column("epochs", justify="right")
    table.add_column("time", justify="right")
    for t in trials[:top]:
        table.add_row(
            str(t.number),
            f"{t.value:.4f}±{t.user_attrs.get('cv_std', 0):.3f}",
            *(
                _fmt_value(t.params.get(k, t.user_attrs.get("config", {}).get(k, "")))
                for k in KEY_PARAMS
            ),
            str(t.user_attrs.get("epochs_run", "")),
            f"{t.user_attrs.get('duration_s', 0):.0f}s",
        )
    return table


def _fmt_params(params: dict) -> str:
    return " ".join(f"{k}={_fmt_value(params[k])}" for k in KEY_PARAMS if k in params)


def _fmt_value(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.1e}" if v and abs(v) < 0.01 else f"{v:.2f}"
    return str(v)


class _progress:
    """A progress bar for a long step; it appears only once the step reports progress."""

    def __init__(self, description: str):
        self.description = description
        self.progress: Progress | None = None

    def __enter__(self) -> Callable[[int, int], None]:
        def advance(done: int, total: int) -> None:
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
