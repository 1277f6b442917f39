"""What a component receives: its task, its party, the channel addresses, its parameters,
its inputs and an output directory, and a way to report metrics.

A component is a callable ``fn(ctx: TaskContext) -> None`` that a party registered itself;
it usually runs a rayfed driver::

    def run(ctx):
        fed.init(**ctx.fed_init_kwargs())
        ...
        ctx.log_metric("accuracy", acc, step=round_)
        fed.shutdown()

Metrics are appended to ``metrics.jsonl`` in the output directory, one JSON object a line
(``{"name", "value", "step", "at"}``); the party's site reads them from there.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fed.site.runner.base import TaskLaunch

METRICS_FILE = "metrics.jsonl"


@dataclass(frozen=True)
class TaskContext:
    launch: TaskLaunch

    @property
    def job_id(self) -> str:
        return self.launch.job_id

    @property
    def task(self) -> str:
        return self.launch.task

    @property
    def party(self) -> str:
        return self.launch.party

    @property
    def addresses(self) -> dict[str, str]:
        return dict(self.launch.addresses)

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.launch.params)

    @property
    def inputs(self) -> dict[str, Path]:
        return {name: Path(path) for name, path in self.launch.inputs.items()}

    @property
    def output_dir(self) -> Path:
        return Path(self.launch.output_dir)

    def fed_init_kwargs(self) -> dict[str, Any]:
        """Arguments for ``fed.init`` that join this task's channel as this party."""
        kwargs: dict[str, Any] = {
            "addresses": self.addresses,
            "party": self.party,
            "job_name": self.launch.fed_job_name,
        }
        if self.launch.tls:
            kwargs["tls_config"] = dict(self.launch.tls)
        if self.launch.listen_all_interfaces:
            kwargs["config"] = {"cross_silo_comm": {"listen_all_interfaces": True}}
        return kwargs

    def log_metric(self, name: str, value: float, step: int | None = None) -> None:
        """Record one value of a metric (e.g. accuracy after round ``step``)."""
        self.log_metrics({name: value}, step)

    def log_metrics(self, values: dict[str, float], step: int | None = None) -> None:
        """Record several metrics of the same step in one write."""
        at = time.time()
        lines = []
        for name, value in values.items():
            if not isinstance(name, str) or not name:
                raise ValueError(f"a metric name must be a non-empty string, got {name!r}")
            number = float(value)
            if not math.isfinite(number):
                raise ValueError(f"metric {name!r} must be a finite number, got {value!r}")
            lines.append(json.dumps({"name": name, "value": number, "step": step, "at": at}))
        self.output_dir.mkdir(parents=True, exist_ok=True)
        with open(self.output_dir / METRICS_FILE, "a", encoding="utf-8") as out:
            out.write("".join(line + "\n" for line in lines))
