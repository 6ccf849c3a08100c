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
        # Azure's user names are user@server; mysqlclient takes passwd=.
        ("postgresql://az@srv:plainpw@h:5432/db", "postgresql://az@srv:***@h:5432/db"),
        ("mysql://bob@h/db?passwd=s3cret", "mysql://bob@h/db?passwd=***"),
        ("postgresql://bob@h:5432/db", "postgresql://bob@h:5432/db"),
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


def test_the_wrappers_of_optunas_private_api_still_do_their_job(tmp_path):
    """Each function that reaches into Optuna's internals, against a real RDB storage: the
    test that fails first when an Optuna release changes them."""
    import time

    import optuna
    from optuna.trial import TrialState

    from autoclf.search import storage

    url = f"sqlite:///{tmp_path / 'study.db'}"
    rdb = open_storage(url, heartbeat=1)
    study = optuna.create_study(study_name="s", storage=rdb)
    trial = study.ask()
    frozen = study.trials[0]
    assert storage.trial_id(trial) == storage.trial_id(frozen)
    assert storage.get_trial(study, storage.trial_id(trial)).number == trial.number
    storage.set_trial_user_attr(study, storage.trial_id(trial), "note", "from elsewhere")
    assert study.trials[0].user_attrs["note"] == "from elsewhere"
    # One heartbeat, then none: once the grace period is over the trial is stale.
    rdb.record_heartbeat(storage.trial_id(trial))
    stale, grace = storage.stale_trial_ids(study)
    assert grace == 3 and stale == []
    deadline = time.monotonic() + 3 * grace  # the database's clock counts whole seconds
    while not stale and time.monotonic() < deadline:
        time.sleep(0.5)
        stale, _ = storage.stale_trial_ids(study)
    assert stale == [storage.trial_id(trial)]
    assert storage.fail_trial(study, stale[0], "lost", retry=False)
    assert study.trials[0].state == TrialState.FAIL
    assert storage.stale_trial_ids(optuna.create_study()) == ([], None)  # in memory: none


def test_a_study_folder_named_with_url_characters_keeps_its_database_inside(tmp_path):
    """SQLAlchemy cuts a URL at "?" and decodes "%41": the database went to another file."""
    import optuna

    from autoclf.search.storage import claim_lock, default_storage_url

    study_dir = tmp_path / "runs?v=2 %41#1" / "s"
    study_dir.mkdir(parents=True)
    url = default_storage_url(study_dir)
    optuna.create_study(study_name="s", storage=open_storage(url))
    assert [p.name for p in tmp_path.rglob("*.db")] == ["study.db"]
    assert (study_dir / "study.db").is_file()
    assert claim_lock(url, "s").path == study_dir / "study.claim.lock"
