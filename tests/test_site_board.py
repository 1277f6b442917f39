"""The site's board in a real browser: Debian's chromium, headless, driven by selenium
through Debian's chromedriver, against three real sites (alice, bob, carol; as in
test_site_e2e.py, SQLite databases).

Until the scheduler runs tasks, the tests move task states the way the scheduler
will: in the site's own database, through the state tables (fed.site.core.store).
Nothing is downloaded: without chromium these tests skip, and fail when
RAYFED_REQUIRE_BROWSER=1 (set by .ci/run).

The job page and the metrics chart are saved by :func:`save_screenshot`: to docs/img/
with RAYFED_WRITE_SCREENSHOTS=1 (how the pictures in docs/sites.md are made, so they are
what the board shows), else to a temporary directory (a test run leaves the tree clean).
"""
from __future__ import annotations

import os
import shutil
import ssl
import tempfile
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason='the site extra is not installed (pip install -e ".[site]")')

import httpx
from sitekit import REPO
from test_site_e2e import PARTIES, Federation, fed3  # noqa: F401 - fed3 is the sites' fixture

from fed.site.config import load_site
from fed.site.core import store
from fed.site.core.db import Database
from fed.site.core.models import PartyTask, Task
from fed.site.core.states import Entity

# fed3 runs on SQLite and on PostgreSQL; the board needs one: SQLite.
pytestmark = pytest.mark.parametrize("fed3", ["sqlite"], indirect=True, scope="module")

REQUIRE_ENV = "RAYFED_REQUIRE_BROWSER"
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
DOCS_IMG = REPO / "docs" / "img"
WAIT_S = 30


def _unavailable(reason: str) -> None:
    (pytest.fail if os.environ.get(REQUIRE_ENV) == "1" else pytest.skip)(f"browser: {reason}")


@pytest.fixture(scope="module")
def browser():
    """One headless chromium for the module (cookies are per site: each site names its own)."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _unavailable("selenium is not installed (pip install -e '.[test]')")
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            _unavailable(f"{path} missing (apt-get install chromium chromium-driver)")
    profile = tempfile.mkdtemp(prefix="rayfed-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1360,1000", "--hide-scrollbars", f"--user-data-dir={profile}",
                "--no-first-run", "--disable-extensions", "--force-device-scale-factor=1"):
        options.add_argument(arg)
    options.accept_insecure_certs = True  # the sites' certificates come from the test's own CA
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def sites(fed3):  # noqa: F811 - the fixture imported above
    """Three running sites (test_site_e2e.py's), with SQLite databases: the tests change
    task states in a site's database file, as the scheduler will."""
    return fed3


# ---- helpers ---------------------------------------------------------------------------------
def wait_for(driver, check, what: str):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    # The page replaces elements as states arrive: an element read as it goes is read again.
    waiter = WebDriverWait(driver, WAIT_S, poll_frequency=0.2, ignored_exceptions=(StaleElementReferenceException,))
    return waiter.until(lambda d: check(d), message=what)


def css(driver, selector: str):
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, selector)


def login(driver, fed: Federation, party: str, role: str) -> None:
    driver.get(fed.urls[party] + "/board/login")
    css(driver, "#token")[0].send_keys(fed.tokens[(party, role)])
    css(driver, "#login")[0].click()
    wait_for(driver, lambda d: d.current_url.endswith("/board/"), f"the job list of {party} after login")


def save_screenshot(driver, name: str, element=None) -> Path:
    """Write <name>.png: the whole page (window grown to its height) or one element."""
    folder = DOCS_IMG if os.environ.get("RAYFED_WRITE_SCREENSHOTS") == "1" else Path(tempfile.gettempdir())
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"rayfed-{name}.png" if folder != DOCS_IMG else folder / f"{name}.png"
    if element is not None:
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", element)
        element.screenshot(str(path))
        return path
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1360, min(max(height, 700), 4000))
    driver.save_screenshot(str(path))
    driver.set_window_size(1360, 1000)
    return path


def submit(fed: Federation, tasks: list[dict], name: str) -> str:
    spec = fed.spec("stats", name=name)
    spec["tasks"] = tasks
    with fed.client("alice", "submitter") as alice:
        return alice.submit(spec)["id"]


def site_db(fed: Federation, party: str) -> Database:
    return Database(load_site(fed.root / party).database)


def move(fed: Federation, party: str, job_id: str, task: str, task_states: list[str],
         steps: dict[str, list[str]]) -> None:
    """Change states in ``party``'s database as the scheduler will: the job to running,
    the task through ``task_states``, each party task through ``steps[party]``."""
    db = site_db(fed, party)
    try:
        with db.session() as s:
            job = store.lock_job(s, job_id)
            if job.state == "accepted":
                store.change_state(s, Entity.JOB, job, "running", "the scheduler started it", "site:test")
            row = s.get(Task, (job_id, task))
            for state in task_states:
                store.change_state(s, Entity.TASK, row, state, f"task {state}", "site:test")
            for who, states in steps.items():
                pt = s.get(PartyTask, (job_id, task, who))
                for state in states:
                    store.change_state(s, Entity.PARTY_TASK, pt, state, f"{who} reported {state}", "site:test")
    finally:
        db.close()


def cell(driver, task: str, party: str) -> str:
    found = css(driver, f'#grid td[data-task="{task}"][data-party="{party}"]')
    return found[0].text if found else ""


def fetch_status(driver, url: str, method: str = "GET", body: str | None = None) -> int:
    """The HTTP status of a same-origin request made by the page (with its cookie)."""
    script = """
        const [url, method, body, done] = arguments;
        fetch(url, {method, body, credentials: "same-origin",
                    headers: body ? {"Content-Type": "application/x-www-form-urlencoded"} : {}})
          .then(r => done(r.status), e => done(String(e)));"""
    return driver.execute_async_script(script, url, method, body)


PIPELINE = [
    {"name": "prepare", "component": "stats", "version": "1"},
    {"name": "train", "component": "stats", "version": "1", "deps": ["prepare"]},
    {"name": "evaluate", "component": "stats", "version": "1", "deps": ["train"]},
    {"name": "report", "component": "stats", "version": "1", "deps": ["prepare", "evaluate"], "parties": ["alice"]},
]


# ---- tests -----------------------------------------------------------------------------------
def test_login_refuses_a_bad_token_and_lists_jobs_with_filters(browser, sites):
    job_id = submit(sites, [{"name": "t1", "component": "stats", "version": "1"}], "listed")
    browser.get(sites.urls["alice"] + "/board/")
    assert browser.current_url.endswith("/board/login")  # no session: the login page
    css(browser, "#token")[0].send_keys("rfs_not-a-token")
    css(browser, "#login")[0].click()
    wait_for(browser, lambda d: css(d, "#login-error"), "the login page's error\n" + browser.page_source)
    assert "Unknown or revoked token" in css(browser, "#login-error")[0].text
    cookies = {c["name"]: c for c in browser.get_cookies()}
    assert "rayfed_board_alice" not in cookies
    login(browser, sites, "alice", "viewer")
    cookie = {c["name"]: c for c in browser.get_cookies()}["rayfed_board_alice"]
    assert cookie["httpOnly"] and cookie["secure"] and cookie["sameSite"] == "Strict"
    assert sites.tokens[("alice", "viewer")] not in cookie["value"]
    assert css(browser, f'#jobs tr[data-job="{job_id}"]')
    browser.get(sites.urls["alice"] + "/board/?state=rejected&initiator=alice")
    assert not css(browser, f'#jobs tr[data-job="{job_id}"]')
    browser.get(sites.urls["alice"] + "/board/?state=accepted&initiator=alice&since=2000-01-01")
    assert css(browser, f'#jobs tr[data-job="{job_id}"]')
    browser.get(sites.urls["alice"] + "/board/?until=2000-01-01")
    assert not css(browser, f'#jobs tr[data-job="{job_id}"]')


def test_job_page_grid_follows_states_without_reload(browser, sites):
    job_id = submit(sites, PIPELINE, "fedavg-pipeline")
    login(browser, sites, "alice", "viewer")
    browser.get(f"{sites.urls['alice']}/board/jobs/{job_id}")
    assert len(css(browser, "#dag .node")) == 4 and len(css(browser, "#dag .edge")) == 4
    assert cell(browser, "train", "bob") == "waiting"
    browser.execute_script("window.stillThisPage = true")
    done = ["starting", "running", "succeeded"]
    move(sites, "alice", job_id, "prepare", done, dict.fromkeys(PARTIES, done))
    move(sites, "alice", job_id, "train", ["starting", "running"],
         {"alice": ["starting", "running"], "bob": ["starting", "running"], "carol": ["starting"]})
    wait_for(browser, lambda d: cell(d, "train", "bob") == "running", "train@bob running on the page")
    assert cell(browser, "prepare", "carol") == "succeeded" and cell(browser, "train", "carol") == "starting"
    assert "running" in css(browser, "#job-state .badge")[0].text
    assert "s-running" in css(browser, '#dag .node[data-task="train"]')[0].get_attribute("class")
    wait_for(browser, lambda d: len(css(d, "#timeline tbody tr")) > 12, "the timeline's new rows")
    save_screenshot(browser, "board-job")
    move(sites, "alice", job_id, "train", ["succeeded"],
         {"alice": ["succeeded"], "bob": ["succeeded"], "carol": ["running", "succeeded"]})
    move(sites, "alice", job_id, "evaluate", done, dict.fromkeys(PARTIES, done))
    failed = ["starting", "running", "failed"]
    move(sites, "alice", job_id, "report", failed, {"alice": failed})
    wait_for(browser, lambda d: cell(d, "report", "alice") == "failed", "report@alice failed on the page")
    assert all(cell(browser, "train", p) == "succeeded" for p in PARTIES)
    problems = css(browser, "#problem-list li")
    assert problems and "report @ alice failed" in problems[0].text
    assert browser.execute_script("return window.stillThisPage") is True  # no reload happened


def test_admin_approves_a_held_job_on_the_board(browser, sites):
    job_id = submit(sites, [{"name": "t1", "component": "fedavg", "version": "1"}], "held-for-carol")
    login(browser, sites, "carol", "admin")
    browser.get(sites.urls["carol"] + "/board/approvals")
    section = css(browser, f'section.approval[data-job="{job_id}"]')[0]
    assert "fedavg" in section.text  # why it was held
    section.find_element("css selector", "input[name=reason]").send_keys("checked on the board")
    section.find_element("css selector", "button.approve").click()
    wait_for(browser, lambda d: d.current_url.endswith(f"/board/jobs/{job_id}"), "the job page after approving")
    wait_for(browser, lambda d: "accepted" in css(d, "#job-state .badge")[0].text, "the job accepted")
    for party, view in sites.everywhere(job_id).items():
        assert view["state"] == "accepted", party
        carol = next(p for p in view["parties"] if p["party"] == "carol")
        assert carol["reason"] == "checked on the board"
    history = sites.everywhere(job_id)["carol"]["history"]
    assert any(h["entity"] == "approval" and h["party"] == "carol" and h["actor"].startswith("token:")
               for h in history)


def test_viewer_sees_pending_jobs_but_cannot_approve(browser, sites):
    job_id = submit(sites, [{"name": "t1", "component": "fedavg", "version": "1"}], "viewer-cannot")
    login(browser, sites, "carol", "viewer")
    browser.get(sites.urls["carol"] + "/board/approvals")
    section = css(browser, f'section.approval[data-job="{job_id}"]')[0]
    assert not section.find_elements("css selector", "button")  # no approve, no reject
    assert css(browser, "#viewer-note")
    csrf = css(browser, "meta[name=csrf]")[0].get_attribute("content")
    decide = f"/board/jobs/{job_id}/decide"
    assert fetch_status(browser, decide, "POST", f"csrf={csrf}&decision=approve&reason=x") == 403
    assert fetch_status(browser, decide, "POST", "decision=approve&reason=x") == 403  # no CSRF value
    assert fetch_status(browser, f"/v1/jobs/{job_id}/approve", "POST", "{}") == 401  # API: header only
    assert sites.everywhere(job_id)["carol"]["state"] == "awaiting_approval"


def test_partner_logs_are_not_reachable(browser, sites):
    job_id = submit(sites, PIPELINE, "logs-stay-home")
    login(browser, sites, "bob", "viewer")
    browser.get(f"{sites.urls['bob']}/board/jobs/{job_id}")
    logs = [d.get_attribute("data-task") for d in css(browser, "details.log")]
    assert logs == ["prepare", "train", "evaluate"]  # bob's tasks; 'report' runs only at alice
    css(browser, 'details.log[data-task="train"] summary')[0].click()
    wait_for(browser, lambda d: "nothing logged" in css(d, 'details.log[data-task="train"] pre')[0].text,
             "bob's own (empty) log")
    base = f"/board/jobs/{job_id}/tasks"
    assert fetch_status(browser, f"{base}/train/log") == 200
    assert fetch_status(browser, f"{base}/report/log") == 404  # alice's task: alice's log
    assert fetch_status(browser, f"{base}/train/log/alice") == 404
    assert fetch_status(browser, f"/board/jobs/{job_id}/parties/alice/log") == 404
    with httpx.Client(verify=ssl.create_default_context(cafile=sites.ca)) as anonymous:
        assert anonymous.get(sites.urls["bob"] + f"{base}/train/log").status_code == 401


METRICS_URL = "/v1/jobs/{job_id}/metrics"
def _log_fedavg_metrics(fed: Federation, job_id: str, tmp: Path) -> None:
    """Each party's FedAvg run reports accuracy and loss per round through the task
    context (as examples/jobs/components.py does), and its site ingests the file the way
    its executor does; bob and carol share their series (``share_metrics``)."""
    from fed.site.core.metrics import ingest_metrics_file
    from fed.site.core.models import Component
    from fed.site.runner.base import TaskLaunch
    from fed.site.taskcontext import METRICS_FILE, TaskContext

    for k, party in enumerate(PARTIES):
        out = tmp / party
        ctx = TaskContext(TaskLaunch(job_id, "train", 1, party, "stats", "1", "demo.stats:run", {},
                                     output_dir=str(out)))
        for r in range(1, 11):
            ctx.log_metrics({"accuracy": 0.52 + 0.4 * (1 - 0.72 ** r) - 0.012 * k,
                             "loss": 0.71 * 0.8 ** r + 0.05 + 0.01 * k}, step=r)
        ctx.log_metric("rows", 1000 + k)  # no step: listed with its value, not drawn
        db = site_db(fed, party)
        with db.session() as s:
            ingest_metrics_file(s, job_id, "train", party, out / METRICS_FILE)
            if party != "alice":
                s.get(Component, ("stats", "1")).share_metrics = True
        db.close()


def test_metrics_chart_draws_every_series(browser, sites, tmp_path):
    job_id = submit(sites, PIPELINE, "fedavg-metrics")
    _log_fedavg_metrics(sites, job_id, tmp_path)
    with sites.client("alice", "viewer") as alice:
        served = alice.request("GET", METRICS_URL.format(job_id=job_id))["metrics"]
    assert sorted({(m["party"], m["name"]) for m in served}) == sorted(
        (p, n) for p in PARTIES for n in ("accuracy", "loss", "rows"))
    login(browser, sites, "alice", "viewer")
    browser.get(f"{sites.urls['alice']}/board/jobs/{job_id}")
    wait_for(browser, lambda d: d.find_element("id", "metrics").get_attribute("data-loaded") not in (None, "0"),
             "the metrics charts")
    charts = css(browser, "#charts .chart")
    assert sorted(c.get_attribute("data-metric") for c in charts) == ["accuracy", "loss"]
    for chart in charts:
        assert len(chart.find_elements("css selector", "path.line")) == len(PARTIES)
    rows = css(browser, "#charts .metric-values tr[data-metric='rows']")
    assert sorted(r.text.split()[1:] for r in rows) == [[p, str(1000 + k)] for k, p in enumerate(PARTIES)]
    assert not css(browser, "#no-metrics:not([hidden])")
    save_screenshot(browser, "board-metrics", css(browser, "#metrics")[0])
