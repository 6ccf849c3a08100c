from __future__ import annotations

import subprocess
import sys
import uuid

import optuna
import pytest
from optuna.trial import TrialState

pytestmark = pytest.mark.slow  # starts a PostgreSQL server; `-m "not slow"` skips it

# A second process loads the study and runs two trials (the first one enqueued).
CHILD = """
import sys
import optuna

optuna.logging.set_verbosity(optuna.logging.WARNING)
study = optuna.load_study(study_name=sys.argv[1], storage=sys.argv[2])
study.enqueue_trial({"x": 0.25})
study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
"""


def test_postgres_server_shared_by_two_processes(postgres_url: str) -> None:
    storage = optuna.storages.RDBStorage(postgres_url)
    assert storage.engine.dialect.name == "postgresql"
    name = f"reliability-{uuid.uuid4().hex[:8]}"
    optuna.create_study(study_name=name, storage=storage, direction="maximize")
    try:
        child = subprocess.run(
            [sys.executable, "-c", CHILD, name, postgres_url],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert child.returncode == 0, child.stderr

        study = optuna.load_study(study_name=name, storage=storage)
        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        assert len(complete) == 2
        assert complete[0].params["x"] == 0.25  # the enqueued trial ran first
    finally:
        optuna.delete_study(study_name=name, storage=storage)
        storage.engine.dispose()


def test_both_postgresql_drivers_open_the_storage_with_the_password_in_the_environment(
    postgres_url: str, monkeypatch
) -> None:
    from sqlalchemy.engine import make_url

    from autoclf.search.storage import open_storage

    url = make_url(postgres_url)
    if url.password:  # the README's advice: keep it out of the URL (and config.json)
        monkeypatch.setenv("PGPASSWORD", url.password)
    port = f":{url.port}" if url.port else ""
    bare = f"postgresql://{url.username}@{url.host}{port}/{url.database}"
    assert bare.startswith("postgresql://") and str(url.password) not in bare
    for scheme in ("postgresql", "postgresql+psycopg", "postgresql+psycopg2"):
        storage = open_storage(bare.replace("postgresql://", f"{scheme}://", 1))
        try:
            assert storage.engine.dialect.name == "postgresql"
            optuna.get_all_study_summaries(storage)  # a real query through the driver
        finally:
            storage.engine.dispose()
