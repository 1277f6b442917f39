"""How values cross a party boundary: bytes out, and safely back in.

A value is pickled once with protocol 5 and out-of-band buffers, so numpy arrays
are not copied into the pickle: :func:`dumps` returns the (small) pickle bytes and
the raw array memory as byte views, which the transport streams as they are.

The receiving side must not trust its peer with code execution. :func:`loads`
unpickles with a *restricted* unpickler: every global the pickle names (a class,
a function used as a reconstructor) must be admitted by an :class:`Allowlist`.
The default admits plain data only (builtin containers and scalars, builtin
exception types, ``collections``, ``datetime``, ``decimal``, ``fractions``, numpy
arrays/dtypes/scalars, and rayfed's own errors). Users add their own types with
``cross_silo_comm.serializing_allowed_list`` in ``fed.init``; allowing everything
is possible but must be spelled out (``"*"``).

The allowlist stops code execution, not resource exhaustion: a hostile peer can
still send a pickle asking for e.g. ``bytearray(10**10)``. Size limits belong to
the transport (frame and message caps).
"""
from __future__ import annotations

import builtins
import io
import pickle
import types
from collections.abc import Iterable, Mapping
from typing import Any, Iterator, Optional

from fed import errors as _errors
from fed.errors import FedConfigError, FedDeserializationRefused, FedSerializationError

__all__ = [
    "Allowlist",
    "default_allowlist",
    "dumps",
    "loads",
    "PICKLE_PROTOCOL",
    "CONFIG_KEY",
]

#: Pickle protocol used on the wire (5 = out-of-band buffers, PEP 574).
PICKLE_PROTOCOL = 5

#: Where users configure the allowlist in ``fed.init(config=...)``.
CONFIG_KEY = "cross_silo_comm.serializing_allowed_list"

# --------------------------------------------------------------------------- defaults

# Builtins that only build data. Deliberately absent: eval, exec, compile, getattr,
# setattr, delattr, __import__, open, input, breakpoint, globals, locals, vars, type
# (3-argument type() builds classes), map/filter (call arbitrary callables lazily),
# pow (cheap huge-number DoS), print, help, exit, quit, memoryview...
_SAFE_BUILTINS = (
    "bool", "int", "float", "complex", "str", "bytes", "bytearray",
    "list", "tuple", "dict", "set", "frozenset", "range", "slice",
    "object", "Ellipsis", "NotImplemented",
)

# Builtin exception (and warning) classes: building one runs no user code.
_BUILTIN_EXCEPTIONS = tuple(
    sorted(
        name
        for name, obj in vars(builtins).items()
        if isinstance(obj, type) and issubclass(obj, BaseException)
    )
)

# numpy: reconstructors and classes, for numpy 1.x (numpy.core) and 2.x (numpy._core).
# numpy.random is intentionally not here (its pickles call Cython constructors).
_NUMPY_CORE_FUNCS = (
    "multiarray._reconstruct",
    "multiarray.scalar",
    "numeric._frombuffer",
)
_NUMPY_NAMES = (
    [f"numpy.{core}.{f}" for core in ("core", "_core") for f in _NUMPY_CORE_FUNCS]
    + [
        "numpy.ndarray",
        "numpy.dtype",
        # numpy >= 2 StringDType arrays reconstruct their dtype through this helper.
        "numpy._core._internal._convert_to_stringdtype_kwargs",
        # Masked arrays.
        "numpy.ma.core._mareconstruct",
        "numpy.ma.core.MaskedArray",
        "numpy.ma.MaskedArray",
    ]
    # numpy.dtypes.* DType classes (numpy >= 1.25), listed one by one: the module
    # also holds a helper that mutates it, which a wildcard would admit.
    + [
        f"numpy.dtypes.{name}DType"
        for name in (
            "Bool", "Byte", "UByte", "Short", "UShort", "Int", "UInt", "Long", "ULong",
            "LongLong", "ULongLong", "Int8", "UInt8", "Int16", "UInt16", "Int32",
            "UInt32", "Int64", "UInt64", "Float16", "Float32", "Float64", "LongDouble",
            "Complex64", "Complex128", "CLongDouble", "Bytes", "Str", "Void",
            "Object", "DateTime64", "TimeDelta64", "String",
        )
    ]
    # Scalar type objects (e.g. ``dtype=np.float32`` inside a config dict). Names
    # that do not exist in the installed numpy simply fail to import.
    + [
        f"numpy.{name}"
        for name in (
            "generic", "number", "integer", "signedinteger", "unsignedinteger",
            "inexact", "floating", "complexfloating", "flexible", "character",
            "bool", "bool_", "int8", "int16", "int32", "int64", "uint8", "uint16",
            "uint32", "uint64", "intc", "uintc", "intp", "uintp", "int_", "uint",
            "short", "ushort", "byte", "ubyte", "long", "ulong", "longlong",
            "ulonglong", "float16", "float32", "float64", "half", "single", "double",
            "longdouble", "complex64", "complex128", "csingle", "cdouble",
            "clongdouble", "str_", "bytes_", "void", "object_", "datetime64",
            "timedelta64",
        )
    ]
)

# rayfed's own errors: every name *defined* in fed.errors (not what it imports),
# which includes the reconstructor its __reduce__ uses.
_FED_ERROR_NAMES = tuple(
    sorted(
        f"fed.errors.{name}"
        for name, obj in vars(_errors).items()
        if getattr(obj, "__module__", None) == _errors.__name__
    )
)

_DEFAULT_EXACT: frozenset[str] = frozenset(
    [f"builtins.{n}" for n in _SAFE_BUILTINS + _BUILTIN_EXCEPTIONS]
    + [f"collections.{n}" for n in ("OrderedDict", "defaultdict", "deque", "Counter")]
    + ["copyreg._reconstructor"]
    + [
        f"datetime.{n}"
        for n in ("date", "time", "datetime", "timedelta", "timezone", "tzinfo")
    ]
    + ["decimal.Decimal", "fractions.Fraction"]
    + _NUMPY_NAMES
    + list(_FED_ERROR_NAMES)
)

_DEFAULTS_TEXT = (
    "defaults (builtin containers/scalars/exceptions, collections, datetime, decimal, "
    "fractions, numpy arrays/dtypes/scalars, fed.errors)"
)

_ACCEPTED_FORMS = (
    "accepted forms: None (defaults only); a list of strings 'module.Name' or "
    "'module.*'; a dict {'module': '*'} or {'module': ['Name', ...]} (or 'Name'); "
    "or the string '*' to allow everything (disables the restriction)"
)

# Verdicts of Allowlist._verdict.
_REFUSE = 0
_BY_NAME = 1  # exact entry, or allow-all
_BY_MODULE = 2  # admitted by a 'module.*' entry


def _is_dotted_identifier(text: str) -> bool:
    """True for 'a', 'a.b', 'a.b_c.D' (each part a Python identifier)."""
    return bool(text) and all(part.isidentifier() for part in text.split("."))


def _config_error(entry: object, reason: str) -> FedConfigError:
    return FedConfigError(
        f"{CONFIG_KEY}: bad entry {entry!r} ({reason}); {_ACCEPTED_FORMS}"
    )


def _make_allowlist(entries: tuple[str, ...], allow_all: bool) -> "Allowlist":
    """Pickle support: rebuild an Allowlist (it travels to Ray actors)."""
    return Allowlist(entries, allow_all=allow_all)


class Allowlist:
    """Which globals a pickle from another party may name. Immutable.

    Built once from the user's config (:meth:`from_config`); the defaults are
    always admitted in addition. :meth:`allows` is called for every global a
    pickle names, so it is a couple of set lookups.

    Entries are ``"module.Name"`` (exact; nested classes as
    ``"module.Outer.Inner"``) or ``"module.*"`` (any top-level object *defined*
    in that module, checked after import so re-exports such as
    ``from os import system`` are not admitted through a wildcard).
    """

    __slots__ = ("_allow_all", "_entries", "_exact", "_modules")

    def __init__(self, entries: Iterable[str] = (), *, allow_all: bool = False) -> None:
        exact: set[str] = set()
        modules: set[str] = set()
        normalized: list[str] = []
        if isinstance(entries, (str, bytes)):
            raise _config_error(entries, "expected a list of strings, not a single string")
        for entry in entries:
            kind, value = self._parse_entry(entry)
            if kind == "module":
                modules.add(value)
                normalized.append(f"{value}.*")
            else:
                exact.add(value)
                normalized.append(value)
        object.__setattr__(self, "_allow_all", bool(allow_all))
        object.__setattr__(self, "_entries", tuple(sorted(set(normalized))))
        object.__setattr__(self, "_exact", _DEFAULT_EXACT | exact)
        object.__setattr__(self, "_modules", frozenset(modules))

    # ---------------------------------------------------------------- construction
    @staticmethod
    def _parse_entry(entry: object) -> tuple[str, str]:
        """'mod.Name' -> ('exact', 'mod.Name'); 'mod.*' -> ('module', 'mod')."""
        if not isinstance(entry, str):
            raise _config_error(entry, f"expected a string, got {type(entry).__name__}")
        if entry == "*":
            raise _config_error(
                entry, "to allow everything pass the string '*' itself, not inside a list"
            )
        head, sep, last = entry.rpartition(".")
        if not sep:
            raise _config_error(entry, "needs a module, e.g. 'mymodule.MyClass'")
        if last == "*":
            if not _is_dotted_identifier(head):
                raise _config_error(entry, f"{head!r} is not a module name")
            return "module", head
        if not _is_dotted_identifier(entry):
            raise _config_error(entry, "not a dotted Python name")
        return "exact", entry

    @classmethod
    def from_config(cls, value: Any) -> "Allowlist":
        """Build from ``cross_silo_comm.serializing_allowed_list``.

        ``None`` -> defaults only; a list/tuple/set of ``"module.Name"`` /
        ``"module.*"``; RayFed's dict ``{"module": "*" | "Name" | ["Name", ...]}``;
        the string ``"*"`` -> allow everything. Anything else is a
        :class:`~fed.errors.FedConfigError` naming the bad entry.
        """
        if value is None:
            return cls()
        if isinstance(value, Allowlist):
            return value
        if isinstance(value, str):
            if value == "*":
                return cls(allow_all=True)
            raise _config_error(
                value,
                "a single string must be '*' (allow everything); "
                f"to allow one type write [{value!r}]",
            )
        if isinstance(value, Mapping):
            return cls(cls._entries_from_dict(value))
        if isinstance(value, (list, tuple, set, frozenset)):
            return cls(value)
        raise _config_error(value, f"unsupported type {type(value).__name__}")

    @staticmethod
    def _entries_from_dict(value: Mapping[Any, Any]) -> list[str]:
        """RayFed's ``{"module": "*" | "Name" | ["Name", ...]}`` -> entry strings."""
        entries: list[str] = []
        for module, names in value.items():
            if not isinstance(module, str) or not _is_dotted_identifier(module):
                raise _config_error(module, "dict keys must be module names like 'mypkg.mymod'")
            if names == "*":
                entries.append(f"{module}.*")
                continue
            if isinstance(names, str):
                names = [names]
            elif not isinstance(names, (list, tuple, set, frozenset)):
                raise _config_error(
                    {module: names}, "dict values must be '*', a name, or a list of names"
                )
            for name in names:
                if not isinstance(name, str) or not _is_dotted_identifier(name):
                    raise _config_error(
                        {module: names},
                        f"{name!r} is not a class/function name (use '*' alone for the whole module)",
                    )
                entries.append(f"{module}.{name}")
        return entries

    # ---------------------------------------------------------------- queries
    @property
    def allow_all(self) -> bool:
        """True when the restriction is disabled (``"*"``)."""
        return self._allow_all

    @property
    def entries(self) -> tuple[str, ...]:
        """The user's entries, normalized (``'mod.Name'`` / ``'mod.*'``), sorted."""
        return self._entries

    def _verdict(self, module: str, name: str) -> int:
        """_REFUSE, _BY_NAME or _BY_MODULE (the latter needs a post-import check)."""
        if self._allow_all:
            return _BY_NAME
        if f"{module}.{name}" in self._exact:
            return _BY_NAME
        if module in self._modules and "." not in name:
            return _BY_MODULE
        return _REFUSE

    def allows(self, module: str, name: str) -> bool:
        """Name-level test for the global ``module.name`` (as pickle names it).

        For ``'module.*'`` entries :func:`loads` additionally checks, after import,
        that the object is defined in ``module`` (not merely imported there).
        """
        return self._verdict(module, name) != _REFUSE

    def describe(self) -> str:
        """Short human text for logs."""
        if self._allow_all:
            return f"everything (restriction disabled: {CONFIG_KEY}='*')"
        if not self._entries:
            return _DEFAULTS_TEXT
        shown = list(self._entries[:10])
        more = len(self._entries) - len(shown)
        text = f"{_DEFAULTS_TEXT} + {', '.join(shown)}"
        return text + (f" (+{more} more)" if more else "")

    # ---------------------------------------------------------------- value object
    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Allowlist is immutable; build a new one with from_config()")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("Allowlist is immutable")

    def __reduce__(self):
        return (_make_allowlist, (self._entries, self._allow_all))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Allowlist):
            return NotImplemented
        return (self._allow_all, self._entries) == (other._allow_all, other._entries)

    def __hash__(self) -> int:
        return hash((self._allow_all, self._entries))

    def __repr__(self) -> str:
        if self._allow_all:
            return "Allowlist(allow_all=True)"
        return f"Allowlist({list(self._entries)!r})"


_DEFAULT_ALLOWLIST = Allowlist()


def default_allowlist() -> Allowlist:
    """The allowlist used when the user configures nothing."""
    return _DEFAULT_ALLOWLIST


# --------------------------------------------------------------------------- dumps

_cloudpickle_module: Any = None


def _cloudpickle() -> Any:
    """Ray's vendored cloudpickle (ray is a dependency; plain cloudpickle may not be)."""
    global _cloudpickle_module
    if _cloudpickle_module is None:
        try:
            from ray import cloudpickle as module
        except ImportError:  # pragma: no cover - ray is a declared dependency
            import cloudpickle as module  # type: ignore[no-redef]
        _cloudpickle_module = module
    return _cloudpickle_module


def _type_name(value: object) -> str:
    cls = type(value)
    return f"{cls.__module__}.{cls.__qualname__}"


def _raw_view(buffer: pickle.PickleBuffer) -> memoryview:
    """1-D unsigned-byte view of an out-of-band buffer; zero-copy when contiguous."""
    try:
        return buffer.raw()
    except BufferError:
        # Neither C- nor Fortran-contiguous: one copy, in C order.
        return memoryview(memoryview(buffer).tobytes())


def dumps(value: object) -> tuple[bytes, list[memoryview]]:
    """Serialize ``value`` for another party: ``(pickle_bytes, buffers)``.

    Pickle protocol 5 through cloudpickle (so functions and classes from
    ``__main__`` serialize, though the receiver's default allowlist refuses code),
    with out-of-band buffers: contiguous numpy arrays are not copied; each buffer
    is a 1-D unsigned-byte memoryview on the original memory. Keep ``value``
    unchanged until the buffers have been sent. Raises
    :class:`~fed.errors.FedSerializationError` when the value cannot be pickled.
    """
    out_of_band: list[pickle.PickleBuffer] = []
    try:
        data = _cloudpickle().dumps(
            value, protocol=PICKLE_PROTOCOL, buffer_callback=out_of_band.append
        )
    except Exception as exc:  # PicklingError, TypeError, RecursionError, ...
        raise FedSerializationError(
            f"cannot serialize a value of type {_type_name(value)} for another party: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    return data, [_raw_view(b) for b in out_of_band]


# --------------------------------------------------------------------------- loads

# Modules whose names mean "run code / touch this machine": never suggest allowing them.
_DANGEROUS_MODULES = frozenset(
    {
        "builtins", "os", "posix", "nt", "subprocess", "sys", "importlib", "shutil",
        "socket", "pty", "runpy", "code", "codeop", "ctypes", "pickle", "_pickle",
        "marshal", "types", "operator", "io", "_io", "pathlib",
        "tempfile", "multiprocessing", "webbrowser", "signal", "asyncio", "threading",
        "_thread", "inspect", "pdb", "shelve", "dill", "joblib",
    }
)
_CODE_MODULE_PREFIXES = ("cloudpickle", "ray.cloudpickle", "dill", "srsly.cloudpickle")
_MAX_NAME_IN_MESSAGE = 200


def _shorten(text: str) -> str:
    if len(text) <= _MAX_NAME_IN_MESSAGE:
        return text
    return text[:_MAX_NAME_IN_MESSAGE] + "...<truncated>"


def _config_example(entry: str) -> str:
    return (
        'fed.init(config={"cross_silo_comm": {"serializing_allowed_list": '
        f"[{entry!r}]}}}})".replace("'", '"')
    )


_ALLOW_ALL_EXAMPLE = (
    'fed.init(config={"cross_silo_comm": {"serializing_allowed_list": "*"}})'
)


def _refusal(module: str, name: str, defined_in: Optional[str] = None) -> FedDeserializationRefused:
    """The error for a global the allowlist does not admit, with a hint that fixes it."""
    type_name = _shorten(f"{module}.{name}")
    origins = [module] + ([defined_in] if defined_in is not None else [])
    if module.startswith(_CODE_MODULE_PREFIXES):
        hint = (
            "The value carries code serialized by value (a lambda, a nested function, or a "
            "function/class defined in __main__ or a notebook); loading it would run that "
            "code, so it is refused by default. Define the function or class in a module "
            "every party can import and allow it by name, e.g. "
            f"{_config_example('mymodule.MyClass')}; or, only if you trust every peer, "
            f"disable the restriction with {_ALLOW_ALL_EXAMPLE}."
        )
    elif any(origin.split(".", 1)[0] in _DANGEROUS_MODULES for origin in origins):
        hint = (
            f"{type_name!r} can run code or act on this machine, so it is never admitted by "
            "default and should not be added to the allowlist; a well-behaved peer does not "
            "send it. (Only if every peer is fully trusted: "
            f"{_ALLOW_ALL_EXAMPLE} disables the restriction.)"
        )
    elif defined_in is not None:
        hint = (
            f"'{_shorten(module)}.*' admits only objects defined in {_shorten(module)!r}, but "
            f"{type_name!r} comes from {_shorten(defined_in)!r}. If you trust it, allow it "
            f"by name: {_config_example(type_name)}."
        )
    else:
        hint = (
            "If you trust this type, allow it on the receiving party: "
            f"{_config_example(type_name)} (or '{_shorten(module)}.*' for the whole module; "
            'RayFed\'s dict form {"module": ["Name"]} works too).'
        )
    return FedDeserializationRefused(type_name=type_name, hint=hint)


_IMMUTABLE_TYPE_FLAG = 1 << 8  # Py_TPFLAGS_IMMUTABLETYPE (CPython >= 3.10)
_NO_MORE = object()


def _fingerprint(obj: Any) -> Optional[tuple[tuple[Any, Any], ...]]:
    """What a pickle could change on an admitted class or Python function, or None.

    A pickle can push a global (e.g. ``fractions.Fraction``) and apply BUILD to it,
    which ``setattr``s arbitrary admitted values on the class itself: a
    process-wide monkeypatch. The fingerprint keeps references to the original
    attribute values so :func:`_restore` can detect and undo it.
    """
    if isinstance(obj, type):
        if obj.__flags__ & _IMMUTABLE_TYPE_FLAG:
            return None
        return tuple(vars(obj).items())
    if isinstance(obj, types.FunctionType):
        return tuple(obj.__dict__.items()) + (
            ("<__defaults__>", obj.__defaults__),
            ("<__kwdefaults__>", obj.__kwdefaults__),
            ("<__code__>", obj.__code__),
        )
    return None


def _unchanged(obj: Any, before: tuple[tuple[Any, Any], ...]) -> bool:
    after = _fingerprint(obj)
    return after is not None and len(after) == len(before) and all(
        ka is kb and va is vb for (ka, va), (kb, vb) in zip(before, after)
    )


def _restore(obj: Any, before: tuple[tuple[Any, Any], ...]) -> None:
    """Undo attribute changes a pickle made on an admitted class or function."""
    saved = dict(before)
    if isinstance(obj, type):
        for key in [k for k in vars(obj) if k not in saved]:
            type.__delattr__(obj, key)
        for key, value in saved.items():
            if vars(obj).get(key, _NO_MORE) is not value:
                type.__setattr__(obj, key, value)
        return
    obj.__defaults__ = saved.pop("<__defaults__>")
    obj.__kwdefaults__ = saved.pop("<__kwdefaults__>")
    obj.__code__ = saved.pop("<__code__>")
    obj.__dict__.clear()
    obj.__dict__.update(saved)


class _RestrictedUnpickler(pickle.Unpickler):
    """C unpickler whose find_class consults the allowlist *before* importing."""

    def __init__(self, file: io.BytesIO, allowlist: Allowlist, buffers: Iterator[Any]) -> None:
        # fix_imports=False: what we check is exactly what gets imported.
        super().__init__(file, fix_imports=False, buffers=buffers)
        self._allowlist = allowlist
        self._watched: list[tuple[str, Any, tuple[tuple[Any, Any], ...]]] = []

    def find_class(self, module: str, name: str) -> Any:
        verdict = self._allowlist._verdict(module, name)
        if verdict == _REFUSE:
            raise _refusal(module, name)
        try:
            obj = super().find_class(module, name)
        except (ImportError, AttributeError) as exc:
            raise FedSerializationError(
                f"{_shorten(module + '.' + name)!r} is allowed but cannot be loaded in this "
                f"party ({type(exc).__name__}: {exc}); every party needs the same code installed"
            ) from exc
        if verdict == _BY_MODULE:
            defined_in = getattr(obj, "__module__", None)
            if defined_in != module:
                raise _refusal(module, name, defined_in=str(defined_in))
        fingerprint = _fingerprint(obj)
        if fingerprint is not None:
            self._watched.append((f"{module}.{name}", obj, fingerprint))
        return obj

    def check_untouched(self) -> None:
        """Raise (after undoing it) if the pickle modified an admitted class/function."""
        tampered = None
        for type_name, obj, before in self._watched:
            if not _unchanged(obj, before):
                _restore(obj, before)
                tampered = tampered or type_name
        if tampered is not None:
            raise FedDeserializationRefused(
                type_name=_shorten(tampered),
                hint=(
                    "Loading the pickle changed attributes of this class or function in the "
                    "receiving process (a pickle can apply BUILD to a global to monkeypatch "
                    "it); the change was undone. Values must not modify their own class "
                    "while being unpickled."
                ),
            )


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
    or garbled data, wrong number of buffers) is a
    :class:`~fed.errors.FedSerializationError`.
    """
    if not isinstance(allowlist, Allowlist):
        raise TypeError(f"allowlist must be a fed.serialization.Allowlist, not {type(allowlist).__name__}")
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
        raise FedSerializationError(f"bad out-of-band buffers: {type(exc).__name__}: {exc}") from exc

    size = memoryview(data).nbytes
    stream = io.BytesIO(data)
    remaining = iter(checked)
    try:
        if allowlist.allow_all:
            value = pickle.Unpickler(stream, buffers=remaining).load()
        else:
            restricted = _RestrictedUnpickler(stream, allowlist, remaining)
            try:
                value = restricted.load()
            finally:
                restricted.check_untouched()
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
