"""A plain-text log per trial, ``trials/<number>/log.txt``: what it trained, epoch by epoch,
and how it ended (with the traceback when it failed). The trial's ``log_path`` attribute points
at it, so a person looking at the trial in optuna-dashboard knows where to read on.

A log is a stream, appended line by line and flushed at once, so that a trial that dies
leaves every line it got to write.
"""

from __future__ import annotations

import time
from pathlib import Path
from types import TracebackType


class TrialLog:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._file = path.open("a", encoding="utf-8", buffering=1)  # line-buffered

    def __call__(self, line: str) -> None:
        self._file.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')}  {line}\n")

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> TrialLog:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
