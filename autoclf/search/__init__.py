"""The Optuna search: spaces, the K-fold objective, storage, and the run loop.

Import what you need from its modules (``autoclf.search.runner``, ``.space``, …): this package
imports nothing, so that reading a space or the events does not load torch."""
