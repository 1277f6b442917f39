"""Components the runner contract runs (entrypoints ``runner_components:NAME``).

They coordinate with the test through files named in their parameters, never through
time: ``gate`` waits for a file the test creates, ``marker`` tells the test it started.
"""
from __future__ import annotations

import time
from pathlib import Path

from fed.site.taskcontext import TaskContext


def gated(ctx: TaskContext) -> None:
    """Record one start, then wait until the test creates the gate file."""
    with open(ctx.params["counter"], "a") as out:
        out.write(f"{ctx.launch.submission_id}\n")
    gate = Path(ctx.params["gate"])
    while not gate.exists():
        time.sleep(0.05)
    (ctx.output_dir / "result.txt").write_text("done")


def failing(ctx: TaskContext) -> None:
    raise ValueError(f"component failed on purpose: {ctx.params['word']}")


def chatty(ctx: TaskContext) -> None:
    """Print many numbered lines, then a last one the test looks for."""
    for i in range(int(ctx.params["lines"])):
        print(f"line {i:06d} " + "x" * 80)
    print("LAST LINE", flush=True)


def writes_output(ctx: TaskContext) -> None:
    (ctx.output_dir / "out.txt").write_text(ctx.party)
    ctx.log_metric("answer", 42.0, step=1)


not_callable = 42
