from __future__ import annotations

import sys

import pytest

from autoclf.search.storage import dashboard_command, mask_url, open_storage


@pytest.mark.parametrize(
    "url,masked",
    [
        (
            "postgresql://alice:s3cr%40t@db.example:5432/optuna",
            "postgresql://alice:***@db.example:5432/optuna",
        ),
        ("postgresql+psycopg2://bob:pw@localhost/x", "postgresql+psycopg2://bob:***@localhost/x"),
        ("mysql://u:p@h/db?password=again", "mysql://u:***@h/db?password=***"),
        ("sqlite:////tmp/a/study.db", "sqlite:////tmp/a/study.db"),
        ("postgresql://carol@host/db", "postgresql://carol@host/db"),
        # Generated passwords hold "/", "+" and ":"; a bare "@" in one is a user's slip.
        ("postgresql://u:ab/c+d:e@h/db", "postgresql://u:***@h/db"),
        ("postgresql://u:pa@ss@h:5432/db", "postgresql://u:***@h:5432/db"),
        (
            "cannot open storage postgresql://u:x/y@h/db: user@h refused",
            "cannot open storage postgresql://u:***@h/db: user@h refused",
        ),
    ],
)
def test_mask_url(url, masked):
    assert mask_url(url) == masked
    assert "s3cr" not in dashboard_command(url)


def test_a_missing_database_driver_names_the_url_kind_and_the_extra(monkeypatch):
    # None in sys.modules makes `import psycopg` (and psycopg2) fail as if not installed.
    for driver in ("psycopg", "psycopg2"):
        monkeypatch.setitem(sys.modules, driver, None)
    with pytest.raises(ImportError, match=r"postgresql:// URLs .*autoclf\[postgres\]") as err:
        open_storage("postgresql://alice:s3cret@127.0.0.1:1/db")
    assert "s3cret" not in str(err.value)
