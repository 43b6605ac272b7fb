"""Errors caused by the user's input, reported as one line by the CLI instead of a traceback."""


class UserError(Exception):
    """A mistake the user can fix (bad path, bad format, unknown model or hyperparameter)."""


class DataError(UserError):
    """A data file that cannot be read as any supported format; the message names the file."""
