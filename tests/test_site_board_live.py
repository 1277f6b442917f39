"""The board while a real job runs: ``fed site demo --serve`` starts three Ray clusters
and three sites and runs the example job (statistics, then FedAvg); headless chromium
logs in to alice's board as soon as the job is submitted, watches the tasks x parties
grid move to ``succeeded`` without a reload, and reads FedAvg's per-round accuracy
chart from what the component logged. Nothing here is scripted: the states and the
points come from the parties' real runs.
"""
from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time

import pytest
from sitekit import fed_env
from test_site_board import browser, css, save_screenshot, wait_for  # noqa: F401 - browser is a fixture

pytestmark = pytest.mark.timeout(900)

SITE_LINE = re.compile(r"^  (\w+): site (https://\S+)  board (\S+)  Ray \S+  viewer token (\S+)$")
SUBMITTED = re.compile(r"^submitted job (\S+) at alice's site")
JOB_WAIT_S = 600


class Demo:
    """``fed site demo --serve`` in its own process; its output read line by line."""

    def __init__(self, directory) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "fed.cli.main", "site", "demo", "--serve",
                                      "--dir", str(directory)], env=fed_env(), stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def until(self, pattern: re.Pattern, timeout_s: float = 300) -> re.Match:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=1)
            except queue.Empty:
                assert self.proc.poll() is None, "the demo exited:\n" + "\n".join(self.seen)
                continue
            self.seen.append(line)
            found = pattern.match(line)
            if found:
                return found
        raise AssertionError(f"no line matching {pattern.pattern!r}:\n" + "\n".join(self.seen))

    def stop(self) -> int:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)  # Ctrl+C, as a person ends --serve
        try:
            return self.proc.wait(120)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            return self.proc.wait(30)


def _cells(driver, task: str) -> dict[str, str]:
    return {c.get_attribute("data-party"): c.text.strip() for c in css(driver, f"#grid td.cell[data-task='{task}']")}


def test_the_board_follows_the_example_job_live(browser, tmp_path):  # noqa: F811 - the fixture
    demo = Demo(tmp_path / "demo")
    try:
        sites = {}
        while len(sites) < 3:
            found = demo.until(SITE_LINE)
            sites[found.group(1)] = (found.group(3), found.group(4))
        job_id = demo.until(SUBMITTED).group(1)
        board, token = sites["alice"]
        browser.get(board + "login")
        css(browser, "#token")[0].send_keys(token)
        css(browser, "#login")[0].click()
        wait_for(browser, lambda d: d.current_url.endswith("/board/"), "the job list after login")
        browser.get(f"{board}jobs/{job_id}")
        browser.execute_script("window.rayfedLoadedOnce = true")  # gone if the page reloads
        seen: set[str] = set()
        deadline = time.monotonic() + JOB_WAIT_S
        while time.monotonic() < deadline:
            cells = _cells(browser, "train")
            seen.update(cells.values())
            if cells and set(cells.values()) == {"succeeded"}:
                break
            time.sleep(0.2)
        assert set(_cells(browser, "train").values()) == {"succeeded"}, (seen, demo.seen)
        assert seen & {"waiting", "starting", "running"}, f"never saw the task before it ended: {seen}"
        assert set(_cells(browser, "stats")) == {"alice", "bob", "carol"}
        wait_for(browser, lambda d: d.find_element("id", "job").get_attribute("data-state") == "succeeded",
                 "the job's state turning succeeded on the page")
        assert browser.execute_script("return window.rayfedLoadedOnce === true"), "the page reloaded"
        # Every party's five rounds (the demo's parties share FedAvg's accuracy).
        wait_for(browser, lambda d: len(css(d, "#charts .chart[data-metric='accuracy'] circle")) == 15,
                 "FedAvg's accuracy chart, five rounds of three parties")
        assert len(css(browser, "#charts .chart[data-metric='accuracy'] path.line")) == 3
        save_screenshot(browser, "board-job-live")
        demo.until(re.compile(r"^the job succeeded in every party$"))
    finally:
        code = demo.stop()
    assert code == 0, "\n".join(demo.seen)
