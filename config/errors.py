"""The one exception type for mistakes a user can make (paths, codes, band counts).

Entry scripts catch :class:`UserError`, print its one-sentence message and exit with
code 2, without a traceback. Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import functools
import logging
import sys
from typing import Callable, TypeVar

EXIT_USAGE = 2

T = TypeVar("T")


class UserError(Exception):
    """A problem with the user's input: the message names the value and the fix."""


def exit_on_user_error(fn: Callable[..., T]) -> Callable[..., T]:
    """Decorate an entry point: a :class:`UserError` becomes one line on stderr and exit 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as err:
            logging.shutdown()
            print(f"error: {err}", file=sys.stderr)
            sys.exit(EXIT_USAGE)

    return wrapper
