"""Exceptions that the CLI reports as one line, without a traceback."""

from dnpo.configbase import ConfigError


class DataError(ValueError):
    """Invalid input data; the message names the file, row or value and the fix."""


class JudgeError(RuntimeError):
    """A judge call failed in a way that cannot be retried."""


USER_ERRORS = (ConfigError, DataError, FileNotFoundError, PermissionError, NotADirectoryError)
