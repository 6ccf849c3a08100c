from __future__ import annotations

import pytest

from autoclf.search.storage import dashboard_command, mask_url


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
    ],
)
def test_mask_url(url, masked):
    assert mask_url(url) == masked
    assert "s3cr" not in dashboard_command(url)
