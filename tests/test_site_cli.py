"""`fed site` and `fed job` as commands: clear errors for bad input, and the site extra
loaded only by the commands that need it."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from sitekit import fed_cli, fed_env

pytest.importorskip("yaml", reason='the site extra is not installed (pip install -e ".[site]")')


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("certs")
    assert fed_cli("certs", "--parties", "alice,bob", "--out", str(out)).returncode == 0
    return out


def write_federation(path: Path, parties: dict) -> Path:
    path.write_text(json.dumps({"parties": parties}))
    return path


def test_init_writes_a_site_and_refuses_bad_input(tmp_path, certs):
    fed = write_federation(tmp_path / "federation.yaml", {"alice": {"site": "https://127.0.0.1:23001"},
                                                          "bob": {"site": "https://127.0.0.1:23002"}})
    site = tmp_path / "alice"
    ok = fed_cli("site", "init", str(site), "--party", "alice", "--federation", str(fed), "--certs", str(certs))
    assert ok.returncode == 0, ok.stderr
    assert (site / "site.yaml").stat().st_mode & 0o777 == 0o600 and (site / "site.db").exists()
    again = fed_cli("site", "init", str(site), "--party", "alice", "--federation", str(fed), "--certs", str(certs))
    assert again.returncode == 1 and "--force" in again.stderr
    not_member = fed_cli("site", "init", str(tmp_path / "x"), "--party", "carol", "--federation", str(fed),
                         "--certs", str(certs))
    assert not_member.returncode == 1 and "party 'carol' is not in the federation" in not_member.stderr
    wrong_cert = fed_cli("site", "init", str(tmp_path / "y"), "--party", "alice", "--federation", str(fed),
                         "--cert", str(certs / "bob.crt"), "--key", str(certs / "bob.key"), "--ca", str(certs / "ca.crt"))
    assert wrong_cert.returncode == 1 and "tls.cert" in wrong_cert.stderr and "does not name party 'alice'" in wrong_cert.stderr


def test_federation_errors_name_file_and_field(tmp_path, certs):
    fed = write_federation(tmp_path / "federation.yaml", {"alice": {"site": "http://127.0.0.1:23001", "chanel": {}}})
    proc = fed_cli("site", "init", str(tmp_path / "s"), "--party", "alice", "--federation", str(fed), "--certs", str(certs))
    assert proc.returncode == 1
    assert "parties.alice.chanel: unknown field (did you mean 'channel'?)" in proc.stderr
    fed.write_text(json.dumps({"parties": {"alice": {"site": "http://127.0.0.1:23001"}}}))
    proc = fed_cli("site", "init", str(tmp_path / "s"), "--party", "alice", "--federation", str(fed), "--certs", str(certs))
    assert "parties.alice.site: bad site URL" in proc.stderr and "https://" in proc.stderr


def test_commands_on_a_directory_that_is_no_site(tmp_path):
    proc = fed_cli("site", "token", "create", str(tmp_path), "--role", "admin")
    assert proc.returncode == 1 and "not a site directory" in proc.stderr and "fed site init" in proc.stderr
    proc = fed_cli("job", "list", "--url", "https://127.0.0.1:1", "--ca", "/nonexistent")
    assert proc.returncode == 1 and "--token" in proc.stderr


def test_job_submit_checks_the_spec_before_calling_any_site(tmp_path):
    spec = tmp_path / "job.yaml"
    spec.write_text("initiator: alice\nparties: [{name: alice, site: 'https://127.0.0.1:1'}]\n"
                    "tasks: [{name: a, component: c, version: '1', deps: [a]}]\n")
    proc = fed_cli("job", "submit", str(spec), "--url", "https://127.0.0.1:1", "--ca", "x", "--token", "t")
    assert proc.returncode == 1 and "tasks[0].deps[0]: a task cannot depend on itself" in proc.stderr
    spec.write_text(spec.read_text().replace("deps: [a]", "deps: []"))
    proc = fed_cli("job", "submit", str(spec), "--url", "https://127.0.0.1:1", "--ca", "/nonexistent", "--token", "t")
    assert proc.returncode == 1 and "cannot load the CA bundle '/nonexistent'" in proc.stderr


def test_site_extra_is_loaded_only_by_site_commands():
    """Without the extra, `fed run` still works and `fed site` names the install command."""
    block = "import sys\nfor m in ('fastapi', 'uvicorn', 'sqlalchemy', 'alembic', 'httpx'): sys.modules[m] = None\n"
    code = block + "from fed.cli.main import main\nsys.exit(main(sys.argv[1:]))"
    run = subprocess.run([sys.executable, "-c", code, "run", "--help"], env=fed_env(), capture_output=True,
                         text=True, timeout=60, check=False)
    assert run.returncode == 0 and "usage: fed run" in run.stdout
    site = subprocess.run([sys.executable, "-c", code, "site", "status", "somewhere"], env=fed_env(),
                          capture_output=True, text=True, timeout=60, check=False)
    assert site.returncode == 1 and 'pip install -e ".[site]"' in site.stderr and "fastapi" in site.stderr
