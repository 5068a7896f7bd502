"""brainkit's exceptions.

Every error a user can trigger with bad input is a :class:`BrainkitError` whose message names
the file (or object), the field and what was expected, so a notebook cell fails with a sentence
the student can act on. Introduced in ``00_quickstart``.
"""

from __future__ import annotations

from pathlib import Path


class BrainkitError(Exception):
    """Base class of every brainkit error."""


class ConfigError(BrainkitError, ValueError):
    """An unknown profile, an unknown or ill-typed profile field, an invalid argument."""


class DataError(BrainkitError, ValueError):
    """A data file that is missing, unreadable or does not hold what was expected.

    ``DataError(path, field, expected, found=None)`` formats
    ``"<path>: <field>: expected <expected>, found <found>"``.
    """

    def __init__(self, path: str | Path | None, field: str | None, expected: str, found: object = None):
        self.path = None if path is None else str(path)
        self.field = field
        self.expected = expected
        self.found = found
        parts = [p for p in (self.path, field) if p]
        msg = ": ".join(parts + [f"expected {expected}"])
        if found is not None:
            msg += f", found {found}"
        super().__init__(msg)


class CheckpointError(BrainkitError, ValueError):
    """A checkpoint that is missing, corrupt, or was written by another configuration."""


class NotebookError(BrainkitError, RuntimeError):
    """A notebook that failed or timed out in the runner."""


class MissingAssetError(BrainkitError, FileNotFoundError):
    """An ``offline:`` model or other asset whose package is not installed."""
