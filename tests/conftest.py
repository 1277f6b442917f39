import os
import sys
import time
import warnings

import psutil
import pytest

# The party sites' fixtures (PostgreSQL server, site processes): tests/sitekit.py.
pytest_plugins = ("sitekit",)

# Party processes are spawned: they import the test modules and `multiparty` from here.
sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

# Every process this pytest starts inherits this mark, even one that leaves our process
# tree (a new session, a daemon re-parented to init): that is how leftovers are found.
RUN_MARK = "RAYFED_TEST_RUN"
os.environ[RUN_MARK] = f"{os.getpid()}"
LEFTOVER_GRACE_S = 10.0  # processes already on their way out get this long to go


def _ours() -> dict[int, psutil.Process]:
    """Live processes carrying this run's mark (zombies excluded)."""
    found = {}
    for proc in psutil.process_iter():
        if proc.pid == os.getpid():
            continue
        try:
            if proc.environ().get(RUN_MARK) == os.environ[RUN_MARK] \
                    and proc.status() != psutil.STATUS_ZOMBIE:
                found[proc.pid] = proc
        except psutil.Error:
            continue
    return found


# multiprocessing's helpers serve this pytest process for its whole life.
SESSION_HELPERS = ("multiprocessing.resource_tracker", "multiprocessing.forkserver")


def _session_helper(proc: psutil.Process) -> bool:
    try:
        return any(h in " ".join(proc.cmdline()) for h in SESSION_HELPERS)
    except psutil.Error:
        return True  # gone


def _started_by_test(proc: psutil.Process, before: set[int]) -> bool:
    """New, and not a child of something that predates the test (a module's Ray cluster
    starting workers on demand), nor one of multiprocessing's session helpers."""
    try:
        if proc.pid in before or any(a.pid in before for a in proc.parents()):
            return False
    except psutil.Error:
        return False
    return not _session_helper(proc)


def _describe(procs: list[psutil.Process]) -> str:
    lines = []
    for proc in procs:
        try:
            lines.append(f"  pid {proc.pid}: {' '.join(proc.cmdline())[:200]}")
        except psutil.Error:
            lines.append(f"  pid {proc.pid}: (gone)")
    return "\n".join(lines)


@pytest.fixture(autouse=True)
def no_processes_left_behind(request: pytest.FixtureRequest):
    """Fail a test whose processes outlive it, and kill them so the next test starts clean.

    Processes that existed before the test (a module-scoped Ray cluster) and their
    children are not counted.
    """
    before = set(_ours())
    yield
    deadline = time.monotonic() + LEFTOVER_GRACE_S
    while True:  # poll: processes on their way out (and their own children) may need a moment
        alive = [p for p in _ours().values() if _started_by_test(p, before)]
        if not alive:
            return
        if time.monotonic() >= deadline:
            break
        time.sleep(0.2)
    text = _describe(alive)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=5)
    pytest.fail(f"{request.node.nodeid} left processes behind:\n{text}", pytrace=False)


@pytest.fixture(scope="session", autouse=True)
def nothing_left_at_the_end():
    """After the last test (module-scoped clusters included): warn about, and kill, any
    process of this run that is still alive."""
    yield
    deadline = time.monotonic() + LEFTOVER_GRACE_S
    while (alive := [p for p in _ours().values() if not _session_helper(p)]) \
            and time.monotonic() < deadline:
        time.sleep(0.2)
    if alive:
        warnings.warn(f"processes of this test run left behind:\n{_describe(alive)}")
        for proc in alive:
            try:
                proc.kill()
            except psutil.Error:
                pass


@pytest.fixture
def port_lease():
    """Ports reserved for one test (fed/cli/ports.py), released when it ends."""
    from fed.cli.ports import PortLease

    with PortLease() as lease:
        yield lease
