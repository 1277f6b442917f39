"""Per-process state shared by threads: counters and one-time initialisation."""
from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from fed._context import FedContext


@pytest.fixture
def ctx():
    return FedContext(config=None, transport=None, log=None)  # type: ignore[arg-type]


@pytest.fixture(autouse=True)
def eager_thread_switches():
    """Switch threads as often as possible so that an unlocked read-modify-write loses."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(before)


def run_threads(n: int, target: Callable[[], Any]) -> None:
    start = threading.Barrier(n)

    def body() -> None:
        start.wait()
        target()

    threads = [threading.Thread(target=body) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def test_ordinals_and_seq_ids_are_unique_across_threads(ctx) -> None:
    ordinals: list[int] = []
    seq_ids: list[int] = []

    def draw() -> None:
        for _ in range(20000):
            ordinals.append(ctx.next_ordinal("alice", "bob"))
            seq_ids.append(ctx.next_seq_id())

    run_threads(8, draw)
    assert sorted(ordinals) == list(range(8 * 20000))
    assert sorted(seq_ids) == list(range(1, 8 * 20000 + 1))


def test_made_once_makes_once_when_threads_ask_together(ctx) -> None:
    class Holder:
        made = None

    holder, calls, got = Holder(), [], []

    def make() -> object:
        calls.append(1)
        time.sleep(0.01)  # widen the window in which a second thread could also make one
        return object()

    run_threads(16, lambda: got.append(ctx.made_once(holder, "made", make)))
    assert len(calls) == 1 and all(g is holder.made for g in got)
