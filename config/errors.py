"""The one exception type for mistakes a user can make (paths, codes, band counts).

Entry scripts catch :class:`UserError`, print its one-sentence message and exit with
code 2, without a traceback. Anything else is a bug and keeps its traceback.
Ctrl-C ends a run with one line and exit status 130 (:func:`exit_on_user_error`), or,
run as a script, by SIGINT itself (:func:`run_script`), so a shell loop stops too.
"""
from __future__ import annotations

import functools
import logging
import os
import signal
import sys
import threading
import time
from typing import Callable, TypeVar

EXIT_USAGE = 2
EXIT_INTERRUPTED = 128 + signal.SIGINT     # 130, what shells report for Ctrl-C

T = TypeVar("T")
_sigint = {"first": False, "handled": False}


class UserError(Exception):
    """A problem with the user's input: the message names the value and the fix."""


class Interrupted(SystemExit):
    """Ctrl-C ended the run; exit status 130 (see :func:`run_script`)."""

    def __init__(self) -> None:
        super().__init__(EXIT_INTERRUPTED)


def user_message(err: BaseException) -> str:
    """The one sentence of a user error, also when it crossed a process boundary.

    A :class:`UserError` raised in a DataLoader worker or a spawned training process
    comes back with the other process's traceback in its text ("Caught UserError in
    DataLoader worker process 0. Original Traceback ..."); the sentence is its last line.
    """
    text = str(err).strip()
    if "Traceback (most recent call last)" in text:
        tag = "UserError: "
        at = text.rfind(tag)
        if at >= 0:
            return text[at + len(tag):].strip()
    return text


_written: list[str] = []


def note_written(path: object) -> None:
    """Record the last file completed atomically (config.atomic calls this), for the Ctrl-C message."""
    _written[:] = [str(path)]


def last_written() -> str | None:
    """The last file this process completed with config.atomic.atomic_write, if any."""
    return _written[0] if _written else None


def exit_on_user_error(fn: Callable[..., T]) -> Callable[..., T]:
    """Decorate an entry point: a :class:`UserError` becomes one line on stderr and exit 2;
    Ctrl-C becomes one line and :class:`Interrupted` (exit 130)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as err:
            logging.shutdown()
            print(f"error: {user_message(err)}", file=sys.stderr)
            sys.exit(EXIT_USAGE)
        except KeyboardInterrupt:
            _sigint["handled"] = True
            logging.shutdown()
            done = last_written()
            print("interrupted (Ctrl-C): " + (f"the last file written, {done}, is complete" if done else
                                              "no checkpoint was written") + "; nothing half-written was left behind",
                  file=sys.stderr)
            raise Interrupted() from None

    return wrapper


def _on_sigint(signum, frame) -> None:
    """Python's Ctrl-C handler, plus re-delivery when the KeyboardInterrupt gets lost.

    Python drops an exception raised inside an at-fork callback (a DataLoader forking its
    workers at the start of every epoch runs logging's), so a Ctrl-C at that instant would
    be ignored and training would go on. Until the interrupt reaches
    :func:`exit_on_user_error`, SIGINT is sent again every 2 s.
    """
    if not _sigint["first"]:
        _sigint["first"] = True
        threading.Thread(target=_redeliver, daemon=True).start()
    raise KeyboardInterrupt


def _quiet_lost_interrupt(unraisable) -> None:
    """A KeyboardInterrupt Python had to drop is not printed (with a traceback): it is re-sent."""
    if isinstance(unraisable.exc_value, KeyboardInterrupt):
        return
    sys.__unraisablehook__(unraisable)


def _redeliver() -> None:
    for _ in range(15):
        time.sleep(2.0)
        if _sigint["handled"]:
            return
        os.kill(os.getpid(), signal.SIGINT)


def run_script(main: Callable[[], object]) -> None:
    """``if __name__ == "__main__"`` body of an entry script.

    After Ctrl-C the process ends by SIGINT (as Python itself does), not by a plain exit
    130: a shell running the script in a loop then stops the loop instead of going on.
    """
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:     # not when Ctrl-C is ignored
        signal.signal(signal.SIGINT, _on_sigint)
        sys.unraisablehook = _quiet_lost_interrupt
    try:
        main()
    except Interrupted:
        sys.stdout.flush()
        sys.stderr.flush()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
        raise
