"""``python -m fed.site.taskmain``: the process that runs one party task.

Both runners start this command with the launch (JSON) in ``RAYFED_TASK_LAUNCH``. It
resolves the launch's entrypoint, ``package.module:function``, which the site took
from its own component registry (a peer only names a component), builds the
:class:`~fed.site.taskcontext.TaskContext`, creates the output directory and calls the
component. Inside a Ray job (``RAY_ADDRESS`` set) it first connects to that cluster,
so the component's ``fed.init`` joins the party's cluster instead of starting one.

Exit codes: 0 the component returned, 1 it raised (traceback on stderr, so in the
run's logs), 2 the launch is bad (the reason on stderr).
"""
from __future__ import annotations

import importlib
import json
import os
import sys
import traceback
from collections.abc import Callable, Mapping
from typing import Any

from fed.names import party_name_problem
from fed.site.errors import LaunchError
from fed.site.runner.base import LAUNCH_ENV, TaskLaunch
from fed.site.taskcontext import TaskContext

EXIT_OK, EXIT_FAILED, EXIT_BAD_LAUNCH = 0, 1, 2


def read_launch(environ: Mapping[str, str]) -> TaskLaunch:
    """The launch in ``environ``, checked enough to run it; LaunchError says what is wrong."""
    text = environ.get(LAUNCH_ENV)
    if not text:
        raise LaunchError(f"{LAUNCH_ENV} is not set: this command is started by a site's runner, "
                          "which puts the task's launch there")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LaunchError(f"{LAUNCH_ENV} is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise LaunchError(f"{LAUNCH_ENV} must hold a JSON object, got {type(data).__name__}")
    try:
        launch = TaskLaunch(**data)
    except TypeError as exc:
        raise LaunchError(f"{LAUNCH_ENV} is not a task launch: {exc}") from None
    problem = _launch_problem(launch)
    if problem:
        raise LaunchError(f"bad launch for task {launch.task!r} of job {launch.job_id!r}: {problem}")
    return launch


def _launch_problem(launch: TaskLaunch) -> str | None:
    if party_name_problem(launch.party):
        return party_name_problem(launch.party)
    if not isinstance(launch.addresses, dict) or launch.party not in launch.addresses:
        return f"addresses must map every party of the task to host:port, including {launch.party!r}"
    if not isinstance(launch.output_dir, str) or not launch.output_dir:
        return "output_dir is empty: the site gives every run a directory of its own"
    if not isinstance(launch.params, dict) or not isinstance(launch.inputs, dict):
        return "params and inputs must be JSON objects"
    return None


def resolve(entrypoint: str) -> Callable[[TaskContext], Any]:
    """The callable named ``package.module:attr[.attr...]``."""
    module_name, sep, attr_path = entrypoint.partition(":") if isinstance(entrypoint, str) else ("", "", "")
    if not (module_name and sep and attr_path):
        raise LaunchError(f"entrypoint {entrypoint!r} is not package.module:function")
    try:
        target: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise LaunchError(f"entrypoint {entrypoint!r}: module {exc.name!r} is not importable in this "
                          "party's environment (install it where the party's Ray cluster runs)") from None
    for name in attr_path.split("."):
        if not hasattr(target, name):
            raise LaunchError(f"entrypoint {entrypoint!r}: {module_name} has no {attr_path!r}")
        target = getattr(target, name)
    if not callable(target):
        raise LaunchError(f"entrypoint {entrypoint!r} is not callable ({type(target).__name__})")
    return target


def _connect_ray(environ: Mapping[str, str]) -> bool:
    """Join the Ray cluster this process was started in (a Ray job); True if joined."""
    address = environ.get("RAY_ADDRESS")
    if not address:
        return False
    import ray

    if not ray.is_initialized():
        ray.init(address=address, configure_logging=False)
    return True


def run(environ: Mapping[str, str] = os.environ) -> int:
    """Run the launch in ``environ``; the exit code (see the module's docstring)."""
    try:
        launch = read_launch(environ)
        component = resolve(launch.entrypoint)
    except LaunchError as exc:
        print(f"rayfed task: {exc}", file=sys.stderr, flush=True)
        return EXIT_BAD_LAUNCH
    ctx = TaskContext(launch)
    print(f"rayfed task {launch.job_id}/{launch.task} attempt {launch.attempt} as party {launch.party}: "
          f"component {launch.component} {launch.version} ({launch.entrypoint})", flush=True)
    joined = False
    try:
        ctx.output_dir.mkdir(parents=True, exist_ok=True)
        joined = _connect_ray(environ)
        component(ctx)
    except BaseException:  # noqa: BLE001 (the component's failure, whatever it is, is the run's)
        traceback.print_exc()
        sys.stderr.flush()
        return EXIT_FAILED
    finally:
        if joined:
            import ray

            ray.shutdown()
    print(f"rayfed task {launch.job_id}/{launch.task}: done", flush=True)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(run())
