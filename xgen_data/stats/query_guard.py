"""Stop a DuckDB query cleanly: on Ctrl-C / SIGTERM, past a time limit, or when its spill folder outgrows a cap.

DuckDB runs a query inside one C call; Python signal handlers wait for it to return, so a runaway query
(a recursive CTE without end) ignores Ctrl-C, and DuckDB stores ``max_temp_directory_size`` but does not
enforce it for every operator (a window over 60M rows spilled 1.8 GB past a 100 MB cap). :func:`guard` runs
a watcher thread beside the query that calls DuckDB's own ``con.interrupt()`` (thread-safe; the running
statement or fetch raises ``duckdb.InterruptException`` and the connection stays usable):

* a signal: ``signal.set_wakeup_fd`` has the interpreter's C-level handler write a byte to a pipe the
  watcher waits on, so the query is interrupted within :data:`POLL_SECONDS` even while the main thread is
  blocked inside DuckDB;
* a time limit: ``timeout`` seconds after the guard starts;
* a spill cap: the bytes allocated on disk (``st_blocks``) by the files under the spill folder, measured
  every :data:`POLL_SECONDS`; a query stops within that time of passing the cap (DuckDB writes at most a
  few hundred MB in that time, so the cap is approximate by that much, never ignored).

Python code between DuckDB calls is not stopped by the signal (the guard's handler only records it and
interrupts DuckDB): the block ends at its next DuckDB call, or at its end, with the same error. On the way
out, the interrupt becomes the project's error (exit codes of docs/cli.md): ``Interrupted`` (130)
for a signal, :class:`SpillLimitError` / :class:`QueryTimeout` (``ProblemFound``, 1) for the others.
"""
from __future__ import annotations

import contextlib
import os
import select
import signal
import threading
import time
from collections.abc import Iterator

from xgen_data.errors import Interrupted, ProblemFound

#: How often the watcher measures the spill folder and the clock (seconds).
POLL_SECONDS = 0.05


class SpillLimitError(ProblemFound):
    """A query stopped because its spill folder outgrew the cap (``XGEN_DUCKDB_SPILL``)."""


class QueryTimeout(ProblemFound):
    """A query stopped at its time limit (``--timeout``)."""


def folder_bytes(folder: str) -> int:
    """Bytes allocated on disk by the files under ``folder`` (``st_blocks * 512``; 0 when it is absent)."""
    total = 0
    for d, _, files in os.walk(folder):
        for f in files:
            with contextlib.suppress(FileNotFoundError):
                total += os.stat(os.path.join(d, f)).st_blocks * 512
    return total


class _Watcher:
    """The thread that interrupts ``con`` (see the module docstring); ``reason`` says why it did."""

    def __init__(self, con, spill_folder: str | None, spill_cap: int | None, timeout: float | None,
                 wake_fd: int | None) -> None:
        self.con, self.spill_folder, self.spill_cap, self.timeout = con, spill_folder, spill_cap, timeout
        self.wake_fd = wake_fd
        self.reason: str | None = None
        self.signal_name: str | None = None
        self.peak = 0
        self._done = threading.Event()
        self._start = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="duckdb-guard", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._done.set()
        self._thread.join()

    def interrupt(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
        with contextlib.suppress(Exception):  # a connection already closed has nothing to stop
            self.con.interrupt()

    def _run(self) -> None:
        while not self._done.is_set():
            if self.wake_fd is not None:
                ready, _, _ = select.select([self.wake_fd], [], [], POLL_SECONDS)
                if ready:
                    with contextlib.suppress(BlockingIOError):
                        data = os.read(self.wake_fd, 64)
                        if data:
                            self.signal_name = signal.Signals(data[-1]).name
                    self.interrupt("signal")
            else:
                self._done.wait(POLL_SECONDS)
            if self.timeout is not None and time.monotonic() - self._start > self.timeout:
                self.interrupt("timeout")
            if self.spill_cap is not None and self.spill_folder:
                self.peak = max(self.peak, folder_bytes(self.spill_folder))
                if self.peak > self.spill_cap:
                    self.interrupt("spill")


@contextlib.contextmanager
def _signals_to(watcher: _Watcher, write_fd: int) -> Iterator[None]:
    """While active (main thread only): SIGINT / SIGTERM wake the watcher, which interrupts the query."""
    def handler(signum, frame) -> None:  # runs once the main thread is back in Python code
        watcher.signal_name = signal.Signals(signum).name
        watcher.interrupt("signal")  # not raising here: DuckDB's own InterruptException unwinds cleanly

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    old_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    try:
        yield
    finally:
        signal.set_wakeup_fd(old_fd)
        for s, h in old.items():
            signal.signal(s, h)


@contextlib.contextmanager
def guard(con, *, spill_folder: str | None = None, spill_cap: int | None = None, timeout: float | None = None,
          what: str = "the query") -> Iterator[None]:
    """Run the DuckDB work inside the ``with`` block so that it can be stopped (module docstring).

    Args:
        con: the DuckDB connection the block uses.
        spill_folder, spill_cap: the connection's ``temp_directory`` and its cap in bytes (None: no cap).
        timeout: seconds (None: no limit).
        what: names the work in the errors (``"the query"``, ``"dedup's DuckDB phase"``).
    Raises:
        Interrupted: SIGINT or SIGTERM arrived (exit 130).
        SpillLimitError: the spill folder outgrew ``spill_cap`` (names the folder, the cap, how to go on).
        QueryTimeout: ``timeout`` passed.
    """
    in_main = threading.current_thread() is threading.main_thread()
    read_fd = write_fd = None
    if in_main:
        read_fd, write_fd = os.pipe()
        os.set_blocking(read_fd, False)
        os.set_blocking(write_fd, False)
    watcher = _Watcher(con, spill_folder, spill_cap, timeout, read_fd)
    watcher.start()
    try:
        with (_signals_to(watcher, write_fd) if in_main else contextlib.nullcontext()):
            yield
    except Exception as exc:
        if watcher.reason is None:
            raise
        raise _error(watcher, what, spill_folder, spill_cap, timeout) from exc
    finally:
        watcher.stop()
        for fd in (read_fd, write_fd):
            if fd is not None:
                os.close(fd)
    if watcher.reason is not None:  # interrupted after the last DuckDB call returned: still how it ended
        raise _error(watcher, what, spill_folder, spill_cap, timeout)


def _error(watcher: _Watcher, what: str, spill_folder, spill_cap, timeout) -> Exception:
    if watcher.reason == "signal":
        return Interrupted(f"{what} was interrupted by {watcher.signal_name or 'a signal'}; its output (if any) "
                           "stops here")
    if watcher.reason == "timeout":
        return QueryTimeout(f"{what} was stopped after --timeout {timeout:g} s; give it more time, or query less")
    return SpillLimitError(f"{what} was stopped: it spilled {watcher.peak / 1e6:,.0f} MB to {spill_folder}, over "
                           f"the cap of {spill_cap / 1e6:,.0f} MB (XGEN_DUCKDB_SPILL; or more memory with "
                           "XGEN_DUCKDB_MEMORY); raise it if the disk has room, or query less")
