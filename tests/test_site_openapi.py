"""docs/site-openapi.json is what the site serves: regenerated from the application and
compared, so docs/interconnect.md's machine-readable twin never drifts from the code."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_committed_openapi_document_matches_the_code():
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "site_openapi.py"), "--check"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_interconnect_route_is_documented():
    import json

    paths = json.loads((REPO / "docs" / "site-openapi.json").read_text())["paths"]
    page = (REPO / "docs" / "interconnect.md").read_text()
    prefix = "/v1/interconnect/jobs/{job_id}"
    for path, operations in paths.items():
        if not path.startswith(prefix):
            continue
        for method in operations:
            route = f"`{method.upper()} {path[len(prefix):] or '/'}"
            assert route in page, f"{route}` is not in docs/interconnect.md"
