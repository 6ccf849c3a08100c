from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator

import pytest

from tests.reliability.helpers import descendants, start_search
from tests.reliability.postgres import INSTALL_HINT, find_bindir, throwaway_postgres


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """SQLAlchemy URL of a real PostgreSQL database, on a server started for this session."""
    existing = os.environ.get("AUTOCLF_TEST_POSTGRES_URL")
    if existing:
        yield existing
        return
    bindir = find_bindir()
    if bindir is None:
        message = f"no PostgreSQL server binaries (initdb, pg_ctl) found; {INSTALL_HINT}"
        if os.environ.get("AUTOCLF_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"AUTOCLF_REQUIRE_POSTGRES=1 but {message}", pytrace=False)
        pytest.skip(message)
    with throwaway_postgres(bindir) as url:
        yield url


@pytest.fixture
def start(tmp_path):
    """``start(*args)`` starts ``autoclf search`` in ``tmp_path``; whatever a test leaves
    running (a failed assertion mid-way) is killed at teardown, with all its descendants."""
    procs = []

    def start_in_tmp(*args: str, **kwargs: str):
        proc = start_search(tmp_path, *args, **kwargs)
        procs.append(proc)
        return proc

    yield start_in_tmp
    for proc in procs:
        if proc.poll() is None:
            for pid in descendants(proc.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            proc.kill()
            proc.communicate()
