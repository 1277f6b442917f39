"""The board's parts without a browser: session cookies, CSRF values, the DAG layout."""
from __future__ import annotations

import pytest

pytest.importorskip("jinja2", reason='the site extra is not installed (pip install -e ".[site]")')

from fed.site.board.dag import NODE_H, NODE_W, depths, layout
from fed.site.board.sessions import SessionSigner


def test_a_session_cookie_names_the_token_id_and_nothing_forged_passes():
    signer = SessionSigner("alice")
    cookie = signer.issue("0a1b2c3d4e5f6071")
    assert signer.token_id(cookie) == "0a1b2c3d4e5f6071"
    token_id, expiry, mac = cookie.split(".")
    assert signer.token_id(f"ffffffffffffffff.{expiry}.{mac}") is None  # another token
    assert signer.token_id(f"{token_id}.{int(expiry) + 999}.{mac}") is None  # a longer life
    assert SessionSigner("alice").token_id(cookie) is None  # another site process's key
    assert signer.token_id(None) is None and signer.token_id("a.b") is None
    assert signer.cookie == "rayfed_board_alice"


def test_an_expired_session_is_refused():
    signer = SessionSigner("bob", ttl_s=-1)
    assert signer.token_id(signer.issue("0a1b2c3d4e5f6071")) is None


def test_csrf_values_belong_to_one_session():
    signer = SessionSigner("alice")
    one, two = signer.issue("0000000000000001"), signer.issue("0000000000000002")
    assert signer.csrf_ok(one, signer.csrf(one))
    assert not signer.csrf_ok(one, signer.csrf(two))
    assert not signer.csrf_ok(one, None) and not signer.csrf_ok(None, signer.csrf(one))


def test_dag_columns_follow_dependencies_and_skip_edges_arc_above():
    deps = {"prepare": [], "train": ["prepare"], "evaluate": ["train"], "report": ["prepare", "evaluate"],
            "side": []}
    assert depths(deps) == {"prepare": 0, "train": 1, "evaluate": 2, "report": 3, "side": 0}
    graph = layout(deps)
    pos = {n.name: (n.x, n.y) for n in graph.nodes}
    assert pos["prepare"][0] < pos["train"][0] < pos["evaluate"][0] < pos["report"][0]
    assert pos["side"][0] == pos["prepare"][0] and pos["side"][1] > pos["prepare"][1]
    assert len(graph.edges) == 4
    assert all(x + NODE_W <= graph.width and y + NODE_H <= graph.height for x, y in pos.values())
    skip = next(e for e in graph.edges if e.startswith(f"M{pos['prepare'][0] + NODE_W * 3 // 4},"))
    assert int(skip.split(" ")[1].split(",")[1]) < min(y for _, y in pos.values())  # above every box
