"""The restricted unpicklers: globals through the allowlist, numpy states checked."""
from __future__ import annotations

import copyreg
import io
import pickle
from collections.abc import Iterable, Iterator
from typing import Any, Optional

import numpy as np

from fed.errors import FedDeserializationRefused, FedSerializationError
from fed.serialization.allowlist import (
    _BY_CLASS_WILDCARD,
    _BY_MODULE,
    _REFUSE,
    Allowlist,
    _module_aliases,
)
from fed.serialization.hints import _refusal, _shorten
from fed.serialization.numpy_guard import _bad_numpy_state, _check_array_state, _dtype_from_state
from fed.serialization.opscan import _scan_opcodes

_NO_MORE = object()
_copyreg_reconstructor = copyreg._reconstructor
_RECONSTRUCT_NAMES = frozenset(
    f"numpy.{core}.multiarray._reconstruct" for core in ("core", "_core")
)


def _admit(allowlist: Allowlist, module: str, name: str, load: Any) -> Any:
    """find_class for both unpicklers: check the allowlist *before* importing."""
    verdict = allowlist._verdict(module, name)
    if verdict == _REFUSE:
        raise _refusal(module, name)
    try:
        obj = load(module, name)
    except (ImportError, AttributeError) as exc:
        raise FedSerializationError(
            f"{_shorten(module + '.' + name)!r} is allowed but cannot be loaded in this "
            f"party ({type(exc).__name__}: {exc}); every party needs the same code installed"
        ) from exc
    if "." in name and getattr(obj, "__qualname__", None) != name:
        # 'pkg.mod' + 'sub.func' must name the object 'pkg.mod.sub.func' is, not an
        # attribute path that happens to spell an admitted entry.
        raise _refusal(module, name)
    if verdict == _BY_MODULE:
        defined_in = getattr(obj, "__module__", None)
        if defined_in != module:
            real = f"{defined_in}.{getattr(obj, '__qualname__', name)}"
            raise _refusal(module, name, defined_in=str(defined_in), real_name=real)
        _check_class_of(module, name, obj)  # a wildcard admits classes, never functions
    elif verdict == _BY_CLASS_WILDCARD:
        _check_class_of(module, name, obj)
    return obj


def _check_class_of(module: str, name: str, obj: Any) -> None:
    """RayFed's ``{"module": ["*"]}`` admits classes defined in the module (or in
    its numpy twin, or published under a parent package name, as numpy does),
    never its functions nor what it imported from elsewhere."""
    defined_in = getattr(obj, "__module__", None)
    if not isinstance(obj, type) or not isinstance(defined_in, str):
        raise FedDeserializationRefused(
            type_name=_shorten(f"{module}.{name}"),
            hint=f"a wildcard for {module!r} admits only the classes of {module!r}, and this "
            f"is a {type(obj).__name__}; if you trust it, allow it by its exact name.",
        )
    if any(issubclass(obj, c) for c in _never_by_wildcard()):
        raise FedDeserializationRefused(
            type_name=_shorten(f"{module}.{name}"),
            hint="this class reads or writes files or calls functions it is given; a "
            "wildcard never admits it (allow it by its exact name only if you must).",
        )
    if defined_in not in _module_aliases(module) and not module.startswith(defined_in + "."):
        real = f"{defined_in}.{obj.__qualname__}"
        raise _refusal(module, name, defined_in=defined_in, real_name=real)


def _never_by_wildcard() -> tuple[type, ...]:
    """Classes a module wildcard never admits: they touch files or call what they get."""
    found = [getattr(np, name, None) for name in ("memmap", "DataSource", "vectorize")]
    return tuple(c for c in found if isinstance(c, type))


#: Constructors that allocate what an int argument says: never called with an int.
_SIZED_CONSTRUCTORS = (bytes, bytearray, np.void)
#: Admitted builtin containers: a genuine pickle never gives them a state (BUILD).
_STATELESS_TYPES = (dict, list, set, frozenset, tuple)


class _NeedsGuard(Exception):
    """Internal: the fast C unpickler met a global only the guarded one may handle."""


def _needs_guard(full_name: str, obj: Any) -> bool:
    """Globals that must not be called freely: the numpy array constructors.

    ``numpy.ndarray(shape, dtype, buffer, offset)`` reads outside its buffer (a
    negative offset) or dereferences raw bytes as object pointers, and
    ``_reconstruct`` returns uninitialized memory; numpy's own pickles only use
    them in fixed patterns that the guarded unpickler checks.
    """
    if full_name in _RECONSTRUCT_NAMES or obj in _SIZED_CONSTRUCTORS:
        return True
    return isinstance(obj, type) and issubclass(obj, np.ndarray)


class _RestrictedUnpickler(pickle.Unpickler):
    """The C unpickler with the allowlist, for pickles that need no further checks.

    Used when the pickle has no BUILD opcode; gives way (``_NeedsGuard``) to
    :class:`_GuardedUnpickler` as soon as it meets a numpy array constructor.
    """

    def __init__(self, file: io.BytesIO, allowlist: Allowlist, buffers: Iterator[Any]) -> None:
        # fix_imports=False: what we check is exactly what gets imported.
        super().__init__(file, fix_imports=False, buffers=buffers)
        self._allowlist = allowlist

    def find_class(self, module: str, name: str) -> Any:
        obj = _admit(self._allowlist, module, name, super().find_class)
        if _needs_guard(f"{module}.{name}", obj):
            raise _NeedsGuard()
        return obj



class _GuardedUnpickler(pickle._Unpickler):  # type: ignore[name-defined]
    """Pure-Python unpickler that also checks what the pickle *does* with globals.

    Used for pickles with BUILD opcodes (applying a state) or numpy array
    constructors: there a pickle reaches C code that trusts its input, or mutates
    shared objects, and only the Python unpickler lets us look:

    * BUILD on a global (an admitted class or function) would monkeypatch it
      process-wide: refused.
    * numpy ``dtype``/``ndarray`` states are checked before numpy sees them
      (numpy crashes on forged ones); a state is applied only to a dtype or array
      this load just created (a dtype is always a copy, never numpy's shared one).
    * numpy arrays are built only the way numpy pickles them
      (``_reconstruct(cls, (0,), ...)`` then a checked state, or ``_frombuffer``):
      calling ``ndarray`` (or a subclass) directly is refused.

    These pickles are the small ones in practice (arrays travel out of band and
    plain dtypes are pickled without state), so the slower interpreter costs little.
    """

    dispatch = dict(pickle._Unpickler.dispatch)  # type: ignore[attr-defined]

    def __init__(self, file: io.BytesIO, allowlist: Allowlist, buffers: Iterator[Any]) -> None:
        super().__init__(file, fix_imports=False, buffers=buffers)
        self._allowlist = allowlist
        self._globals: dict[int, tuple[str, Any]] = {}  # id -> (name, object)
        self._fresh: dict[int, tuple[Any, Any]] = {}  # id -> (object, dtype spec or None)

    def find_class(self, module: str, name: str) -> Any:
        obj = _admit(self._allowlist, module, name, super().find_class)
        self._globals[id(obj)] = (f"{module}.{name}", obj)
        return obj

    def _global_name(self, obj: Any) -> str:
        known = self._globals.get(id(obj))
        return known[0] if known is not None and known[1] is obj else ""

    @staticmethod
    def _refuse_array_call(np: Any, cls: Any) -> None:
        if isinstance(cls, type) and issubclass(cls, np.ndarray):
            raise FedSerializationError(
                "malformed pickle from another party: it calls the numpy array constructor "
                f"{cls.__module__}.{cls.__qualname__} directly, which numpy's pickles never do "
                "(it can read outside its buffer)"
            )

    def _call(self, func: Any, args: Any) -> Any:
        """The one place a pickle calls something (REDUCE, INST, OBJ), with numpy's
        constructors held to the patterns numpy's own pickles use."""
        if type(args) is not tuple:
            raise FedSerializationError("malformed pickle from another party: call arguments")
        if func is np.dtype:
            # numpy's own dtype pickles: dtype("f8", False, True). Forcing copy=True
            # keeps BUILD away from numpy's shared builtin dtype singletons.
            if (
                not 1 <= len(args) <= 3
                or type(args[0]) is not str
                or not all(type(a) is bool for a in args[1:])
            ):
                raise _bad_numpy_state("the numpy.dtype call")
            obj = np.dtype(args[0], args[1] if len(args) > 1 else False, True)
            self._fresh[id(obj)] = (obj, args[0])
            return obj
        if self._global_name(func) in _RECONSTRUCT_NAMES:
            # numpy pickles arrays as _reconstruct(cls, (0,), b"b") + BUILD(state);
            # any other shape would hand back uninitialized memory.
            if len(args) != 3 or args[1] != (0,):
                raise _bad_numpy_state("the _reconstruct call")
            obj = func(*args)
            self._fresh[id(obj)] = (obj, None)
            return obj
        self._refuse_array_call(np, func)
        if func is _copyreg_reconstructor and len(args) == 3:
            self._refuse_array_call(np, args[1])  # base.__new__(cls, state)
        if func in _SIZED_CONSTRUCTORS and any(type(a) is int for a in args):
            raise FedSerializationError(
                f"malformed pickle from another party: {func.__name__}(<int>) allocates what "
                "the sender asks for, and genuine pickles never call it that way")
        return func(*args)

    def _load_reduce(self) -> None:
        args = self.stack.pop()
        self.stack[-1] = self._call(self.stack[-1], args)

    def _load_newobj(self) -> None:
        if len(self.stack) >= 2:
            self._refuse_array_call(np, self.stack[-2])
        pickle._Unpickler.load_newobj(self)  # type: ignore[attr-defined]

    def _load_newobj_ex(self) -> None:
        if len(self.stack) >= 3:
            self._refuse_array_call(np, self.stack[-3])
        pickle._Unpickler.load_newobj_ex(self)  # type: ignore[attr-defined]

    def _instantiate(self, klass: Any, args: Any) -> None:  # INST / OBJ opcodes
        if args or not isinstance(klass, type):
            self.append(self._call(klass, tuple(args)))
            return
        self._refuse_array_call(np, klass)
        self.append(klass.__new__(klass))

    def _load_build(self) -> None:
        stack = self.stack
        if len(stack) < 2:
            raise pickle.UnpicklingError("BUILD with an empty stack")
        inst = stack[-2]
        name = self._global_name(inst)
        if name:
            raise FedDeserializationRefused(
                type_name=_shorten(name),
                hint=(
                    "The pickle tries to set attributes on this class or function itself "
                    "(BUILD applied to a global), which would change it for the whole "
                    "process. A well-behaved peer never sends this."
                ),
            )
        if not isinstance(inst, (np.dtype, np.ndarray, np.generic)):
            _check_plain_state(inst, stack[-1])
            pickle._Unpickler.load_build(self)  # type: ignore[attr-defined]
            return
        if isinstance(inst, np.ndarray) and type(inst).__setstate__ is not np.ndarray.__setstate__:
            # An admitted subclass with its own __setstate__ (the user vouched for it).
            pickle._Unpickler.load_build(self)  # type: ignore[attr-defined]
            return
        state = stack.pop()
        fresh = self._fresh.get(id(inst))
        if fresh is None or fresh[0] is not inst:
            raise FedSerializationError(
                "malformed pickle from another party: it sets the state of a numpy "
                f"{type(inst).__name__} it did not just create (numpy never does that)"
            )
        del self._fresh[id(inst)]  # one state per object, as numpy writes it
        if isinstance(inst, np.dtype):
            candidate = _dtype_from_state(np, inst, state)
            reduced = candidate.__reduce__()
            if reduced[1][0] != fresh[1] or reduced[2] != state:
                raise _bad_numpy_state("dtype state")
        else:
            _check_array_state(np, state)
        inst.__setstate__(state)

    dispatch[pickle.REDUCE[0]] = _load_reduce
    dispatch[pickle.BUILD[0]] = _load_build
    dispatch[pickle.NEWOBJ[0]] = _load_newobj
    dispatch[pickle.NEWOBJ_EX[0]] = _load_newobj_ex


def _check_plain_state(inst: Any, state: Any) -> None:
    """A BUILD state may not make an object lie about itself: builtin and
    ``collections`` containers get none (pickle never writes one for them), and no
    state sets a dunder name (``__reduce_ex__`` in an instance dict runs when the
    value is pickled again) or shadows a method of the class."""
    if state is None:
        return
    cls = type(inst)
    if isinstance(inst, _STATELESS_TYPES) and (
        cls.__module__ in ("builtins", "collections") or state):
        raise FedSerializationError(
            f"malformed pickle from another party: a state for a {cls.__qualname__}, which "
            "genuine pickles never send (it could hide the container's contents)")
    slots = state[1] if type(state) is tuple and len(state) == 2 else None
    named = state[0] if type(state) is tuple and len(state) == 2 else state
    for mapping in (named, slots):
        if mapping is None:
            continue
        if type(mapping) is not dict:
            raise FedSerializationError("malformed pickle from another party: object state")
        for key in mapping:
            if type(key) is not str or (key.startswith("__") and key.endswith("__")) or callable(
                    getattr(cls, key, None)):
                raise FedSerializationError(
                    f"malformed pickle from another party: the state of a {cls.__qualname__} "
                    f"sets {str(key)[:60]!r}, which would shadow a method or special name")


def _as_buffer(index: int, buffer: Any) -> Any:
    """Check one out-of-band buffer: bytes/bytearray as is, others as a 1-D byte view."""
    if isinstance(buffer, (bytes, bytearray)):
        return buffer
    try:
        view = memoryview(buffer)
    except TypeError as exc:
        raise FedSerializationError(
            f"out-of-band buffer #{index} is not bytes-like ({type(buffer).__name__})"
        ) from exc
    if view.ndim == 1 and view.format == "B":
        return view
    try:
        return view.cast("B")
    except TypeError as exc:
        raise FedSerializationError(
            f"out-of-band buffer #{index} is not C-contiguous memory"
        ) from exc



def loads(data: Any, buffers: Optional[Iterable[Any]], allowlist: Allowlist) -> object:
    """Rebuild a value serialized by :func:`dumps` in another party.

    ``buffers`` are used without copying: numpy arrays are views on them
    (writable if the buffers are bytearrays, read-only for bytes). Every global
    the pickle names must be admitted by ``allowlist``, otherwise
    :class:`~fed.errors.FedDeserializationRefused` names it, with the config that
    admits it; the refused module is never imported. Any other failure (truncated
    or garbled data, wrong number of buffers, forged numpy states) is a
    :class:`~fed.errors.FedSerializationError`. With an allow-all allowlist the
    plain C unpickler runs with no checks at all (the peer is trusted with code).
    """
    if not isinstance(allowlist, Allowlist):
        raise TypeError(
            f"allowlist must be a fed.serialization.Allowlist, not {type(allowlist).__name__}"
        )
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise FedSerializationError(
            f"serialized data must be bytes-like, not {type(data).__name__}"
        )
    if buffers is None:
        buffers = ()
    try:
        checked = [_as_buffer(i, b) for i, b in enumerate(buffers)]
    except FedSerializationError:
        raise
    except Exception as exc:  # e.g. buffers is not iterable
        raise FedSerializationError(
            f"bad out-of-band buffers: {type(exc).__name__}: {exc}"
        ) from exc

    if not isinstance(data, bytes):
        data = bytes(data)  # one copy of the (small) pickle; BytesIO then shares it
    size = len(data)
    stream = io.BytesIO(data)
    remaining = iter(checked)
    try:
        # The scan runs in every mode: even a trusted peer's garbled data must not make
        # the C unpickler allocate gigabytes for its memo.
        end, builds = _scan_opcodes(data)
        if end != size:
            raise FedSerializationError(f"{size - end} trailing bytes after the end of the pickle")
        if allowlist.allow_all:
            value = pickle.Unpickler(stream, buffers=remaining).load()
        else:
            try:
                if builds:
                    raise _NeedsGuard()
                value = _RestrictedUnpickler(stream, allowlist, remaining).load()
            except _NeedsGuard:
                stream = io.BytesIO(data)
                remaining = iter(checked)
                value = _GuardedUnpickler(stream, allowlist, remaining).load()
    except FedSerializationError:
        raise
    except Exception as exc:  # UnpicklingError, EOFError, UnicodeDecodeError, ...
        raise FedSerializationError(
            f"cannot deserialize data from another party ({size} bytes, "
            f"{len(checked)} buffers): {type(exc).__name__}: {_shorten(str(exc))}"
        ) from exc
    if next(remaining, _NO_MORE) is not _NO_MORE:
        raise FedSerializationError(
            f"received {len(checked)} out-of-band buffers but the pickle used fewer"
        )
    if stream.tell() != size:
        raise FedSerializationError(
            f"{size - stream.tell()} trailing bytes after the end of the pickle"
        )
    return value

