"""Errors autoclf raises for bad input; the CLI turns them into a message and exit code 2."""

from __future__ import annotations


class AutoclfError(Exception):
    """Base class: something the user can fix (data, space file, options, storage)."""


class DataError(AutoclfError):
    """The data cannot be indexed or decoded (names the file or column)."""


class SpaceError(AutoclfError):
    """A search-space file is invalid (names the key and value)."""


class StudyMismatchError(AutoclfError):
    """An existing study was created with settings that differ from this run."""


class PretrainedUnavailableError(AutoclfError):
    """Pretrained weights were asked for but cannot be had (no network, not cached)."""
