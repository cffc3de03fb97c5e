"""Which exceptions are the user's to fix, and how they are printed: one line, no traceback."""

from __future__ import annotations

USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, PermissionError, FloatingPointError, OSError)


def format_error(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if isinstance(e, KeyError):
        text = f"missing {text}"
    return f"error: {text}"
