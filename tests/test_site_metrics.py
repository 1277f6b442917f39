"""Metrics from components at the site: reading metrics.jsonl incrementally into the
database (SQLite and PostgreSQL), bounds on what a component's file may hold, and the
series the API serves (own, and shared ones only to partners)."""
from __future__ import annotations

import json
import threading

import pytest

pytest.importorskip("sqlalchemy", reason='the site extra is not installed (pip install -e ".[site]")')

from fed.site.core import components, metrics, store
from fed.site.core.db import Database
from fed.site.core.spec import parse_spec
from fed.site.runner.base import TaskLaunch
from fed.site.taskcontext import METRICS_FILE, TaskContext

SPEC = {
    "initiator": "alice",
    "parties": [{"name": "alice", "site": "https://127.0.0.1:21001"},
                {"name": "bob", "site": "https://127.0.0.1:21002"}],
    "tasks": [{"name": "stats", "component": "stats", "version": "1"},
              {"name": "train", "component": "fedavg", "version": "2", "deps": ["stats"]}],
}


@pytest.fixture
def db(database_url):
    database = Database(database_url)
    database.migrate()
    with database.session() as s:
        store.create_job(s, "job-1", parse_spec(SPEC), "token:test", "test")
    yield database
    database.close()


def context(tmp_path, task="train") -> TaskContext:
    launch = TaskLaunch(job_id="job-1", task=task, attempt=0, party="alice", component="fedavg", version="2",
                        entrypoint="demo.fedavg:run", addresses={}, output_dir=str(tmp_path / task))
    return TaskContext(launch)


def ingest(db, path, task="train", **bounds):
    with db.session() as s:
        return metrics.ingest_metrics_file(s, "job-1", task, "alice", path, **bounds)


def test_points_are_read_incrementally_and_never_twice(db, tmp_path):
    ctx = context(tmp_path)
    path = ctx.output_dir / METRICS_FILE
    assert ingest(db, path).added == 0  # no file yet
    ctx.log_metrics({"accuracy": 0.5, "loss": 1.25}, step=0)
    assert ingest(db, path).added == 2
    assert ingest(db, path).added == 0  # nothing new: idempotent
    ctx.log_metric("accuracy", 0.75, step=1)
    with open(path, "a") as f:
        f.write('{"name": "accuracy", "value": 0.9, "st')  # a line still being written
    assert ingest(db, path).added == 1
    with open(path, "a") as f:
        f.write('ep": 2, "at": 1.0}\n')
    assert ingest(db, path).added == 1
    with db.session() as s:
        got = {m["name"]: m["points"] for m in metrics.series(s, "job-1")}
    assert [p[:2] for p in got["accuracy"]] == [[0, 0.5], [1, 0.75], [2, 0.9]]
    assert [p[:2] for p in got["loss"]] == [[0, 1.25]]


def test_bad_lines_are_skipped_and_counted(db, tmp_path):
    path = tmp_path / METRICS_FILE
    good = {"name": "acc", "value": 1, "step": 3, "at": 2.0}
    bad = ["not json", "[1, 2]", json.dumps({**good, "value": "1"}), json.dumps({**good, "value": True}),
           json.dumps({**good, "step": 1.5}), json.dumps({**good, "name": ""}),
           json.dumps({**good, "name": "x" * 101}), '{"name": "acc", "value": NaN, "at": 1}',
           json.dumps({**good, "pad": "y" * 5000}), "[" * 3000]
    path.write_text("\n".join([*bad, json.dumps(good)]) + "\n")
    result = ingest(db, path)
    assert (result.added, result.bad_lines) == (1, len(bad))


def test_an_overlong_line_is_skipped_even_across_reads(db, tmp_path):
    path = tmp_path / METRICS_FILE
    path.write_text("z" * (metrics.MAX_LINE_BYTES + 10))  # no newline yet, already too long
    assert ingest(db, path).bad_lines == 1
    with open(path, "a") as f:
        f.write("zzz\n" + json.dumps({"name": "acc", "value": 2, "step": None, "at": 1}) + "\n")
    result = ingest(db, path)
    assert (result.added, result.bad_lines) == (1, 0)
    with db.session() as s:
        assert metrics.series(s, "job-1")[0]["points"] == [[None, 2.0, 1.0]]


def test_points_beyond_the_bound_are_dropped(db, tmp_path):
    path = tmp_path / METRICS_FILE
    path.write_text("".join(json.dumps({"name": "m", "value": i, "step": i, "at": 0}) + "\n" for i in range(5)))
    result = ingest(db, path, task="stats", max_points=3)
    assert (result.added, result.dropped) == (3, 2)
    with open(path, "a") as f:
        f.write(json.dumps({"name": "m", "value": 9, "step": 9, "at": 0}) + "\n")
    assert ingest(db, path, task="stats", max_points=3).dropped == 1


def test_only_components_registered_as_sharing_are_shared(db, tmp_path):
    for task in ("stats", "train"):
        context(tmp_path, task).log_metric(f"{task}_metric", 1.0, step=0)
        ingest(db, tmp_path / task / METRICS_FILE, task)
    with db.session() as s:
        components.add_component(s, "stats", "1", "demo.stats:run")  # private (default)
        components.add_component(s, "fedavg", "2", "demo.fedavg:run", share_metrics=True)
    with db.session() as s:
        assert {m["name"] for m in metrics.series(s, "job-1")} == {"stats_metric", "train_metric"}
        assert [m["name"] for m in metrics.series(s, "job-1", "alice", shared_only=True)] == ["train_metric"]
        components.add_component(s, "fedavg", "2", "demo.fedavg:run", share_metrics=False)
    with db.session() as s:
        assert metrics.series(s, "job-1", "alice", shared_only=True) == []


def test_concurrent_reads_of_one_file_store_each_point_once(db, tmp_path):
    ctx = context(tmp_path)
    for step in range(200):
        ctx.log_metric("loss", 1.0 / (step + 1), step=step)
    errors = []

    def read() -> None:
        try:
            ingest(db, ctx.output_dir / METRICS_FILE)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=read) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    with db.session() as s:
        assert [p[0] for p in metrics.series(s, "job-1")[0]["points"]] == list(range(200))
