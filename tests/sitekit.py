"""Test kit for the party sites: a real PostgreSQL server, site directories, site processes.

Loaded as a pytest plugin by conftest.py. PostgreSQL comes from the machine's
``initdb``/``pg_ctl`` (PATH or /usr/lib/postgresql/*/bin): one server per test session
in a temporary directory, on a leased port, stopped at the end. Without PostgreSQL its
tests are skipped, unless RAYFED_REQUIRE_POSTGRES=1 (set by .ci/run): then they fail.
"""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REQUIRE_ENV = "RAYFED_REQUIRE_POSTGRES"
PG_USER = "postgres"  # initdb refuses to run as root: root runs the server as this user


def pg_bindir() -> Path | None:
    """Where initdb and pg_ctl are: PATH first, then the newest Debian install."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).resolve().parent
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda d: int(Path(d).parent.name or 0))
    return Path(dirs[-1]) if dirs else None


def _as_pg_user(cmd: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return cmd
    return ["runuser", "-u", PG_USER, "--", *cmd]


def _run(cmd: list[str], **kw) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False, **kw)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")


@dataclass
class PostgresServer:
    bindir: Path
    root: Path
    port: int

    @property
    def data(self) -> Path:
        return self.root / "data"

    def start(self) -> None:
        _run(_as_pg_user([str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres",
                          "--auth=trust", "-E", "UTF8", "--no-sync"]))
        opts = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        _run(_as_pg_user([str(self.bindir / "pg_ctl"), "-D", str(self.data), "-o", opts,
                          "-l", str(self.root / "server.log"), "-w", "-t", "60", "start"]))

    def stop(self) -> None:
        subprocess.run(_as_pg_user([str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast",
                                    "-w", "-t", "60", "stop"]), capture_output=True, timeout=90, check=False)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh, empty database; its URL."""
        import sqlalchemy

        name = "site_" + uuid.uuid4().hex[:12]
        engine = sqlalchemy.create_engine(self.url(), isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        engine.dispose()
        return self.url(name)


def _pg_root() -> Path:
    root = Path(tempfile.mkdtemp(prefix="rayfed-pg-"))
    if os.geteuid() == 0:
        user = pwd.getpwnam(PG_USER)
        os.chown(root, user.pw_uid, user.pw_gid)
    return root


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A running PostgreSQL server for this test session."""
    from fed.cli.ports import PortLease

    required = os.environ.get(REQUIRE_ENV) == "1"
    bindir = pg_bindir()
    problem = None if bindir else "initdb/pg_ctl not found (install Debian's postgresql package)"
    if bindir and os.geteuid() == 0:
        try:
            pwd.getpwnam(PG_USER)
        except KeyError:
            problem = f"running as root and there is no {PG_USER!r} user to run PostgreSQL as"
    if problem:
        (pytest.fail if required else pytest.skip)(f"PostgreSQL: {problem}")
    lease = PortLease()
    root = _pg_root()
    server = PostgresServer(bindir, root, lease.reserve(1)[0])
    try:
        server.start()
    except RuntimeError as exc:
        lease.release()
        shutil.rmtree(root, ignore_errors=True)
        (pytest.fail if required else pytest.skip)(f"PostgreSQL did not start: {exc}")
    try:
        yield server
    finally:
        server.stop()
        lease.release()
        shutil.rmtree(root, ignore_errors=True)


_NEEDS_PG = pytest.StashKey[bool]()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Note whether a selected test uses PostgreSQL (see _postgres_first)."""
    config.stash[_NEEDS_PG] = any(
        "postgres" in getattr(item, "fixturenames", ())
        or getattr(getattr(item, "callspec", None), "params", {}).get("database_url") == "postgres"
        for item in items
    )


@pytest.fixture(scope="session", autouse=True)
def _postgres_first(request: pytest.FixtureRequest, nothing_left_at_the_end: None) -> None:
    """Start PostgreSQL before any test's process snapshot (conftest.py's leftover check),
    so its server does not count as a process a test left behind, and stop it before the
    session's last check. A failure to start is reported by the tests that use it, not by
    every test."""
    if request.config.stash.get(_NEEDS_PG, False):
        try:
            request.getfixturevalue("postgres")
        except (pytest.skip.Exception, pytest.fail.Exception):
            pass


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh empty database of each kind."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'site.db'}"
    return request.getfixturevalue("postgres").new_database()


@pytest.fixture
def db(database_url: str):
    """A fresh database of each kind with the site's migrations applied."""
    from fed.site.core.db import Database

    database = Database(database_url)
    database.migrate()
    yield database
    database.close()


def fed_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def fed_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run the ``fed`` command of this checkout."""
    return subprocess.run([sys.executable, "-m", "fed.cli.main", *args], env=fed_env(),
                          capture_output=True, text=True, timeout=timeout, check=False)


class SiteProcess:
    """``fed site start DIR`` in its own process."""

    def __init__(self, site_dir: Path, url: str) -> None:
        self.dir, self.url = site_dir, url
        self.log = open(site_dir / "site.log", "wb")  # noqa: SIM115 - closed by stop()
        self.proc = subprocess.Popen([sys.executable, "-m", "fed.cli.main", "site", "start", str(site_dir)],
                                     env=fed_env(), stdout=self.log, stderr=subprocess.STDOUT)

    def wait_ready(self, ca_cert: str, timeout: float = 60) -> None:
        """Until the site answers HTTPS (401: it wants a token)."""
        import httpx

        deadline = time.monotonic() + timeout
        with httpx.Client(verify=_ssl_context(ca_cert), timeout=2) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"site {self.dir} exited {self.proc.returncode}:\n{self.output()}")
                try:
                    if client.get(self.url + "/v1/site").status_code == 401:
                        return
                except httpx.HTTPError:
                    pass
                time.sleep(0.2)
        raise RuntimeError(f"site {self.dir} did not answer within {timeout}s:\n{self.output()}")

    def output(self) -> str:
        self.log.flush()
        return (self.dir / "site.log").read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()


def _ssl_context(ca_cert: str):
    import ssl

    return ssl.create_default_context(cafile=ca_cert)
