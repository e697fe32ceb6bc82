"""Errors raised for bad input.

Every message says what and where, what was expected, and the fix. The CLI prints the message as one line and
exits non-zero; tracebacks only with ``--verbose``.
"""

from __future__ import annotations


class FlairLakeError(Exception):
    """Base class of every error flair-lake raises for bad input or state."""

    exit_code = 1


class RawFormatError(FlairLakeError, ValueError):
    """A raw FLAIR file or tree does not have the expected layout or content."""


class RawTreeNotFoundError(FlairLakeError, FileNotFoundError):
    """The raw root does not exist or holds no FLAIR tree."""


class LakeNotFoundError(FlairLakeError, FileNotFoundError):
    """No lake at the given path."""


class LakeStateError(FlairLakeError, RuntimeError):
    """The lake exists but cannot be used as asked (wrong schema, missing view, ...)."""


class CorruptMetadataError(LakeStateError):
    """A lake's metadata file cannot be parsed (truncated, padded, overwritten)."""


class TargetNotWritableError(FlairLakeError, PermissionError):
    """The output location cannot be written."""


class UsageError(FlairLakeError, ValueError):
    """An option value is out of range or options contradict each other."""

    exit_code = 2
