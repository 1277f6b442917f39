"""docs/observability.md stays true: every channel metric is listed under its exported
name, and the panel shown is the committed dashboard's panel."""
from __future__ import annotations

import json
import re
from pathlib import Path

from fed.transport.metrics import METRICS

DOCS = Path(__file__).resolve().parents[1] / "docs"
EXPORTED = {"counter": "ray_rayfed_{}_total", "gauge": "ray_rayfed_{}", "histogram": "ray_rayfed_{}"}


def test_every_channel_metric_is_documented_with_its_type():
    text = (DOCS / "observability.md").read_text()
    for name, (kind, _doc, tags) in METRICS.items():
        exported = EXPORTED[kind].format(name)
        row = re.search(rf"^\| `{exported}` \| {kind}[^|]* \| ([^|]*) \|", text, re.MULTILINE)
        assert row, f"{exported} ({kind}) is not in docs/observability.md"
        assert [t.strip() for t in row[1].split(",")] == list(tags)


def test_the_panel_shown_is_the_committed_one_and_uses_documented_metrics():
    text = (DOCS / "observability.md").read_text()
    dashboard = json.loads((DOCS / "grafana" / "rayfed-channel.json").read_text())
    shown = json.loads(re.search(r"^```json\n(.*?)^```", text, re.MULTILINE | re.DOTALL)[1])
    assert shown in dashboard["panels"]
    used = {m for p in dashboard["panels"] for t in p["targets"] for m in re.findall(r"ray_rayfed_\w+", t["expr"])}
    documented = set(re.findall(r"`(ray_rayfed_\w+)`", text))
    assert {re.sub(r"_bucket$", "", m) for m in used} <= documented
