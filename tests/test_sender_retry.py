"""The sender against real receivers: a peer still running the previous job on the port
(refusal `job_not_running`) is retried within the deadline, not failed at once."""
from __future__ import annotations

import time

import pytest
import ray
from multiparty import start_ray
from securitykit import MIB, start_receiver, start_sender

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module", autouse=True)
def cluster():
    start_ray(num_cpus=2, object_store_memory=256 * MIB)
    yield
    ray.shutdown()


def test_peer_still_running_the_previous_job_is_waited_for():
    from fed.transport.receiver import ReceiverProxy

    parties = ["alice", "bob"]
    old, port = start_receiver("bob", "job-1", parties)
    sender = start_sender("alice", "job-2", {"bob": port})
    started = time.monotonic()
    answer = sender.ping_all.remote(30.0)  # fed.init's barrier_on_initializing
    deadline = time.monotonic() + 20
    while ray.get(sender.stats.remote())["refused"] < 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert ray.get(sender.stats.remote())["refused"] >= 1, "job-1 never refused job-2"
    ray.get(old.stop.remote())  # job-1 ends; job-2's receiver takes the port
    ray.kill(old)
    new = ray.remote(ReceiverProxy).options(num_cpus=0, max_concurrency=100).remote(
        "bob", "job-2", parties, "127.0.0.1", port, None, None, None, 4 * MIB)
    ray.get(new.start.remote())
    assert ray.get(answer) == {}
    print(f"\nLIFECYCLE | bob still runs the previous job when alice starts | "
          f"alice's barrier passed {time.monotonic() - started:.1f} s later, once bob's new job listened")


def test_a_small_max_concurrency_cannot_starve_the_receivers_control_calls() -> None:
    from fed.transport.tcp import MIN_RECEIVER_CONCURRENCY, receiver_concurrency

    assert receiver_concurrency(None) == 10000
    assert receiver_concurrency(10) == MIN_RECEIVER_CONCURRENCY  # e.g. from a RayFed config
    assert receiver_concurrency(50000) == 50000
