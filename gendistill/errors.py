"""Which exceptions are the user's to fix, and how they are printed: one line, no traceback."""

from __future__ import annotations


class UsageError(ValueError):
    """A command line that cannot be parsed (unknown flag, bad value); argparse's error, as an exception."""


USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, PermissionError, FloatingPointError, OSError)


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none): for one-line errors that wrap it."""
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def format_error(e: BaseException) -> str:
    text = first_line(e)
    if isinstance(e, KeyError):
        text = f"missing {text}"
    return f"error: {text}"
