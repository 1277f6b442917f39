"""Worker threads the transport owns, for blocking socket work driven from an asyncio loop.

Not a `concurrent.futures` executor: those refuse new work once interpreter exit
begins, and a driver that ends without `fed.shutdown()` must still push values that
become ready during its at-exit flush. The threads are daemons, so a peer that
never answers cannot keep the process alive after the flush gave up.
"""
from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from typing import Any


def _settle(fut: asyncio.Future, ok: bool, result: Any) -> None:
    if fut.cancelled():
        return
    if ok:
        fut.set_result(result)
    else:
        fut.set_exception(result)


class WorkerThreads:
    """`count` threads taking calls from one queue; results come back on the caller's loop."""

    def __init__(self, name: str, count: int) -> None:
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
            for i in range(max(1, count))
        ]
        for thread in self._threads:
            thread.start()

    def run(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future:
        """Queue `fn(*args)`; await the returned future for its result or error."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._queue.put((loop, fut, fn, args))
        return fut

    def close(self) -> None:
        """Let each thread end after its current call (calls still queued are dropped)."""
        while True:
            try:
                _loop, fut, _fn, _args = self._queue.get_nowait()
            except queue.Empty:
                break
            except (TypeError, ValueError):
                continue
            fut.get_loop().call_soon_threadsafe(fut.cancel)
        for _ in self._threads:
            self._queue.put(None)

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            loop, fut, fn, args = item
            try:
                ok, result = True, fn(*args)
            except BaseException as exc:  # handed to the awaiting coroutine
                ok, result = False, exc
            try:
                loop.call_soon_threadsafe(_settle, fut, ok, result)
            except RuntimeError:  # the loop is closed: nobody awaits this any more
                pass
