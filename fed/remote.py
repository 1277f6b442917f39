"""Remote functions, actor classes and handles: the multi-controller rule.

Every party runs every `.remote()` call and draws its sequence id; only the party a
call is pinned to submits it to Ray. For each argument produced in another party,
the producer pushes the value (once per destination) and the consumer waits on a
receive barrier. `.party()` and `.options()` return new objects, so they never leak
into later calls.
"""
from __future__ import annotations

import inspect
from typing import Any

import ray

from fed import _context
from fed.egress import check_egress
from fed.errors import FedConfigError, FedEgressDenied, FedError
from fed.object import FedObject
from fed.transport.base import MessageKey
from fed.tree import map_leaves


def _is_fed(value: Any) -> bool:
    return isinstance(value, FedObject)


def _call_name(obj: Any) -> str:
    module = getattr(obj, "__module__", None) or "?"
    return f"{module}.{getattr(obj, '__qualname__', getattr(obj, '__name__', repr(obj)))}"


def _check_party(party: Any) -> str:
    ctx = _context.get()
    if party not in ctx.config.parties:
        raise FedConfigError(
            f"unknown party {party!r}: this job's parties are {sorted(ctx.config.parties)}"
        )
    return party


def _num_returns(options: dict[str, Any]) -> int:
    n = options.get("num_returns", 1)
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise FedConfigError(
            f"num_returns must be a fixed non-negative int in rayfed (every party must know "
            f"how many values a call returns), got {n!r}"
        )
    return n


def prepare_args(
    call_party: str, seq_id: int, call: str, args: tuple, kwargs: dict
) -> tuple[tuple, dict]:
    """Push what peers need and swap fed objects for Ray refs this party can use.

    Top-level fed objects become refs that Ray resolves to values; nested ones stay
    refs (the task resolves them with `fed.get`), as in RayFed.
    """
    ctx = _context.get()

    def to_ref(obj: FedObject) -> ray.ObjectRef | None:
        return route(ctx, obj, call_party, seq_id, call)

    new_args = tuple(map_leaves(a, _is_fed, to_ref) for a in args)
    new_kwargs = {k: map_leaves(v, _is_fed, to_ref) for k, v in kwargs.items()}
    return new_args, new_kwargs


def route(ctx, obj: FedObject, dst: str, seq_id: int, call: str) -> ray.ObjectRef | None:
    """Move `obj` to party `dst` (once) if it lives elsewhere.

    Returns the ref `dst` uses for it when this process executes `dst`'s calls, else
    None. Every party takes the same decisions here, so message ordinals agree.
    """
    if obj._generation is not None and obj._generation is not ctx.generation:
        raise FedError(
            f"{obj!r} comes from an earlier fed.init: that job was shut down and its values "
            "are gone. Compute the value again in this job"
        )
    src = obj.get_party()
    if src == dst:
        return obj._ref if ctx.executes(dst) else None
    if dst not in obj._sent_to:
        obj._sent_to.add(dst)
        key = MessageKey(
            job=ctx.job_name, src=src, dst=dst, ordinal=ctx.next_ordinal(src, dst),
            producer_seq=obj._seq_id, producer_index=obj._index, producer_call=obj.call,
            consumer_seq=seq_id, consumer_call=call,
        )
        if ctx.executes(src):
            try:
                check_egress(ctx.config, key)  # this party's data perimeter (fed/egress.py)
            except FedEgressDenied:
                # dst's barrier on it must not wait; the policy's reason stays here.
                ctx.transport.vetoed(key, f"party {src!r}'s egress policy did not let it leave")
                if ctx.executes(dst):  # simulation: dst's copy fails, now and at every reuse
                    obj._received[dst] = ctx.transport.receive(key)
                raise
            ctx.transport.send(key, obj._ref)
        if ctx.executes(dst):
            obj._received[dst] = ctx.transport.receive(key)
    return obj._received.get(dst) if ctx.executes(dst) else None


def _simulation_name(ctx, options: dict[str, Any], party: str, name: str) -> dict[str, Any]:
    """In simulation, name the Ray task ``party:function`` so errors and logs show the party."""
    if not ctx.simulation or "name" in options:
        return options
    return {**options, "name": f"{party}:{name}"}


def _wrap_results(party: str, seq_id: int, call: str, result: Any, n: int) -> Any:
    """FedObject(s) for a call's outputs; `result` is the Ray ref(s) or None when skipped."""
    generation = _context.get().generation
    if n == 1:
        return FedObject(party, seq_id, call, result, generation=generation)
    refs = list(result) if result is not None else [None] * n
    return [FedObject(party, seq_id, call, refs[i], index=i, generation=generation)
            for i in range(n)]


class _Pinnable:
    """What remote functions and classes share: a target pinned to a party, with Ray
    options; `.party()` and `.options()` return new objects and never change this one."""

    def __init__(self, target: Any, options: dict[str, Any], party: str | None = None):
        self._target = target
        self._options = options
        self._party = party
        self._ray_target = None  # the ray.remote wrapper, made once per decorated target
        self._call = _call_name(target)

    def _derive(self, party: str | None, options: dict[str, Any]) -> Any:
        clone = type(self).__new__(type(self))
        clone.__dict__.update(self.__dict__)
        clone._party, clone._options = party, options
        clone._root = getattr(self, "_root", self)
        return clone

    def party(self, party: str) -> Any:
        """The same target pinned to `party` (this object is unchanged)."""
        return self._derive(party, self._options)

    def options(self, **options: Any) -> Any:
        """The same target with Ray options (e.g. num_returns, num_cpus) added."""
        return self._derive(self._party, {**self._options, **options})

    def _begin(self) -> tuple[_context.FedContext, str, int]:
        """Checks, then this call's context, party and sequence id (drawn in every party)."""
        if self._party is None:
            raise FedConfigError(
                f"{self._call} has no party: call {self._target.__name__}.party('alice')"
                ".remote(...) or decorate it with @fed.remote(party='alice')"
            )
        ctx = _context.get()
        party = _check_party(self._party)
        return ctx, party, ctx.next_seq_id()

    def _ray(self, ctx: _context.FedContext) -> Any:
        """The ray.remote wrapper of the target, made once for all derived objects."""
        root = getattr(self, "_root", self)
        return ctx.made_once(root, "_ray_target", lambda: ray.remote(self._target))


class FedRemoteFunction(_Pinnable):
    """A function decorated with `@fed.remote`; call `.party(p).remote(...)`."""

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        ctx, party, seq_id = self._begin()
        n = _num_returns(self._options)
        args, kwargs = prepare_args(party, seq_id, self._call, args, kwargs)
        result = None
        if ctx.executes(party):
            options = _simulation_name(ctx, self._options, party, self._target.__qualname__)
            fn = self._ray(ctx)
            result = (fn.options(**options) if options else fn).remote(*args, **kwargs)
        return _wrap_results(party, seq_id, self._call, result, n)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise FedError(
            f"{self._call} is a fed remote function: call it with "
            f".party(name).remote(...), not directly"
        )


class FedRemoteClass(_Pinnable):
    """A class decorated with `@fed.remote`; `.party(p).remote(...)` creates the actor."""

    def remote(self, *args: Any, **kwargs: Any) -> FedActorHandle:
        ctx, party, seq_id = self._begin()
        call = f"{self._call}.__init__"
        args, kwargs = prepare_args(party, seq_id, call, args, kwargs)
        handle = None
        if ctx.executes(party):
            cls = self._ray(ctx)
            handle = (cls.options(**self._options) if self._options else cls).remote(
                *args, **kwargs)
        return FedActorHandle(party, seq_id, self._target, self._call, handle)


class FedActorHandle:
    """A fed actor in some party; `handle.method.remote(...)` runs there."""

    def __init__(self, party: str, seq_id: int, cls: type, call: str, ray_handle: Any):
        self._party = party
        self._seq_id = seq_id
        self._cls = cls
        self._call = call
        self._ray_handle = ray_handle

    def get_party(self) -> str:
        return self._party

    def __getattr__(self, name: str) -> FedActorMethod:
        if name.startswith("__"):
            raise AttributeError(name)
        member = inspect.getattr_static(self._cls, name, None)
        if member is None or not callable(getattr(self._cls, name, None)):
            raise AttributeError(f"{self._cls.__name__} fed actor has no method {name!r}")
        return FedActorMethod(self, name, {})

    def __repr__(self) -> str:
        return f"FedActorHandle({self._call}, party={self._party!r}, id={self._seq_id})"


class FedActorMethod:
    """`handle.method`; `.options(num_returns=2)` returns a new method object."""

    def __init__(self, handle: FedActorHandle, name: str, options: dict[str, Any]):
        self._handle = handle
        self._name = name
        self._options = options

    def options(self, **options: Any) -> FedActorMethod:
        return FedActorMethod(self._handle, self._name, {**self._options, **options})

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        ctx = _context.get()
        handle = self._handle
        n = _num_returns(self._options)
        seq_id = ctx.next_seq_id()
        call = f"{handle._call}.{self._name}"
        args, kwargs = prepare_args(handle._party, seq_id, call, args, kwargs)
        result = None
        if ctx.executes(handle._party):
            method = getattr(handle._ray_handle, self._name)
            options = _simulation_name(ctx, self._options, handle._party,
                                       f"{handle._cls.__qualname__}.{self._name}")
            if options:
                method = method.options(**options)
            result = method.remote(*args, **kwargs)
        return _wrap_results(handle._party, seq_id, call, result, n)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise FedError(f"call fed actor methods with .remote(...): {self._name}.remote(...)")


def remote(*args: Any, **kwargs: Any) -> Any:
    """`@fed.remote`, `@fed.remote(num_cpus=1)` or `@fed.remote(party="bob")`."""
    if len(args) == 1 and not kwargs and (inspect.isfunction(args[0]) or inspect.isclass(args[0])
                                          or callable(args[0])):
        return _make(args[0], {}, None)
    if args:
        raise FedConfigError("@fed.remote takes keyword options only, e.g. @fed.remote(num_cpus=1)")
    party = kwargs.pop("party", None)
    if party is not None and not isinstance(party, str):
        raise FedConfigError(f"@fed.remote(party=...) must be a party name, got {party!r}")

    def decorate(obj: Any) -> Any:
        return _make(obj, dict(kwargs), party)

    return decorate


def _make(obj: Any, options: dict[str, Any], party: str | None) -> Any:
    if inspect.isclass(obj):
        return FedRemoteClass(obj, options, party)
    if callable(obj):
        return FedRemoteFunction(obj, options, party)
    raise FedConfigError(f"@fed.remote decorates functions and classes, not {type(obj).__name__}")
