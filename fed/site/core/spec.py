"""The job spec: parties, initiator, scheduler, sync mode and a DAG of tasks.

Parsed strictly (unknown fields and wrong types are errors), then checked as a whole:
party and task names, site URLs, references between fields and cycles. Every problem
is reported at once with the path of its field (:class:`~fed.site.errors.JobSpecError`).
Whether a party has the components a task names is a check of that party's site
(:func:`missing_components`), since each party registers its own.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fed.site.core.validation import (
    name_problem,
    normal_url,
    problems_from,
    site_url_problem,
)
from fed.site.errors import JobSpecError

_MODEL = ConfigDict(strict=True, extra="forbid", frozen=True)
_Version = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")]


class PartySpec(BaseModel):
    """A party of the job and where its site listens."""

    model_config = _MODEL
    name: str
    site: str
    #: False for a third-party scheduler: it runs no task and sees no data.
    holds_data: bool = True


class TaskSpec(BaseModel):
    """One node of the DAG: a registered component run by its parties together."""

    model_config = _MODEL
    name: str
    component: str
    version: _Version
    deps: list[str] = []
    #: Parameters every party receives.
    params: dict[str, Any] = {}
    #: ``{party: {param: value}}``, merged over ``params`` for that party.
    party_params: dict[str, dict[str, Any]] = {}
    #: The parties that run it; default: every party holding data.
    parties: list[str] | None = None
    timeout_s: Annotated[float, Field(gt=0)] = 3600.0
    retries: Annotated[int, Field(ge=0, le=100)] = 0


class JobSpec(BaseModel):
    """A job as proposed by its initiator (the same document reaches every party)."""

    model_config = _MODEL
    name: str | None = None
    parties: Annotated[list[PartySpec], Field(min_length=1)]
    initiator: str
    #: The party that starts tasks and combines states; default: the initiator.
    scheduler: str | None = None
    sync_mode: Literal["callback", "poll"] = "callback"
    tasks: Annotated[list[TaskSpec], Field(min_length=1)]

    @property
    def scheduler_party(self) -> str:
        return self.scheduler or self.initiator

    @property
    def party_names(self) -> list[str]:
        return [p.name for p in self.parties]

    def site_of(self, party: str) -> str:
        return next(normal_url(p.site) for p in self.parties if p.name == party)

    def task_parties(self, task: TaskSpec) -> list[str]:
        """Who runs ``task``: its ``parties``, else every party holding data."""
        if task.parties is not None:
            return list(task.parties)
        return [p.name for p in self.parties if p.holds_data]

    def to_json(self) -> str:
        return self.model_dump_json(exclude_none=True)


_FIELDS = set(PartySpec.model_fields) | set(TaskSpec.model_fields) | set(JobSpec.model_fields)


def parse_spec(data: Any, source: str = "job spec") -> JobSpec:
    """Validate ``data`` (the decoded YAML/JSON document) into a JobSpec, or raise
    JobSpecError listing every problem with its field path."""
    if not isinstance(data, Mapping):
        raise JobSpecError([("", f"expected a mapping at the top, got {type(data).__name__}")], source)
    try:
        spec = JobSpec.model_validate(dict(data))
    except ValidationError as exc:
        raise JobSpecError(problems_from(exc, _FIELDS), source) from None
    problems = _party_problems(spec) + _task_problems(spec)
    if problems:
        raise JobSpecError(problems, source)
    return spec


def load_spec_file(path: str | Path) -> JobSpec:
    """Read and validate a YAML (or JSON) job spec file."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise JobSpecError([("", f"cannot read it: {exc.strerror}")], str(path)) from None
    except yaml.YAMLError as exc:
        raise JobSpecError([("", f"not valid YAML/JSON: {exc}")], str(path)) from None
    return parse_spec(data, str(path))


def spec_from_json(text: str) -> JobSpec:
    """A spec stored by this site (already validated when it arrived)."""
    return parse_spec(json.loads(text), "stored job spec")


def _party_problems(spec: JobSpec) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    seen: set[str] = set()
    for i, party in enumerate(spec.parties):
        bad = name_problem(party.name, "party")
        if bad:
            problems.append((f"parties[{i}].name", bad))
        elif party.name in seen:
            problems.append((f"parties[{i}].name", f"party {party.name!r} is listed twice"))
        seen.add(party.name)
        bad = site_url_problem(party.site)
        if bad:
            problems.append((f"parties[{i}].site", bad))
    names = ", ".join(spec.party_names)
    for field in ("initiator", "scheduler"):
        value = getattr(spec, field)
        if value is not None and value not in seen:
            problems.append((field, f"party {value!r} is not in the job (parties: {names})"))
    for i, party in enumerate(spec.parties):
        if not party.holds_data and party.name != spec.scheduler_party:
            problems.append((f"parties[{i}].holds_data", (f"party {party.name!r} holds no data and is not "
                             "the scheduler, so it has nothing to do in this job; remove it")))
    if not any(p.holds_data for p in spec.parties):
        problems.append(("parties", "no party holds data, so no party can run a task"))
    return problems


def _task_problems(spec: JobSpec) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    index: dict[str, int] = {}
    for i, task in enumerate(spec.tasks):
        for field, value, what in (("name", task.name, "task"), ("component", task.component, "component")):
            bad = name_problem(value, what)
            if bad:
                problems.append((f"tasks[{i}].{field}", bad))
        if task.name in index:
            problems.append((f"tasks[{i}].name", f"task {task.name!r} is defined twice"))
        index.setdefault(task.name, i)
    data_parties = {p.name for p in spec.parties if p.holds_data}
    for i, task in enumerate(spec.tasks):
        problems += _task_refs(i, task, index, data_parties, spec.task_parties(task))
    if not problems:
        cycle = find_cycle({t.name: list(t.deps) for t in spec.tasks})
        if cycle:
            problems.append(("tasks", "the dependencies form a cycle: " + " -> ".join(cycle)))
    return problems


def _task_refs(i: int, task: TaskSpec, index: dict[str, int], data_parties: set[str],
               runners: list[str]) -> list[tuple[str, str]]:
    """Problems of one task's references: deps, parties, party_params."""
    problems = []
    for j, dep in enumerate(task.deps):
        if dep == task.name:
            problems.append((f"tasks[{i}].deps[{j}]", "a task cannot depend on itself"))
        elif dep not in index:
            problems.append((f"tasks[{i}].deps[{j}]", f"unknown task {dep!r} (tasks: {', '.join(index)})"))
    for j, party in enumerate(task.parties or []):
        if party not in data_parties:
            problems.append((f"tasks[{i}].parties[{j}]", (f"party {party!r} is not a data-holding party "
                             f"of the job ({', '.join(sorted(data_parties))})")))
    if task.parties is not None and not task.parties:
        problems.append((f"tasks[{i}].parties", "empty: a task needs at least one party"))
    for party in task.party_params:
        if party not in runners:
            problems.append((f"tasks[{i}].party_params.{party}",
                             f"party {party!r} does not run this task (it runs in: {', '.join(runners)})"))
    return problems


def find_cycle(deps: Mapping[str, list[str]]) -> list[str] | None:
    """A dependency cycle as ``[a, b, ..., a]``, or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for root in deps:
        if state.get(root):
            continue
        path, stack = [root], [iter(deps[root])]
        state[root] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(deps.get(nxt, [])))
    return None


def missing_components(spec: JobSpec, party: str, registered: set[tuple[str, str]]) -> list[tuple[str, str]]:
    """``(field path, problem)`` for each task ``party`` runs whose component version it lacks."""
    problems = []
    for i, task in enumerate(spec.tasks):
        if party in spec.task_parties(task) and (task.component, task.version) not in registered:
            have = sorted(v for n, v in registered if n == task.component)
            detail = f"registered versions: {', '.join(have)}" if have else "not registered at all"
            problems.append((f"tasks[{i}].component", (f"party {party!r} has no component "
                             f"{task.component!r} version {task.version!r} ({detail})")))
    return problems
