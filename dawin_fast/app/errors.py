"""The user-error type of the command line and its exit codes.

A ``UserError`` is a mistake in what the user gave us (an argument, a file, a shape, a
device, a class count). Its message is one line that names the culprit and says what was
expected; the CLI prints it and exits with ``EXIT_USER``. Anything else that escapes a
command is a bug or an unforeseen failure of the environment: one line too, ``EXIT_INTERNAL``,
and the traceback only with ``--debug`` or ``DAWIN_FAST_DEBUG=1``.
"""

from __future__ import annotations

import os

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USER = 2  # also argparse's code for usage errors
EXIT_INTERRUPTED = 130  # Ctrl-C, as shells report SIGINT

DEBUG_ENV = "DAWIN_FAST_DEBUG"


class UserError(ValueError):
    """A user mistake; the message is one line naming the culprit and what was expected."""


def debug_requested(flag: bool = False) -> bool:
    """``--debug`` given, or ``DAWIN_FAST_DEBUG`` set to anything but empty/0/false/no."""
    env = os.environ.get(DEBUG_ENV, "").strip().lower()
    return flag or env not in ("", "0", "false", "no")


def one_line(text: str) -> str:
    """The first non-blank line of ``text`` (messages from other libraries can be long)."""
    for line in str(text).splitlines():
        if line.strip():
            return line.strip()
    return ""
