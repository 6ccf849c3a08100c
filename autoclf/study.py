"""A study's folder, read back: its settings, space, index and folds, storage and trials."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna

from autoclf.config import SearchConfig, study_path
from autoclf.data.index import DataIndex, load_index
from autoclf.errors import AutoclfError
from autoclf.search.space import SearchSpace, parse_space
from autoclf.search.storage import cannot_open, default_storage_url, mask_url, open_storage


@dataclass(frozen=True)
class StudyFiles:
    dir: Path
    config: SearchConfig
    space: SearchSpace
    index: DataIndex
    folds: np.ndarray

    @property
    def n_folds(self) -> int:
        return int(self.folds.max()) + 1

    def storage_url(self, override: str | None = None) -> str:
        return override or self.config.storage or default_storage_url(self.dir)


def open_study_dir(studies_dir: str | Path, name: str) -> StudyFiles:
    study_dir = study_path(studies_dir, name)
    if not (study_dir / "index.csv").is_file():
        raise AutoclfError(
            f"no study {name!r} in {study_dir.parent} (no index.csv); run `autoclf search` first, "
            "or pass --studies-dir"
        )
    config = SearchConfig(**json.loads((study_dir / "config.json").read_text()))
    space = parse_space(
        (study_dir / "space.yaml").read_text(),
        name=config.space,
        where=str(study_dir / "space.yaml"),
        saved=True,
    )
    index, folds = load_index(study_dir / "index.csv")
    return StudyFiles(study_dir, config, space, index, folds)


def load_study(files: StudyFiles, storage: str | None = None) -> optuna.Study:
    url = files.storage_url(storage)
    try:
        return optuna.load_study(study_name=files.config.study, storage=open_storage(url))
    except KeyError as exc:
        raise AutoclfError(
            f"study {files.config.study!r} is not in storage {mask_url(url)}"
        ) from exc
    except ImportError:  # open_storage's own message names the driver to install
        raise
    except Exception as exc:  # a bad URL, a server down: as search says it
        raise cannot_open(url, exc) from exc
