"""Stopping a `pamap` command when asked: SIGINT (Ctrl-C), SIGTERM (`kill`, `timeout`, a process
manager, a container stop) or SIGHUP (the terminal closed). No Dagster import.

A command's main thread turns the first of these signals into `Interrupted`, unwinds (atomic
writes remove their temporary files, servers are stopped) and exits with 128 + the signal's
number. Work that executes Dagster runs in process goes through `run_stoppable`: Dagster
replaces the signal handlers of the thread that executes a run, and turns an interrupt inside a
step that has a retry policy into a retry of that step, so such work runs in a worker thread and
the main thread keeps the signals.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Generator
from contextlib import contextmanager
from types import FrameType
from typing import TypeVar

T = TypeVar("T")
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# How long the work may take to unwind after a stop signal before the process exits anyway.
GRACE_S = 10.0


class Interrupted(BaseException):  # noqa: N818  (named for what happened, like KeyboardInterrupt)
    """A stop signal arrived. A BaseException, like KeyboardInterrupt, so that `except Exception`
    does not swallow it; not a KeyboardInterrupt, so that Dagster does not retry the step it
    interrupts."""

    def __init__(self, signum: int | None = None) -> None:
        # Raised in a worker thread without arguments: the signal is the one received.
        if signum is None:
            signum = _stop_signal[0] if _stop_signal else signal.SIGINT
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_status(self) -> int:
        """What a shell reports for a process ended by the signal."""
        return 128 + self.signum


_stop = threading.Event()
_stop_signal: list[int] = []


def stop_requested() -> Interrupted | None:
    """The pending stop, once a stop signal arrived during `run_stoppable`, else None."""
    return Interrupted(_stop_signal[0]) if _stop.is_set() else None


@contextmanager
def raise_on_stop_signals() -> Generator[None]:
    """While inside, each stop signal raises `Interrupted` in the main thread."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise Interrupted(signum)

    previous = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


@contextmanager
def ignoring_stop_signals() -> Generator[None]:
    """While inside, stop signals are ignored: for cleanup that a second Ctrl-C must not cut
    short (it is bounded in time)."""
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _raise_in(thread: threading.Thread) -> None:
    """Raise `Interrupted` in `thread` at its next Python instruction (CPython's
    PyThreadState_SetAsyncExc: a long native call, e.g. one torch operation, finishes first)."""
    assert thread.ident is not None
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread.ident), ctypes.py_object(Interrupted)
    )


def run_stoppable(
    work: Callable[[], T],
    on_stop: Callable[[int], None],
    on_abandon: Callable[[int], None],
    grace_s: float = GRACE_S,
) -> T:
    """Run `work` in a worker thread; the main thread waits for it and handles stop signals.

    On the first stop signal: `on_stop(signum)` (e.g. mark the runs in progress as canceling),
    then `Interrupted` is raised inside the worker, which unwinds and returns or raises;
    `stop_requested()` tells it a stop is pending where a library caught the exception. Whatever
    the work ended with, this then raises `Interrupted`. If it has not ended `grace_s` after the
    signal, or on a second signal, `on_abandon(signum)` runs and the process exits at once with
    128 + the signal's number.
    """
    outcome: dict[str, T] = {}
    errors: list[BaseException] = []

    def target() -> None:
        try:
            outcome["value"] = work()
        except BaseException as exc:  # handed to the main thread
            errors.append(exc)

    worker = threading.Thread(target=target, name="pamap-work", daemon=True)
    _stop.clear()
    _stop_signal.clear()
    stopped_at: list[float] = []

    def abandon(signum: int) -> None:
        try:
            on_abandon(signum)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(128 + signum)

    def handler(signum: int, frame: FrameType | None) -> None:
        if _stop.is_set():
            abandon(_stop_signal[0])
        _stop_signal.append(signum)
        stopped_at.append(time.monotonic())
        _stop.set()
        try:
            on_stop(signum)
        except Exception as exc:  # the work must still be stopped; settling comes after it
            print(f"while stopping: {exc}", file=sys.stderr)
        if worker.is_alive():
            _raise_in(worker)

    previous = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
    try:
        worker.start()
        while worker.is_alive():
            # Short waits: the handler runs between them, and the grace period is checked.
            worker.join(0.2)
            if stopped_at and time.monotonic() - stopped_at[0] > grace_s:
                abandon(_stop_signal[0])
        if _stop.is_set():
            raise Interrupted(_stop_signal[0])
        if errors:
            raise errors[0]
        return outcome["value"]
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
