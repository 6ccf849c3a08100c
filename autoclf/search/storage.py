"""Optuna storage: an SQLite file per study by default, any Optuna URL on request.

SQLite and PostgreSQL both go through Optuna's RDBStorage, so heartbeats (stale-trial
detection and retry) work the same on one machine and on many. This module also holds the
two things workers need beyond Optuna: a lock that makes "is there room for one more trial?"
exact across processes and machines, and retries that keep the reason a trial was lost.
"""

from __future__ import annotations

import re
import shlex
import threading
import time
import zlib
from pathlib import Path
from typing import Protocol

import optuna
import sqlalchemy
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from autoclf import atomic
from autoclf.errors import AutoclfError
from autoclf.search import record

HEARTBEAT_INTERVAL_S = 60
GRACE_FACTOR = 3  # a trial is stale after this many missed heartbeats
MAX_RETRY = 2  # a lost trial is re-run with the same parameters at most this many times


def default_storage_url(study_dir: Path) -> str:
    path = str((study_dir / "study.db").resolve())
    # SQLAlchemy takes "?" for a query's start and decodes "%XX": a folder named so would put
    # the database somewhere else.
    for char, code in (("%", "%25"), ("?", "%3F"), ("#", "%23")):
        path = path.replace(char, code)
    return f"sqlite:///{path}"


def mask_url(url: str) -> str:
    """``postgresql://user:secret@host/db`` → ``postgresql://user:***@host/db``."""
    # The user runs to the first ":" (Azure's user names hold "@": "user@server"); the
    # password to the last "@" before the host: generated passwords hold "/" and ":", and one
    # written with a bare "@" must not leave its tail in view.
    url = re.sub(r"(//[^:/\s]*:)[^@\s]*(?:@[^@\s/]*(?=@))*@", r"\1***@", url)
    return re.sub(r"((?:password|passwd|pass|pwd)=)[^&\s]*", r"\1***", url, flags=re.IGNORECASE)


def cannot_open(url: str, exc: BaseException) -> AutoclfError:
    """The error for a storage that would not open: its URL and why, passwords masked
    (SQLAlchemy's and the drivers' messages carry the URL)."""
    return AutoclfError(f"cannot open storage {mask_url(url)}: {mask_url(str(exc))}")


def _is_rdb(url: str) -> bool:
    return re.match(r"^(sqlite|postgresql|postgres|mysql)(\+\w+)?://", url) is not None


def open_storage(url: str, *, heartbeat: int = HEARTBEAT_INTERVAL_S) -> optuna.storages.BaseStorage:
    """An RDB storage with heartbeats every ``heartbeat`` seconds (stale after 3 missed)."""
    if not _is_rdb(url):
        return optuna.storages.get_storage(url)
    if url.startswith("sqlite"):
        # Wait for a busy database instead of failing with "database is locked".
        engine_kwargs = {"connect_args": {"timeout": 60}}
    else:
        engine_kwargs = {"pool_pre_ping": True}
    for attempt in range(3):
        try:
            storage = optuna.storages.RDBStorage(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=heartbeat,
                grace_period=GRACE_FACTOR * heartbeat,
                heartbeat_stale_trial_callback=retry_trial,
            )
            break
        except ImportError as exc:  # Optuna's own message names no driver and no fix
            scheme = url.split("://")[0]
            fix = (
                "install them with pip install 'autoclf[postgres]'"
                if scheme.startswith("postgres")
                else "install the module it names"
            )
            raise ImportError(
                f"no database driver for {scheme}:// URLs ({exc.__cause__ or exc}); {fix}"
            ) from exc
        except sqlalchemy.exc.SQLAlchemyError as exc:
            # Two processes creating a new database's tables at once (two machines starting
            # together, a dashboard opened early): the loser finds them made on a second try.
            if attempt == 2 or "already exists" not in str(exc):
                raise
            time.sleep(0.5)
    if url.startswith("sqlite"):
        # Write-ahead logging lets readers (the dashboard, `autoclf status`) and the workers'
        # writers proceed together. The mode is stored in the file: setting it once suffices.
        with storage.engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA journal_mode=WAL")
        # With WAL, synchronous=NORMAL skips the fsync per commit (a trial makes dozens):
        # a killed process loses nothing it committed, and the file is never corrupted; only
        # a power cut or kernel crash can roll back the last commits.
        sqlalchemy.event.listen(
            storage.engine,
            "connect",
            lambda conn, _: conn.execute("PRAGMA synchronous=NORMAL"),
        )
        storage.engine.dispose()  # connections opened so far predate the listener
    return storage


def dashboard_command(url: str, executable: str = "optuna-dashboard") -> str:
    """The shell command that opens the study's storage in optuna-dashboard, its password
    masked (to fill in by hand)."""
    return shlex.join([executable, mask_url(url)])


# --- lost trials: failed with their reason, re-run with the same parameters ------------------


def retry_trial(study: optuna.Study, trial: FrozenTrial) -> int | None:
    """Queue a copy of ``trial`` (same parameters) to run next; return its number.

    Used for trials whose worker died or was stopped. A trial is retried at most
    ``MAX_RETRY`` times (counting the retries of its retries); a trial with no parameters
    yet is not copied: a fresh trial is the same thing.
    """
    history = [*trial.system_attrs.get("retry_history", []), trial.number]
    if not trial.params or len(history) > MAX_RETRY:
        return None
    study.add_trial(
        optuna.create_trial(
            state=TrialState.WAITING,
            params=trial.params,
            distributions=trial.distributions,
            # Optuna's RetryHeartbeatStaleTrialCallback keys, so its helpers read these too.
            system_attrs={"failed_trial": history[0], "retry_history": history},
            user_attrs={record.RETRY_OF: trial.number},
        )
    )
    return study.get_trials(deepcopy=False)[-1].number


def fail_trial(study: optuna.Study, trial_id: int, reason: str, *, retry: bool = True) -> bool:
    """Mark a RUNNING trial FAIL with ``reason`` and queue its retry; False if it had
    finished already (another process got there first)."""
    try:
        set_trial_user_attr(study, trial_id, record.FAIL_REASON, reason)
        if not _set_failed(study, trial_id):
            return False
    except UpdateFinishedTrialError:
        return False
    if retry:
        retry_trial(study, get_trial(study, trial_id))
    return True


def fail_stale_trials(study: optuna.Study) -> list[int]:
    """Fail the trials whose heartbeat stopped (their worker died), each with its reason,
    and queue their retries. Optuna's own ``fail_stale_trials`` does the same without a
    reason on the trial."""
    stale, grace = stale_trial_ids(study)
    failed = []
    for trial_id in stale:
        reason = (
            "no heartbeat"
            + (f" for {grace}s" if grace else "")
            + ": its worker was killed or lost the storage; retried with the same parameters"
        )
        if fail_trial(study, trial_id, reason):
            failed.append(trial_id)
    return failed


# --- Optuna's private API ------------------------------------------------------------------
# Every use of it is here, one small function each, each with a test (tests/search/
# test_storage.py) that would fail if an Optuna release changed it; pyproject.toml bounds
# optuna to the major version those tests pass with.


def trial_id(trial: optuna.Trial | FrozenTrial) -> int:
    """The trial's id in its storage (its number counts within the study only)."""
    return trial._trial_id


def get_trial(study: optuna.Study, trial_id: int) -> FrozenTrial:
    """One trial, read from the storage by id: without reading every trial of the study."""
    return study._storage.get_trial(trial_id)


def set_trial_user_attr(study: optuna.Study, trial_id: int, key: str, value: object) -> None:
    """A user attribute of any running trial, not only one this process asked for."""
    study._storage.set_trial_user_attr(trial_id, key, value)


def _set_failed(study: optuna.Study, trial_id: int) -> bool:
    """Mark a running trial FAIL; False if it was not running."""
    return study._storage.set_trial_state_values(trial_id, state=TrialState.FAIL)


def stale_trial_ids(study: optuna.Study) -> tuple[list[int], int | None]:
    """The RUNNING trials whose heartbeat stopped, and the grace period in seconds after
    which a heartbeat counts as stopped. None ([], None) for a storage without heartbeats
    (in memory, or opened without ``heartbeat``)."""
    storage = study._storage
    stale_ids = getattr(storage, "_get_stale_trial_ids", None)
    if stale_ids is None or storage.get_heartbeat_interval() is None:
        return [], None
    grace = getattr(getattr(storage, "_backend", storage), "grace_period", None)
    return list(stale_ids(study._study_id)), grace


# --- the claim lock ---------------------------------------------------------------------------


class ClaimLock(Protocol):
    def acquire(self) -> None: ...
    def release(self) -> None: ...


def claim_lock(url: str, study_name: str) -> ClaimLock:
    """A lock shared by every worker of the study, held while a worker counts the trials and
    asks for a new one. Without it two workers could both take the last of ``--trials``.

    SQLite (one machine): an flock next to the database file. PostgreSQL (many machines): an
    advisory lock, released by the server if the holder dies. Other storages: a lock within
    this process only, so workers on several machines may overshoot ``--trials`` slightly.
    """
    if url.startswith("sqlite:///") and ":memory:" not in url:
        database = sqlalchemy.engine.make_url(url).database  # the file, as SQLAlchemy reads it
        return atomic.FileLock(Path(database).with_suffix(".claim.lock"))
    if re.match(r"^postgres(ql)?(\+\w+)?://", url):
        return _PostgresLock(url, zlib.crc32(f"autoclf:{study_name}".encode()))
    return _LocalLock()


class _PostgresLock:
    def __init__(self, url: str, key: int):
        self.engine = sqlalchemy.create_engine(url, pool_size=1, pool_pre_ping=True)
        self.key = key
        self.conn: sqlalchemy.Connection | None = None

    def acquire(self) -> None:
        self.conn = self.engine.connect()
        self.conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": self.key})

    def release(self) -> None:
        if self.conn is not None:
            conn, self.conn = self.conn, None
            conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": self.key})
            conn.close()


class _LocalLock:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.held = False

    def acquire(self) -> None:
        self.lock.acquire()
        self.held = True

    def release(self) -> None:
        if self.held:
            self.held = False
            self.lock.release()
