"""Ctrl-C while the ``dawin-fast`` command is still importing: one line, exit code 130.

The command's first ~2 s are imports (torch, open_clip), outside any ``try`` of
``dawin_fast.app.cli.main``; Python's default handler would print a 12-28-line traceback
there. The package root imports this module before anything else, which calls
``quiet_interrupts``; it acts only in a
process started as the command (the ``dawin-fast`` script, ``python -m dawin_fast`` or
``-m dawin_fast.app.cli``), never in a user's program that imports the library. ``main``
puts Python's default handler back once its own ``except KeyboardInterrupt`` is in place.

May import: nothing of dawin_fast (it runs before everything else).
"""

from __future__ import annotations

import os
import signal
import sys

EXIT_INTERRUPTED = 130  # as shells report SIGINT (dawin_fast.app.errors has the same)
COMMAND_MODULES = ("dawin_fast", "dawin_fast.app.cli")


def started_as_command() -> bool:
    """True in a process started as the dawin-fast command."""
    if sys.argv and os.path.basename(sys.argv[0]) == "dawin-fast":
        return True
    argv = list(getattr(sys, "orig_argv", ()))
    return any(arg == "-m" and argv[i + 1] in COMMAND_MODULES
               for i, arg in enumerate(argv[:-1]))


def _interrupted(signum, frame) -> None:
    if os.environ.get("RANK", "0") == "0":  # under torchrun rank 0 speaks
        sys.stderr.write("dawin-fast: interrupted\n")
        sys.stderr.flush()
    raise SystemExit(EXIT_INTERRUPTED)


def quiet_interrupts() -> None:
    """In the command's process, Ctrl-C during imports exits 130 with one line."""
    if started_as_command() and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _interrupted)


def restore_interrupts() -> None:
    """Python's default (KeyboardInterrupt) again, if ``quiet_interrupts`` replaced it."""
    if signal.getsignal(signal.SIGINT) is _interrupted:
        signal.signal(signal.SIGINT, signal.default_int_handler)


quiet_interrupts()
