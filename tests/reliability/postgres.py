"""Start a real, throwaway PostgreSQL server for tests.

autoclf tells users to share one study between machines through PostgreSQL, so the
reliability tests run Optuna's RDB storage against a real server, not a mock or SQLite.
:func:`throwaway_postgres` runs ``initdb`` into a fresh temporary directory, starts the
server on a free loopback port with ``pg_ctl``, creates a database owned by a password
role, yields its SQLAlchemy URL, and stops the server and deletes the directory on exit.

PostgreSQL refuses to run as root, so as root every server command runs as the
``postgres`` OS user through ``runuser``.

Run the test by hand (needs the server binaries, e.g. ``apt-get install postgresql``)::

    .venv/bin/python -m pytest tests/reliability -k postgres

Environment:
    AUTOCLF_TEST_POSTGRES_URL  use this existing server instead of starting one.
    AUTOCLF_REQUIRE_POSTGRES=1 fail, not skip, when no server binaries are found (CI).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

DATABASE = "autoclf_test"
ROLE = "autoclf"
PASSWORD = "s3cret-pw"
SUPERUSER = "postgres"
SUPERUSER_PASSWORD = "superuser-pw"

INSTALL_HINT = "install the PostgreSQL server, e.g. `apt-get install postgresql`"


def find_bindir() -> Path | None:
    """The directory holding ``initdb`` and ``pg_ctl``, or None when there is none."""
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True)
        if out.returncode == 0 and out.stdout.strip():
            candidates.append(Path(out.stdout.strip()))

    def version(bindir: Path) -> tuple[int, ...]:
        return tuple(int(p) for p in re.findall(r"\d+", bindir.parent.name))

    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=version, reverse=True)
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(Path(initdb).resolve().parent)
    for bindir in candidates:
        if all((bindir / tool).is_file() for tool in ("initdb", "pg_ctl", "psql")):
            return bindir
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as e:
        return f"(no server log: {e})"


@contextmanager
def throwaway_postgres(bindir: Path) -> Iterator[str]:
    """Run a fresh PostgreSQL server from ``bindir``; yield a URL for a database in it."""
    as_root = os.geteuid() == 0
    root = Path(tempfile.mkdtemp(prefix="autoclf-pg-", dir="/tmp" if as_root else None))
    data, log, pwfile = root / "data", root / "server.log", root / "pwfile"
    port = _free_port()

    def run(*cmd: str) -> subprocess.CompletedProcess[str]:
        argv = ["runuser", "-u", "postgres", "--", *cmd] if as_root else list(cmd)
        # cwd=root: the postgres user may not be allowed into the caller's directory.
        return subprocess.run(argv, cwd=root, capture_output=True, text=True, timeout=120)

    def fail(step: str, result: subprocess.CompletedProcess[str]) -> RuntimeError:
        return RuntimeError(
            f"throwaway PostgreSQL: {step} failed (exit {result.returncode})\n"
            f"{result.stdout}{result.stderr}\n--- tail of {log} ---\n{_tail(log)}"
        )

    try:
        pwfile.write_text(SUPERUSER_PASSWORD + "\n")
        if as_root:
            for path in (root, pwfile):
                shutil.chown(path, "postgres", "postgres")
        result = run(
            str(bindir / "initdb"), "-D", str(data), "-U", SUPERUSER, f"--pwfile={pwfile}",
            "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--no-locale",
        )  # fmt: skip
        if result.returncode:
            raise fail("initdb", result)
        options = f"-h 127.0.0.1 -p {port} -k {root} -c fsync=off"
        result = run(
            str(bindir / "pg_ctl"), "-w", "-D", str(data), "-l", str(log), "-o", options, "start"
        )
        if result.returncode:
            raise fail("pg_ctl start", result)
        result = run(
            str(bindir / "psql"), "-h", str(root), "-p", str(port), "-U", SUPERUSER,
            "-d", "postgres", "-v", "ON_ERROR_STOP=1",
            "-c", f"CREATE ROLE {ROLE} LOGIN PASSWORD '{PASSWORD}'",
            "-c", f"CREATE DATABASE {DATABASE} OWNER {ROLE}",
        )  # fmt: skip
        if result.returncode:
            raise fail("creating the role and database", result)
        # The plain form, as the README tells users to write it.
        yield f"postgresql://{ROLE}:{PASSWORD}@127.0.0.1:{port}/{DATABASE}"
    finally:
        if (data / "postmaster.pid").exists():
            run(str(bindir / "pg_ctl"), "-w", "-D", str(data), "-m", "fast", "stop")
        shutil.rmtree(root, ignore_errors=True)
