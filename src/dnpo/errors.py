"""Exceptions that the CLI reports as one line, without a traceback."""

from dnpo.configbase import ConfigError


class DataError(ValueError):
    """Invalid input data; the message names the file, row or value and the fix."""


class JudgeError(RuntimeError):
    """A judge call failed in a way that cannot be retried."""


class JudgeStageError(RuntimeError):
    """Every item of a judge run failed; failures are not cached, so a rerun retries them."""


USER_ERRORS = (
    ConfigError,
    DataError,
    JudgeStageError,
    FileNotFoundError,
    PermissionError,
    NotADirectoryError,
)
