"""The Optuna search: spaces, the K-fold objective, storage, and the run loop."""

from autoclf.search.runner import PreparedSearch, SearchFailedError, prepare, run
from autoclf.search.space import SearchSpace, load_space, parse_space

__all__ = [
    "PreparedSearch",
    "SearchFailedError",
    "SearchSpace",
    "load_space",
    "parse_space",
    "prepare",
    "run",
]
