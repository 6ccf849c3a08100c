"""Optuna storage: an SQLite file per study by default, any Optuna URL on request.

SQLite and PostgreSQL both go through Optuna's RDBStorage, so heartbeats (stale-trial
detection and retry) work the same on one machine and on many.
"""

from __future__ import annotations

import re
from pathlib import Path

import optuna

HEARTBEAT_INTERVAL_S = 60
GRACE_PERIOD_S = 180
MAX_RETRY = 2


def default_storage_url(study_dir: Path) -> str:
    return f"sqlite:///{(study_dir / 'study.db').resolve()}"


def mask_url(url: str) -> str:
    """``postgresql://user:secret@host/db`` → ``postgresql://user:***@host/db``."""
    url = re.sub(r"(//[^:/@]*:)[^@/]*(@)", r"\1***\2", url)
    return re.sub(r"((?:password|pass|pwd)=)[^&]*", r"\1***", url, flags=re.IGNORECASE)


def open_storage(url: str) -> optuna.storages.BaseStorage:
    if not re.match(r"^(sqlite|postgresql|postgres|mysql)(\+\w+)?://", url):
        return optuna.storages.get_storage(url)
    engine_kwargs = {}
    if url.startswith("sqlite"):
        # Wait for a busy database instead of failing with "database is locked".
        engine_kwargs = {"connect_args": {"timeout": 60}}
    else:
        engine_kwargs = {"pool_pre_ping": True}
    return optuna.storages.RDBStorage(
        url,
        engine_kwargs=engine_kwargs,
        heartbeat_interval=HEARTBEAT_INTERVAL_S,
        grace_period=GRACE_PERIOD_S,
        heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
            max_retry=MAX_RETRY
        ),
    )


def dashboard_command(url: str) -> str:
    return f"optuna-dashboard {mask_url(url)}"
