"""The `fed` logger shows records before the app configures logging, and never takes
them away from the app's own handlers afterwards. Fresh processes: clean logging state."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[1])

_SCRIPT = """
import logging, sys
from fed import _log
_log.configure("info")  # what fed.init does, before the app set up logging
log = _log.party_logger("alice", "job")
log.info("before-basicConfig")
assert logging.getLogger("fed").propagate
logging.basicConfig(stream=sys.stdout, format="APP %(name)s %(message)s", level=logging.WARNING)
log.info("after-basicConfig")
seen = []
class Collect(logging.Handler):
    def emit(self, record):
        seen.append(record.getMessage())
logging.getLogger().addHandler(Collect())
log.warning("to-app-handler")
assert seen == ["[alice/job] to-app-handler"], seen
_log.configure("info")  # a second fed.init adds nothing and takes nothing over
log.info("after-second-init")
"""


def test_fed_records_reach_handlers_the_app_adds_later() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", _SCRIPT], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    # Before the app configured anything, fed's own fallback printed to stderr.
    assert "INFO fed [alice/job] before-basicConfig" in done.stderr
    # Afterwards the app's handler prints fed's records (fed's level, the app's format)...
    assert "APP fed [alice/job] after-basicConfig" in done.stdout
    assert "APP fed [alice/job] after-second-init" in done.stdout
    # ...and the fallback is silent, so nothing is printed twice.
    assert "after-basicConfig" not in done.stderr and "to-app-handler" not in done.stderr
