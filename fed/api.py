"""init / shutdown / get / kill: thin entry points over the context and the channel."""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

import ray

from fed import _context, _log
from fed._failure import SendFailurePolicy
from fed.config import build_config
from fed.errors import FedConfigError, FedError, FedTimeoutError, remote_error_from
from fed.names import JOB_NAME_ENV as _JOB_NAME_ENV  # set per run by `fed run`
from fed.object import FedObject
from fed.remote import FedActorHandle, route


def init(
    address: str | None = None,
    cluster: Mapping[str, Any] | None = None,
    party: str | None = None,
    *,
    addresses: Mapping[str, Any] | None = None,
    tls_config: Mapping[str, Any] | None = None,
    config: Mapping[str, Any] | None = None,
    job_name: str | None = None,
    logging_level: str = "info",
    mode: str | None = None,
    sending_failure_handler: Callable[[Exception], None] | None = None,
    sender_proxy_cls: Any = None,
    receiver_proxy_cls: Any = None,
    receiver_sender_proxy_cls: Any = None,
) -> None:
    """Join a job as `party`: start Ray if needed, then this party's channel.

    Two address forms are accepted: ``cluster={"alice": {"address": "host:port"}}``
    (with ``address="local"`` fed.init starts this party's own Ray cluster), and
    ``addresses={"alice": "host:port"}`` with Ray already initialised by the caller.
    ``mode="simulation"`` runs every party's calls in this one process.
    """
    address, cluster, party, addresses = _rayfed_positional_form(address, cluster, party, addresses)
    if _context.peek() is not None:
        raise FedError("fed.init was already called in this process: call fed.shutdown() first")
    if sender_proxy_cls or receiver_proxy_cls or receiver_sender_proxy_cls:
        raise FedConfigError(
            "custom proxy classes are not supported: rayfed's channel is a TCP/TLS stream "
            "behind fed.transport.base.Transport; drop the *_proxy_cls arguments"
        )
    _log.configure(logging_level)
    default_job = job_name is None and not os.environ.get(_JOB_NAME_ENV)
    cfg = build_config(
        party=party, addresses=addresses, cluster=cluster, config=config,
        tls_config=tls_config, job_name=job_name or os.environ.get(_JOB_NAME_ENV) or None,
        mode=mode,
    )
    log = _log.party_logger(cfg.party if cfg.mode == "production" else "simulation", cfg.job_name)
    if default_job and cfg.mode == "production" and len(cfg.parties) > 1:
        _warn_default_job_name(log, cfg.job_name)
    started_ray = _start_ray(address, log)
    failures = SendFailurePolicy(sending_failure_handler, cfg.comm.exit_on_sending_failure, log)
    transport = _start_transport(cfg, failures, started_ray)
    _context.set_current(_context.FedContext(
        config=cfg, transport=transport, log=log, started_ray=started_ray,
        sending_failure_handler=sending_failure_handler, send_failures=failures,
    ))
    log.info(
        "joined job %r as %r (%s mode) with parties %s",
        cfg.job_name, cfg.party, cfg.mode,
        {p: str(a.address) for p, a in cfg.parties.items()},
    )


def _rayfed_positional_form(address: Any, cluster: Any, party: str | None,
                            addresses: Mapping[str, Any] | None) -> tuple:
    """RayFed's ``fed.init(addresses, party)`` as (address, cluster, party, addresses)."""
    if isinstance(address, Mapping):
        addresses, address = address, None
        if isinstance(cluster, str) and party is None:
            party, cluster = cluster, None
    return address, cluster, party, addresses


def _warn_default_job_name(log: logging.LoggerAdapter, job_name: str) -> None:
    log.warning(
        "no job_name given: every run of this script is job %r, so a party left over "
        "from an earlier run could take this run's values as its own. Pass a job_name "
        "unique to the run to fed.init in every party, or start the parties with "
        "`fed run` (it sets %s).", job_name, _JOB_NAME_ENV,
    )


def _start_ray(address: str | None, log: logging.LoggerAdapter) -> bool:
    """Start this party's Ray cluster unless the caller did; True if we started it."""
    if not ray.is_initialized():
        ray.init(address=address or "local", include_dashboard=False, configure_logging=False)
        return True
    if address not in (None, "local"):
        log.warning("Ray is already initialised in this process; ignoring address=%r", address)
    return False


def _start_transport(cfg: Any, failures: SendFailurePolicy, started_ray: bool) -> Any:
    """The channel for `cfg.mode`, started (and the peers awaited if asked); on failure
    everything started is undone and peers are not told this party finished."""
    if cfg.mode == "simulation":
        from fed.transport.local import LocalTransport

        transport = LocalTransport(cfg, codecs=_context.user_codecs())
    else:
        from fed.transport.tcp import TcpTransport

        transport = TcpTransport(cfg, on_send_failed=failures.report,
                                 codecs=_context.user_codecs())
    try:
        transport.start()
        if cfg.barrier_on_initializing and cfg.mode == "production":
            transport.wait_for_peers(cfg.comm.startup_timeout_s)
    except BaseException:
        transport.stop(0, aborted=True)  # peers must not read this as "finished"
        if started_ray:
            ray.shutdown()
        raise
    return transport


def register_codec(cls: type, encode: Callable[[Any], Any] | None = None,
                   decode: Callable[[Any], Any] | None = None, *,
                   name: str | None = None) -> None:
    """Let values of `cls` cross parties as data (docs/api.md).

    ``encode(value)`` returns supported values (dicts, lists, numpy arrays, ...);
    ``decode(plain)`` builds the instance from them. A dataclass may omit both: its
    init fields cross as a dict. Every party must register the same codec under the
    same name (default ``module.QualName``), before or after `fed.init`.
    """
    from fed.codec import make_user_codec

    codecs = _context.add_user_codec(make_user_codec(cls, encode, decode, name))
    ctx = _context.peek()
    if ctx is not None:
        ctx.transport.set_codecs(codecs)


def shutdown() -> None:
    """Flush pending sends (bounded), stop the channel, reset all state; idempotent."""
    ctx = _context.peek()
    if ctx is None:
        return
    _context.set_current(None)
    started = time.monotonic()
    failures = ctx.transport.stop(
        ctx.config.comm.shutdown_flush_timeout_s, next_ordinals=_next_ordinals(ctx)
    )
    failures = [_cause(f) for f in failures]
    for failure in failures:
        ctx.log.error("a cross-party send failed: %s", failure)
    must_exit = ctx.send_failures is not None and ctx.send_failures.at_shutdown(failures)
    if ctx.started_ray:
        ray.shutdown()
    ctx.log.info("left job %r in %.2f s", ctx.job_name, time.monotonic() - started)
    if must_exit:
        raise SystemExit(1)


def _next_ordinals(ctx: _context.FedContext) -> dict[str, int]:
    """Per peer, the next ordinal of our channel to it: every ordinal below was sent or
    vetoed, so the peer's barriers on higher ones fail at our BYE."""
    return {dst: n for (src, dst), n in ctx._channel.items() if src == ctx.party}


def get(fed_objects: Any, timeout: float | None = None) -> Any:
    """The value(s) of fed object(s); the owner pushes them to every party calling this.

    With `timeout` (seconds), raise FedTimeoutError if the values are not all here in
    time (a peer's task that hangs while its process stays alive is otherwise waited
    for forever). Inside a task, nested arguments arrive as Ray ObjectRefs: `fed.get`
    resolves those too.
    """
    if isinstance(fed_objects, ray.ObjectRef):
        return ray.get(fed_objects, timeout=timeout)
    if isinstance(fed_objects, list) and fed_objects and all(
        isinstance(o, ray.ObjectRef) for o in fed_objects
    ):
        return ray.get(fed_objects, timeout=timeout)
    ctx = _context.get()
    single = isinstance(fed_objects, FedObject)
    items = [fed_objects] if single else list(fed_objects)
    for item in items:
        if not isinstance(item, FedObject):
            raise FedError(f"fed.get takes FedObjects (or a list of them), got {type(item).__name__}")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                or timeout < 0):
        raise FedConfigError(f"fed.get timeout must be a number of seconds >= 0, got {timeout!r}")
    seq_id = ctx.next_seq_id()
    refs = []
    for obj in items:
        for dst in ctx.config.parties:
            if dst != obj.get_party():
                route(ctx, obj, dst, seq_id, "fed.get")
        refs.append(obj._ref if obj.get_party() == ctx.party else obj._received[ctx.party])
    try:
        values = _get_within(ctx, items, refs, timeout)
    except ray.exceptions.RayTaskError as exc:
        ctx.transport.refresh_failure()
        raise _task_failure(items, refs, exc) from _chained(exc)
    failure = ctx.transport.job_failure()
    if failure is not None:  # decided: every later fed.get says the same, value or not
        raise failure
    return values[0] if single else values


def _task_failure(items: list[FedObject], refs: list, exc: BaseException) -> FedError:
    """The error fed.get raises for a failed call, the same type in every party.

    A rayfed error inside Ray's wrapper (e.g. the FedRemoteError a peer sent) is
    raised as is; a failure of this party's own task becomes the FedRemoteError its
    peers receive for it, with Ray's error as ``__cause__``.
    """
    cause = _cause(exc)
    if isinstance(cause, FedError):
        return cause.with_traceback(None)
    failed = _failed_item(items, refs)
    return remote_error_from(exc, failed.get_party(), failed.call, True)


def _chained(exc: BaseException) -> BaseException | None:
    """Ray's error as the cause, unless it only wraps a rayfed error."""
    return None if isinstance(_cause(exc), FedError) else exc


def _failed_item(items: list[FedObject], refs: list) -> FedObject:
    """The first fed object whose (finished) value is an error."""
    unique = list(dict.fromkeys(refs))
    done = set(ray.wait(unique, num_returns=len(unique), timeout=0)[0])
    for obj, ref in zip(items, refs):
        if ref in done:
            try:
                ray.get(ref)
            except ray.exceptions.RayTaskError:
                return obj
    return items[0]


def _get_within(ctx: _context.FedContext, items: list, refs: list,
                timeout: float | None) -> list:
    """ray.get of the barriers, as FedTimeoutError naming the missing values on timeout."""
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        values = ray.get(refs, timeout=timeout)
        if ctx.simulation:  # the other parties run this fed.get too: their copies must arrive
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            ray.get([r for obj in items for p, r in obj._received.items() if p != ctx.party],
                    timeout=left)
    except ray.exceptions.GetTimeoutError:
        unique = list(dict.fromkeys(refs))
        ready, _ = ray.wait(unique, num_returns=len(unique), timeout=0)
        missing = [o for o, r in zip(items, refs) if r not in ready] or items
        names = ", ".join(f"{o.call} (id {o.get_fed_task_id()}) of party {o.get_party()!r}"
                          for o in missing[:5])
        raise FedTimeoutError(
            f"fed.get timed out after {timeout:g} s in party {ctx.party!r} waiting for "
            f"{names}; its task may still be running or hung there. Call fed.get again to "
            "keep waiting, or fed.shutdown() to give up"
        ) from None
    return values


def kill(actor: FedActorHandle, *, no_restart: bool = True) -> None:
    """Kill a fed actor in the party that owns it (other parties do nothing)."""
    ctx = _context.get()
    if not isinstance(actor, FedActorHandle):
        raise FedError(f"fed.kill takes a fed actor handle, got {type(actor).__name__}")
    if ctx.executes(actor.get_party()):
        ray.kill(actor._ray_handle, no_restart=no_restart)


def stats() -> dict[str, Any]:
    """Channel counters of this party: values and bytes per peer, retries, refusals."""
    return _context.get().transport.stats()


def _cause(exc: BaseException) -> BaseException:
    """The user-facing error inside Ray's wrappers."""
    seen = 0
    while isinstance(exc, ray.exceptions.RayTaskError) and exc.cause is not None and seen < 10:
        exc = exc.cause
        seen += 1
    return exc


logging.getLogger(_log.LOGGER_NAME).addHandler(logging.NullHandler())
