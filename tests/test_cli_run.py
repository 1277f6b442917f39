"""Tests of `fed run` with real processes and throwaway scripts (no Ray, no fed runtime)."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from fed.cli.ports import ephemeral_range, lock_dir

REPO = Path(__file__).resolve().parents[1]


def fed_env() -> dict[str, str]:
    """Environment that lets `python -m fed.cli.main` import this checkout."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    for var in ("RAYFED_MODE", "RAYFED_TLS_DIR", "RAYFED_ADDRESSES", "RAYFED_PARTY",
                "RAYFED_JOB_NAME"):
        env.pop(var, None)
    return env


def fed(*args: str, timeout: float = 45) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fed.cli.main", *args],
        env=fed_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def fed_popen(*args: str, out: Path) -> subprocess.Popen:
    fh = open(out, "wb")
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "fed.cli.main", *args], env=fed_env(), stdout=fh, stderr=subprocess.STDOUT
        )
    finally:
        fh.close()


def write_script(tmp_path: Path, body: str, name: str = "party.py") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


def alive(pid: int) -> bool:
    """True if pid runs; zombies (orphans nobody reaped yet) count as gone."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_for(pred: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return pred()


# Stopping takes at most the grace period (5 s) plus a few seconds of start-up and
# polling; three times that is a bound a loaded machine cannot break without a bug.
SANITY_BOUND_S = 30.0


def report_time(what: str, seconds: float) -> None:
    """Print the measured figure; fail only past the generous sanity bound."""
    print(f"[timing] {what}: {seconds:.2f} s")
    assert seconds < SANITY_BOUND_S, f"{what} took {seconds:.1f} s"


def read_pids(pid_dir: Path) -> list[int]:
    pids: list[int] = []
    for f in pid_dir.glob("*.json"):
        pids.extend(json.loads(f.read_text()))
    return pids


# A party that records its pid and two grandchildren (one in its session, one
# that escaped into a new session, as daemons do) and then sleeps for 600 s.
SLEEPER = """
    import json, os, subprocess, sys, time
    party, pid_dir = sys.argv[1], sys.argv[2]
    kids = [
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"]),
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True),
    ]
    print("sleeping", party, flush=True)
    tmp = os.path.join(pid_dir, party + ".tmp")
    with open(tmp, "w") as f:
        json.dump([os.getpid()] + [k.pid for k in kids], f)
    os.rename(tmp, os.path.join(pid_dir, party + ".json"))
    time.sleep(600)
"""


@pytest.mark.timeout(60)
def test_two_parties_prefixed_output_and_addresses(tmp_path: Path) -> None:
    script = write_script(
        tmp_path,
        """
        import fcntl, json, os, socket, sys
        party = sys.argv[1]
        addrs = json.loads(os.environ["RAYFED_ADDRESSES"])
        print("NAME", party, os.environ["RAYFED_PARTY"], os.environ.get("PYTHONUNBUFFERED"))
        print("ARGS", json.dumps(sys.argv[2:]))
        print("ADDR", json.dumps(addrs))
        print("PID", os.getpid())
        host, port = addrs[party].rsplit(":", 1)
        fd = os.open(os.path.join(LOCK_DIR, port + ".lock"), os.O_RDONLY)
        try:  # `fed run` holds the port's lock while we run: no other run can pick it
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            print("UNLOCKED", port, file=sys.stderr)
        except BlockingIOError:
            print("LOCKED", port, file=sys.stderr)
        s = socket.socket(); s.bind((host, int(port))); s.listen(); s.close()
        for i in range(500):
            print("line", i, "x" * 300)
        sys.stdout.write("tail-without-newline")
        """.replace("LOCK_DIR", repr(str(lock_dir()))),
    )
    res = fed("run", str(script), "--parties", "alice,bob", "--", "--lr", "0.1", "--", "z")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    # Every line whole and prefixed: no mid-line interleaving of the two parties.
    for line in lines:
        assert re.fullmatch(
            r"\((alice|bob)\) (NAME .*|ARGS .*|ADDR .*|PID \d+|LOCKED \d+|line \d+ x{300}|tail-without-newline)",
            line,
        ), line
    for party in ("alice", "bob"):
        assert f"({party}) NAME {party} {party} 1" in lines
        assert f'({party}) ARGS ["--lr", "0.1", "--", "z"]' in lines
        assert f"({party}) tail-without-newline" in lines
        assert sum(1 for ln in lines if ln.startswith(f"({party}) line ")) == 500
        assert any(ln.startswith(f"({party}) LOCKED ") for ln in lines), res.stdout[-2000:]
    books = {json.dumps(json.loads(ln.split(" ", 2)[2]), sort_keys=True) for ln in lines if " ADDR " in ln}
    assert len(books) == 1, "all parties must see the same address book"
    book = json.loads(books.pop())
    assert set(book) == {"alice", "bob"}
    hosts_ports = [addr.rsplit(":", 1) for addr in book.values()]
    assert all(h == "127.0.0.1" for h, _ in hosts_ports)
    ports = [int(p) for _, p in hosts_ports]
    assert len(set(ports)) == 2
    low, high = ephemeral_range()
    for port in ports:  # from the band nobody assigns automatically (fed/cli/ports.py)
        assert 20000 <= port <= 32767 and not low <= port <= high, port
    # Nothing of the run holds the ports afterwards: its party processes are gone.
    pids = [int(ln.rsplit(" ", 1)[1]) for ln in lines if " PID " in ln]
    assert len(pids) == 2 and not any(alive(p) for p in pids), pids


@pytest.mark.timeout(60)
def test_failing_party_stops_the_others_and_their_children(tmp_path: Path) -> None:
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    script = write_script(
        tmp_path,
        textwrap.dedent(
            """
        import os, sys, time
        if sys.argv[1] == "alice":
            deadline = time.time() + 30
            while not os.path.exists(os.path.join(sys.argv[2], "bob.json")) and time.time() < deadline:
                time.sleep(0.05)
            print("alice fails", flush=True)
            sys.exit(3)
        """
        )
        + textwrap.dedent(SLEEPER),
    )
    start = time.monotonic()
    res = fed("run", str(script), "--parties", "alice,bob", "--", str(pid_dir))
    elapsed = time.monotonic() - start
    assert res.returncode == 3, (res.stdout, res.stderr)
    report_time("party failed, the others stopped", elapsed)
    assert "(alice) alice fails" in res.stdout
    assert "(bob) sleeping bob" in res.stdout
    assert re.search(r"party alice exited with code 3", res.stderr), res.stderr
    pids = read_pids(pid_dir)
    assert len(pids) == 3
    assert wait_for(lambda: not any(alive(p) for p in pids), 2), [p for p in pids if alive(p)]


@pytest.mark.timeout(60)
def test_party_ignoring_sigterm_is_killed_after_grace(tmp_path: Path) -> None:
    script = write_script(
        tmp_path,
        """
        import signal, sys, time
        if sys.argv[1] == "alice":
            time.sleep(0.5)
            sys.exit(1)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("stubborn", flush=True)
        time.sleep(600)
        """,
    )
    start = time.monotonic()
    res = fed("run", str(script), "--parties", "alice,bob", "--grace", "1")
    assert res.returncode == 1, res.stderr
    report_time("SIGTERM ignored, killed after --grace 1", time.monotonic() - start)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_stops_all_parties(tmp_path: Path, sig: signal.Signals) -> None:
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    script = write_script(tmp_path, SLEEPER)
    out = tmp_path / "out.txt"
    proc = fed_popen("run", str(script), "--parties", "alice,bob,carol", "--", str(pid_dir), out=out)
    try:
        assert wait_for(lambda: len(list(pid_dir.glob("*.json"))) == 3, 30), out.read_text()
        pids = read_pids(pid_dir)
        assert all(alive(p) for p in pids)
        start = time.monotonic()
        proc.send_signal(sig)
        rc = proc.wait(timeout=40)
        report_time(f"{sig.name} to fed run, all parties stopped", time.monotonic() - start)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert rc == 130, out.read_text()
    assert "interrupted" in out.read_text()
    assert len(pids) == 9
    assert wait_for(lambda: not any(alive(p) for p in pids), 2), [p for p in pids if alive(p)]


@pytest.mark.timeout(60)
def test_timeout_stops_all_and_exits_124(tmp_path: Path) -> None:
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    script = write_script(tmp_path, SLEEPER)
    start = time.monotonic()
    res = fed("run", str(script), "--parties", "alice,bob", "--timeout", "3", "--", str(pid_dir))
    assert res.returncode == 124, (res.stdout, res.stderr)
    report_time("--timeout 3, all parties stopped", time.monotonic() - start)
    assert "timeout" in res.stderr
    pids = read_pids(pid_dir)
    assert wait_for(lambda: not any(alive(p) for p in pids), 2)


@pytest.mark.timeout(60)
def test_simulate_runs_one_process(tmp_path: Path) -> None:
    starts = tmp_path / "starts.txt"
    script = write_script(
        tmp_path,
        """
        import os, sys
        with open(sys.argv[2], "a") as f:
            f.write(sys.argv[1] + "\\n")
        print("party", sys.argv[1], "mode", os.environ.get("RAYFED_MODE"), "env", os.environ["RAYFED_PARTY"])
        """,
    )
    res = fed("run", str(script), "--parties", "alice,bob", "--simulate", "--", str(starts))
    assert res.returncode == 0, res.stderr
    assert starts.read_text().splitlines() == ["alice"]
    assert res.stdout.splitlines() == ["(simulation) party alice mode simulation env alice"]


@pytest.mark.timeout(60)
def test_no_mode_or_tls_leak_from_parent_env(tmp_path: Path) -> None:
    script = write_script(
        tmp_path,
        """
        import os
        print(os.environ.get("RAYFED_MODE"), os.environ.get("RAYFED_TLS_DIR"))
        """,
    )
    env = fed_env()
    env.update(RAYFED_MODE="simulation", RAYFED_TLS_DIR="/nonexistent")
    res = subprocess.run(
        [sys.executable, "-m", "fed.cli.main", "run", str(script), "--parties", "alice"],
        env=env, capture_output=True, text=True, timeout=45,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == ["(alice) None None"]


TLS_SCRIPT = """
    import os, sys
    from pathlib import Path
    party = sys.argv[1]
    d = Path(os.environ["RAYFED_TLS_DIR"])
    files = [d / "ca.crt", d / (party + ".crt"), d / (party + ".key")]
    print("TLSDIR", d)
    print("FILES", all(f.is_file() for f in files))
    print("KEYMODE", oct((d / (party + ".key")).stat().st_mode & 0o777))
"""


@pytest.mark.timeout(60)
def test_tls_exports_a_temporary_pki(tmp_path: Path) -> None:
    script = write_script(tmp_path, TLS_SCRIPT)
    res = fed("run", str(script), "--parties", "alice,bob", "--tls")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    for party in ("alice", "bob"):
        assert f"({party}) FILES True" in lines
        assert f"({party}) KEYMODE 0o600" in lines
    dirs = {ln.split("TLSDIR ", 1)[1] for ln in lines if "TLSDIR" in ln}
    assert len(dirs) == 1
    assert not Path(dirs.pop()).exists(), "the temporary PKI must be removed after the run"


@pytest.mark.timeout(60)
def test_tls_with_given_certs_dir(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    assert fed("certs", "--parties", "alice,bob", "--out", str(certs)).returncode == 0
    script = write_script(tmp_path, TLS_SCRIPT)
    res = fed("run", str(script), "--parties", "alice,bob", "--certs", str(certs))
    assert res.returncode == 0, res.stderr
    assert f"(alice) TLSDIR {certs.resolve()}" in res.stdout.splitlines()
    assert (certs / "ca.key").exists(), "a user-supplied PKI must be kept"
    # A party without certificates in that directory is a usage error.
    res = fed("run", str(script), "--parties", "alice,carol", "--certs", str(certs))
    assert res.returncode == 2
    assert "carol" in res.stderr


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "{missing}", "--parties", "alice,bob"], "script not found"),
        (["run", "{script}", "--parties", ""], "--parties"),
        (["run", "{script}", "--parties", ","], "--parties"),
        (["run", "{script}", "--parties", "alice,bob,alice"], "duplicate"),
        (["run", "{script}", "--parties", "al ice"], "invalid party name"),
        (["run", "{script}", "--parties", "../x"], "invalid party name"),
        (["run", "{script}"], "--parties"),
        (["run", "{script}", "--parties", "alice", "--timeout", "0"], "--timeout"),
        (["run", "{script}", "--parties", "alice", "--timeout", "soon"], "--timeout"),
        (["run"], "script"),
        ([], "COMMAND"),
        (["nosuchcommand"], "invalid choice"),
        (["certs", "--parties", "alice", "--", "x"], "unexpected arguments"),
    ],
)
def test_usage_errors_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    script = write_script(tmp_path, "print('should not run')\n")
    argv = [a.format(script=script, missing=tmp_path / "missing.py") for a in args]
    res = fed(*argv)
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert message in res.stderr
    assert "should not run" not in res.stdout


@pytest.mark.timeout(60)
@pytest.mark.parametrize("args", [["--help"], ["run", "--help"], ["certs", "--help"]])
def test_help(args: list[str]) -> None:
    res = fed(*args)
    assert res.returncode == 0
    assert "usage: fed" in res.stdout
    if args[0] == "run":
        assert "RAYFED_ADDRESSES" in res.stdout and "--simulate" in res.stdout and "--tls" in res.stdout
    if args[0] == "--help":
        assert "run" in res.stdout and "certs" in res.stdout


@pytest.mark.timeout(60)
def test_cli_modules_do_not_import_ray() -> None:
    """fed.cli itself stays light; fed/__init__.py is bypassed so only the CLI is measured."""
    code = (
        "import sys, types; pkg = types.ModuleType('fed'); pkg.__path__ = [sys.argv[1]]; "
        "sys.modules['fed'] = pkg; "
        "from fed.cli.main import build_parser; build_parser().format_help(); "
        "import fed.cli.run, fed.cli.certs; "
        "print(sorted(m for m in ('ray', 'cryptography', 'numpy') if m in sys.modules))"
    )
    res = subprocess.run(
        [sys.executable, "-c", code, str(REPO / "fed")], env=fed_env(), capture_output=True, text=True, timeout=45
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


@pytest.mark.timeout(60)
def test_run_parties_function_in_process(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sys.path.insert(0, str(REPO))
    try:
        from fed.cli.run import run_parties
    finally:
        sys.path.remove(str(REPO))
    script = write_script(tmp_path, "import sys; print('hi', sys.argv[1]); sys.exit(5 if sys.argv[1] == 'b' else 0)\n")
    rc = run_parties(script, ["a", "b"], grace=1)
    captured = capsys.readouterr()
    assert rc == 5
    assert "(a) hi a" in captured.out.splitlines()
    assert "party b exited with code 5" in captured.err


def test_each_run_gets_a_fresh_job_name_unless_one_is_set(tmp_path: Path) -> None:
    script = write_script(tmp_path, """
        import os
        print("JOB", os.environ.get("RAYFED_JOB_NAME"))
        """)
    names = []
    for _ in range(2):
        res = fed("run", str(script), "--parties", "alice,bob")
        assert res.returncode == 0, res.stderr
        jobs = {line.split("JOB ", 1)[1] for line in res.stdout.splitlines() if "JOB " in line}
        assert len(jobs) == 1, res.stdout  # the same job in every party of one run
        names.append(jobs.pop())
    assert names[0] != names[1] and all(n.startswith("fed-run-") for n in names), names
    env = fed_env()
    env["RAYFED_JOB_NAME"] = "nightly"
    res = subprocess.run([sys.executable, "-m", "fed.cli.main", "run", str(script),
                          "--parties", "alice"], env=env, capture_output=True, text=True,
                         timeout=45)
    assert res.stdout.splitlines() == ["(alice) JOB nightly"], res.stdout
