"""RayFed's contract for `exit_on_sending_failure=True` with a `sending_failure_handler`:
when a send finally fails, the handler runs and the process exits with status 1, even
while its main thread is blocked, and no Ray process of that driver is left behind.

Each form runs as its own driver script in its own session, so every process it
starts can be found afterwards.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

pytestmark = pytest.mark.timeout(180)

TESTS = os.path.dirname(os.path.abspath(__file__))

SCRIPT = textwrap.dedent("""
    import signal, sys, time
    sys.path.insert(0, {tests!r})
    import fed
    from multiparty import start_ray

    @fed.remote
    def produce(x):
        return x

    @fed.remote
    def add(a, b):
        return a + b

    def handler(error):
        with open({marker!r}, "w") as f:
            f.write(type(error).__name__ + ": " + str(error))

    before = signal.getsignal(signal.SIGINT)
    start_ray(num_cpus=1)
    # bob never starts: the push to it fails once timeout_in_ms is spent.
    fed.init(addresses={addresses!r}, party="alice", sending_failure_handler=handler,
             config={{"cross_silo_comm": {{"exit_on_sending_failure": True,
                                           "timeout_in_ms": 2000}}}})
    assert signal.getsignal(signal.SIGINT) is before
    total = add.party("bob").remote(produce.party("alice").remote(1), 1)
    form = {form!r}
    if form == "sleep":
        time.sleep(120)
    elif form == "fed.get":
        fed.get(total)
    else:  # user code that never returns to the interpreter's signal checks for long
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            sum(range(10000))
    print("NOT EXITED")
    sys.exit(3)
""")


def _session_processes(sid: int) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if os.getsid(proc.pid) == sid and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return found


@pytest.mark.parametrize("form", ["sleep", "fed.get", "busy"])
def test_failed_send_runs_handler_and_exits_1_while_main_thread_blocks(form, tmp_path, port_lease):
    marker = tmp_path / "handler.txt"
    script = SCRIPT.format(tests=TESTS, marker=str(marker), form=form,
                           addresses=port_lease.addresses(["alice", "bob"]))
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-c", script], start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = proc.communicate(timeout=100)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
    took = time.monotonic() - started
    deadline = time.monotonic() + 20
    left = _session_processes(proc.pid)
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = _session_processes(proc.pid)
    names = [p.name() for p in left]
    for p in left:
        p.kill()
    assert proc.returncode == 1, out[-3000:]
    assert "NOT EXITED" not in out
    assert marker.exists(), out[-3000:]
    text = marker.read_text()
    assert "FedTransportError" in text and "'bob'" in text, text
    assert names == [], names
    print(f"\nRELIABILITY | exit_on_sending_failure, main thread in {form} | "
          f"handler ran, exit status 1 after {took:.1f} s, no process left")
