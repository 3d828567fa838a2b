"""Errors a user can fix from the message alone: the CLI prints them as one line, never a traceback.

Every such class derives from `UserError` (as well as its natural base: ValueError, OSError...), so
`mambaft CMD` knows which errors are "known" (one line, exit 2) and which are bugs (a traceback).
"""
from __future__ import annotations


class UserError(Exception):
    """A known, explained failure: bad input, a busy or damaged run folder, a full disk."""


class DataError(UserError, ValueError):
    """A data file or prepared dataset cannot be used (the message names the file and why)."""


class RunLockError(UserError, RuntimeError):
    """Another live process is writing the same run folder (the message names its PID and host)."""


class DiskFullError(UserError, OSError):
    """The disk filled up while writing; earlier files were left intact (the message lists them)."""
