"""The receiver's accounting of what peers make it hold (fed/transport/budget.py).

In-process, no Ray: real threads contend for the budget and the large-frame slots.
"""
from __future__ import annotations

import threading
import time

import pytest

from fed.transport.budget import FrameSlots, PeerBudget

SMALL = 4096


@pytest.mark.timeout(60)
def test_a_peer_decodes_one_large_frame_at_a_time_and_other_peers_are_not_held_up() -> None:
    slots = FrameSlots(SMALL)
    later = time.monotonic() + 30
    order: list[str] = []
    with slots.hold("mallory", SMALL + 1, later) as release:
        with slots.hold("mallory", SMALL, later):  # small frames never wait
            order.append("small")
        with slots.hold("alice", 10 * SMALL, later):  # another peer has its own slot
            order.append("alice")

        def second() -> None:
            with slots.hold("mallory", 10 * SMALL, time.monotonic() + 30):
                order.append("second")

        waiter = threading.Thread(target=second)
        waiter.start()
        waiter.join(0.3)
        assert waiter.is_alive() and order == ["small", "alice"]
        release()  # e.g. a MSG header whose bookkeeping is charged
        waiter.join(10)
        release()  # releasing twice frees nothing the second holder took
        assert order == ["small", "alice", "second"]


@pytest.mark.timeout(60)
def test_a_large_frame_waits_no_longer_than_its_deadline_or_the_receiver() -> None:
    slots = FrameSlots(SMALL)
    with slots.hold("mallory", SMALL + 1, time.monotonic() + 30):
        with pytest.raises(TimeoutError), slots.hold("mallory", SMALL + 1,
                                                      time.monotonic() + 0.2):
            pass
        errors: list[BaseException] = []

        def waiting() -> None:
            try:
                with slots.hold("mallory", SMALL + 1, time.monotonic() + 60):
                    pass
            except TimeoutError as exc:
                errors.append(exc)

        waiter = threading.Thread(target=waiting)
        waiter.start()
        slots.close()  # the receiver stops: waiting connections end now
        waiter.join(10)
        assert not waiter.is_alive() and len(errors) == 1


@pytest.mark.timeout(60)
def test_declared_bookkeeping_must_fit_the_budget_unless_its_barrier_waits() -> None:
    budget = PeerBudget(1000)
    value = budget.admit(("mallory", 0), 10, timeout_s=1)
    # More than the whole budget: refused at once (waiting an hour would fail the test).
    assert not budget.charge(value, 1001, timeout_s=3600, oldest_may_exceed=False)
    assert budget.charge(value, 1001, timeout_s=1)  # received bytes: the oldest may cross
    budget.settle(value, keep=False)
    assert budget.held() == {}
    budget.awaiting(("alice", 3), True)
    awaited = budget.admit(("alice", 3), 10, timeout_s=1)
    assert budget.charge(awaited, 5000, timeout_s=1, oldest_may_exceed=False)
