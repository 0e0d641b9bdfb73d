"""The project's exceptions: one hierarchy, each class mapped to one documented exit code (docs/cli.md).

Every error the library raises on purpose is an :class:`XgenError`; the CLI prints it as one line
(``Error: <message>``) and exits with the class's ``exit_code``. Any other exception is a bug: the CLI
says so in one line and writes the traceback to a file. The classes also derive from ``ValueError`` so
that library callers catching ``ValueError`` keep working.

Exit codes (docs/cli.md):

=====  =====================================================================================
0      done
1      the command ran and found a problem (``xgen verify`` found damage; a run stopped
       because every update was non-finite; an environment failure such as a full disk)
2      usage: a wrong option or argument, or an action refused as asked (a folder holding
       files xgen did not write, a second writer on a locked run folder, a write query)
3      bad or damaged input: a record, file, recipe or data set that cannot be used as it is
130    interrupted (SIGINT / SIGTERM) after a clean stop (training: a checkpoint saved)
4      internal error (a bug); the traceback's file is named
=====  =====================================================================================
"""
from __future__ import annotations

import difflib

EXIT_OK = 0
EXIT_PROBLEM = 1
EXIT_USAGE = 2
EXIT_INPUT = 3
EXIT_BUG = 4
EXIT_INTERRUPTED = 130


class XgenError(ValueError):
    """Base of every error xgen raises on purpose; ``exit_code`` is what the CLI exits with."""

    exit_code = EXIT_INPUT


class InputError(XgenError):
    """Bad input: a record, file, option value or recipe that cannot be used (names file, line or key)."""

    exit_code = EXIT_INPUT


class DamagedDataError(XgenError):
    """Stored data whose checksum or structure does not match what was recorded (names the file)."""

    exit_code = EXIT_INPUT


class RefusedError(XgenError):
    """An action refused as asked: it would damage data or collide with another writer (says what works)."""

    exit_code = EXIT_USAGE


class ProblemFound(XgenError):
    """The command ran to its end and found a problem it reports (damage found, a run that did not learn)."""

    exit_code = EXIT_PROBLEM


class Interrupted(XgenError):
    """Stopped by a signal after a clean stop (e.g. a checkpoint saved); the message says how to go on."""

    exit_code = EXIT_INTERRUPTED


def unknown_key(key: str, known) -> str:
    """``unknown key 'x'``, plus ``, did you mean 'y'?`` when a known key is close to it (difflib's ratio >= 0.6):
    the message for a misspelt recipe or parameter key."""
    close = difflib.get_close_matches(key, sorted(known), n=1)
    return f"unknown key {key!r}" + (f", did you mean {close[0]!r}?" if close else "")
