"""RayFed's send-failure contract: `sending_failure_handler` and `exit_on_sending_failure`.

When a send finally fails, the handler runs on a thread of its own (the sender's loop
keeps going) and, with `exit_on_sending_failure`, the process then ends with status 1
even if the main thread is blocked in `time.sleep`, `fed.get` or user code. It ends
with `os._exit(1)` after stopping the processes this driver started (its local Ray
cluster) and flushing logs: no signal handler is installed, so the application's own
handlers stay untouched, and no `atexit` handler or `finally` block of the main
thread runs.
"""
from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable

from fed.errors import FedError

_KILL_WAIT_S = 5.0


class SendFailurePolicy:
    """One per fed.init: decides what a finally-failed send does to the process."""

    def __init__(
        self,
        handler: Callable[[Exception], None] | None,
        exit_on_failure: bool,
        log: logging.LoggerAdapter,
    ) -> None:
        self._handler = handler
        self._exit = exit_on_failure
        self._log = log
        self._lock = threading.Lock()
        self._reported: list[BaseException] = []  # errors whose handler already ran
        self._stopping = False
        self._exiting = False

    def report(self, error: FedError) -> None:
        """A send failed for good (called on the sender's loop thread; never blocks it)."""
        with self._lock:
            if self._stopping or self._exiting:
                return  # fed.shutdown reports what fails while it flushes
            self._reported.append(error)
        if self._handler is None and not self._exit:
            return
        threading.Thread(target=self._handle, args=(error,), name="fed-send-failure",
                         daemon=True).start()

    def _handle(self, error: FedError) -> None:
        self._run_handler(error)
        if self._exit:
            self.exit_now(error)

    def _run_handler(self, error: BaseException) -> None:
        if self._handler is None:
            return
        try:
            self._handler(error)
        except Exception:
            self._log.exception("sending_failure_handler raised")

    def exit_now(self, error: BaseException) -> None:
        """End the process with status 1, whatever the main thread is doing."""
        with self._lock:
            if self._exiting:
                return
            self._exiting = True
        self._log.error("exiting with status 1 (exit_on_sending_failure): %s", error)
        _kill_descendants()
        for handler in logging.getLogger("fed").handlers + logging.getLogger().handlers:
            try:
                handler.flush()
            except Exception:
                pass
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(1)

    def at_shutdown(self, failures: list[BaseException]) -> bool:
        """fed.shutdown found `failures`: run the handler for those not reported yet.
        Returns whether the process must exit (status 1)."""
        with self._lock:
            self._stopping = True
            fresh = [f for f in failures if not any(f is r for r in self._reported)]
        for failure in fresh:
            self._run_handler(failure)
        return bool(failures) and self._exit


def _kill_descendants() -> None:
    """Stop the processes this driver started (a local Ray cluster: GCS, raylet, workers,
    agents). `ray.shutdown()` cannot be used here: called beside a main thread blocked in
    `ray.get`, Ray ends the process itself with status 0. A driver attached to an existing
    cluster has no such children, so nothing of that cluster is touched."""
    try:
        import psutil

        children = psutil.Process().children(recursive=True)
    except Exception:
        return
    for child in children:
        try:
            child.kill()
        except Exception:
            pass
    try:
        psutil.wait_procs(children, timeout=_KILL_WAIT_S)
    except Exception:
        pass
