"""The site's core without servers: job specs, state machines, policy, tokens, and the
database (SQLite and a real PostgreSQL server): migrations, history, locking."""
from __future__ import annotations

import copy
import threading

import pytest

pytest.importorskip("sqlalchemy", reason='the site extra is not installed (pip install -e ".[site]")')

from fed.site.core import components, store, tokens, views
from fed.site.core.policy import ApprovalPolicy, judge
from fed.site.core.spec import find_cycle, missing_components, parse_spec
from fed.site.core.states import (
    TRANSITIONS,
    ApprovalState,
    Entity,
    JobState,
    TaskState,
    check_transition,
)
from fed.site.errors import ComponentError, IllegalTransitionError, JobSpecError

SPEC = {
    "name": "demo",
    "initiator": "alice",
    "parties": [
        {"name": "alice", "site": "https://127.0.0.1:21001"},
        {"name": "bob", "site": "https://127.0.0.1:21002"},
    ],
    "tasks": [
        {"name": "stats", "component": "stats", "version": "1", "params": {"k": 3}},
        {"name": "train", "component": "fedavg", "version": "2", "deps": ["stats"],
         "party_params": {"bob": {"lr": 0.1}}, "timeout_s": 60, "retries": 1},
    ],
}


def spec_with(**changes):
    data = copy.deepcopy(SPEC)
    for path, value in changes.items():
        target = data
        *head, last = path.split("__")
        for key in head:
            target = target[int(key)] if key.isdigit() else target[key]
        target[int(last) if last.isdigit() else last] = value
    return data


def problems(data) -> dict[str, str]:
    with pytest.raises(JobSpecError) as info:
        parse_spec(data)
    return dict(info.value.problems)


def test_a_valid_spec_parses_with_defaults():
    spec = parse_spec(SPEC)
    assert spec.scheduler_party == "alice" and spec.sync_mode == "callback"
    assert spec.task_parties(spec.tasks[0]) == ["alice", "bob"]
    assert spec.tasks[0].timeout_s == 3600 and spec.tasks[1].retries == 1


@pytest.mark.parametrize("changes, field, words", [
    ({"tasks__1__dpes": []}, "tasks[1].dpes", "did you mean 'deps'"),
    ({"tasks__1__deps": ["nope"]}, "tasks[1].deps[0]", "unknown task 'nope'"),
    ({"tasks__0__deps": ["train"]}, "tasks", "cycle: stats -> train -> stats"),
    ({"initiator": "carol"}, "initiator", "'carol' is not in the job"),
    ({"scheduler": "dave"}, "scheduler", "'dave' is not in the job"),
    ({"parties__1__site": "http://127.0.0.1:21002"}, "parties[1].site", "must start with https://"),
    ({"parties__1__site": "https://host:99/x"}, "parties[1].site", "no path"),
    ({"parties__1__name": "alice"}, "parties[1].name", "listed twice"),
    ({"tasks__1__party_params": {"carol": {}}}, "tasks[1].party_params.carol", "does not run this task"),
    ({"tasks__0__parties": ["carol"]}, "tasks[0].parties[0]", "not a data-holding party"),
    ({"tasks__0__retries": "1"}, "tasks[0].retries", "valid integer"),
    ({"tasks__0__timeout_s": 0}, "tasks[0].timeout_s", "greater than 0"),
    ({"sync_mode": "push"}, "sync_mode", "'callback' or 'poll'"),
    ({"tasks__0__component": "a b"}, "tasks[0].component", "invalid component name"),
])
def test_spec_errors_point_at_the_field(changes, field, words):
    found = problems(spec_with(**changes))
    assert field in found, found
    assert words in found[field]


def test_a_party_holding_no_data_must_be_the_scheduler():
    data = spec_with(parties__1__holds_data=False)
    assert "nothing to do" in problems(data)["parties[1].holds_data"]
    data["scheduler"] = "bob"
    data["tasks"][1]["party_params"] = {}
    spec = parse_spec(data)
    assert spec.task_parties(spec.tasks[0]) == ["alice"]


def test_cycle_search_names_the_loop():
    assert find_cycle({"a": ["b"], "b": ["c"], "c": ["a"], "d": []}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": ["b", "c"], "b": ["c"], "c": []}) is None


def test_missing_components_name_task_and_versions():
    spec = parse_spec(SPEC)
    found = dict(missing_components(spec, "bob", {("stats", "1"), ("fedavg", "1")}))
    assert list(found) == ["tasks[1].component"]
    assert "version '2'" in found["tasks[1].component"] and "registered versions: 1" in found["tasks[1].component"]


def test_transitions_are_explicit():
    assert check_transition(Entity.JOB, "j", "awaiting_approval", JobState.ACCEPTED) is True
    assert check_transition(Entity.JOB, "j", "accepted", "accepted") is False  # no change
    with pytest.raises(IllegalTransitionError, match="from 'succeeded' to 'running'"):
        check_transition(Entity.JOB, "j", JobState.SUCCEEDED, JobState.RUNNING)
    with pytest.raises(IllegalTransitionError):
        check_transition(Entity.APPROVAL, "j/bob", ApprovalState.REJECTED, ApprovalState.ACCEPTED)
    finals = {s.value for s in TaskState} - set(TRANSITIONS[Entity.TASK])
    assert finals == {"succeeded", "failed", "canceled", "timeout"}


def test_policy_accepts_holds_and_rejects():
    spec = parse_spec(SPEC)
    have = {("stats", "1"), ("fedavg", "2")}
    listed = ApprovalPolicy(auto_accept_initiators=["alice"], auto_accept_components=["stats", "fedavg"])
    assert judge(listed, spec, "bob", have).state is ApprovalState.ACCEPTED
    held = judge(ApprovalPolicy(auto_accept_initiators=["alice"], auto_accept_components=["stats"]), spec, "bob", have)
    assert held.state is None and "fedavg" in held.reason
    lacking = judge(listed, spec, "bob", {("stats", "1")})
    assert lacking.state is ApprovalState.REJECTED and "fedavg" in lacking.reason


def test_migrations_match_the_models(db):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from fed.site.core.models import Base

    db.migrate()  # idempotent
    with db.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []


def test_tokens_are_stored_hashed_and_roles_ordered(db):
    with db.session() as s:
        token = tokens.create_token(s, tokens.Role.SUBMITTER, "ci")
    with db.session() as s:
        row = s.scalars(__import__("sqlalchemy").select(tokens.Token)).one()
        assert token not in (row.token_hash, row.id) and row.token_hash == tokens.token_hash(token)
        assert tokens.authenticate(s, token).role == "submitter"
        assert tokens.authenticate(s, token + "x") is None
        assert tokens.revoke_token(s, row.id)
    with db.session() as s:
        assert tokens.authenticate(s, token) is None
    assert tokens.Role.ADMIN.allows(tokens.Role.SUBMITTER) and not tokens.Role.VIEWER.allows(tokens.Role.SUBMITTER)


def test_components_registry(db):
    with db.session() as s:
        components.add_component(s, "stats", "1", "pkg.stats:run")
        components.add_component(s, "stats", "1", "pkg.stats:run")  # same again: no-op
    with pytest.raises(ComponentError, match="new version"), db.session() as s:
        components.add_component(s, "stats", "1", "pkg.other:run")
    with pytest.raises(ComponentError, match="package.module:function"), db.session() as s:
        components.add_component(s, "x", "1", "not an entrypoint")
    with db.session() as s:
        assert components.registered(s) == {("stats", "1")}


def test_state_changes_are_recorded_and_illegal_ones_write_nothing(db):
    spec = parse_spec(SPEC)
    with db.session() as s:
        store.create_job(s, "j1", spec, "token:me", "submitted")
    with db.session() as s:
        job = store.lock_job(s, "j1")
        alice = store.job_party(s, "j1", "alice")
        store.change_state(s, Entity.APPROVAL, alice, ApprovalState.ACCEPTED, "mine", "token:me")
        store.settle_approval(s, job, "token:me")
        assert job.state == "awaiting_approval"
    with pytest.raises(IllegalTransitionError), db.session() as s:
        store.change_state(s, Entity.APPROVAL, store.job_party(s, "j1", "alice"), ApprovalState.REJECTED, "no", "x")
    with db.session() as s:
        job = store.lock_job(s, "j1")
        store.change_state(s, Entity.APPROVAL, store.job_party(s, "j1", "bob"), ApprovalState.REJECTED, "too big", "party:bob")
        store.settle_approval(s, job, "party:bob")
    with db.session() as s:
        detail = views.job_detail(s, "j1")
    assert detail["state"] == "rejected" and detail["reason"] == "rejected by party 'bob': too big"
    assert {t["state"] for t in detail["tasks"]} == {"canceled"}
    moves = [(h["entity"], h["party"], h["from"], h["to"], h["actor"]) for h in detail["history"]]
    assert moves[:4] == [("job", None, None, "awaiting_approval", "token:me"),
                         ("approval", "alice", "pending", "accepted", "token:me"),
                         ("approval", "bob", "pending", "rejected", "party:bob"),
                         ("job", None, "awaiting_approval", "rejected", "party:bob")]
    assert len(moves) == 4 + 2 + 4  # two tasks and four party tasks canceled
    assert all(h["at"].endswith("Z") for h in detail["history"])


def test_concurrent_decisions_settle_the_job(db):
    """Two parties' acceptances arriving at once must accept the job (no lost update)."""
    spec = parse_spec(spec_with(parties=SPEC["parties"] + [{"name": "carol", "site": "https://127.0.0.1:21003"}]))
    for round_ in range(5):
        job_id = f"j{round_}"
        with db.session() as s:
            store.create_job(s, job_id, spec, "t", "t")
            store.change_state(s, Entity.APPROVAL, store.job_party(s, job_id, "alice"), "accepted", "", "t")
        barrier = threading.Barrier(2)

        def decide(party: str, job_id: str = job_id, barrier: threading.Barrier = barrier) -> None:
            barrier.wait()
            with db.session() as s:
                job = store.lock_job(s, job_id)
                store.change_state(s, Entity.APPROVAL, store.job_party(s, job_id, party), "accepted", "", party)
                store.settle_approval(s, job, party)

        threads = [threading.Thread(target=decide, args=(p,)) for p in ("bob", "carol")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        with db.session() as s:
            assert views.job_detail(s, job_id)["state"] == "accepted"
