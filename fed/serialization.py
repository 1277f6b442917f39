"""How values cross a party boundary: bytes out, and safely back in.

A value is pickled once with protocol 5 and out-of-band buffers, so numpy arrays
are not copied into the pickle: :func:`dumps` returns the (small) pickle bytes and
the raw array memory as byte views, which the transport streams as they are.

The receiving side must not trust its peer. :func:`loads` checks, in order:

1. the opcode stream (:func:`_scan_opcodes`): framing, lengths that fit the
   data, memo indices that cannot make CPython's C unpickler allocate gigabytes;
2. every global the pickle names (a class, a reconstructor function) against an
   :class:`Allowlist`, before importing anything. The default admits plain data
   only (builtin containers, scalars and exceptions, ``collections``,
   ``datetime``, ``decimal``, ``fractions``, numpy arrays/dtypes/scalars, and
   rayfed's own errors). Users add their types with
   ``cross_silo_comm.serializing_allowed_list`` in ``fed.init``; allowing
   everything is possible but must be spelled out (``"*"``);
3. what the pickle does with admitted globals, when it could matter: pickles
   that apply states (BUILD) or name numpy's array constructors go through a
   pure-Python unpickler (:class:`_GuardedUnpickler`) that refuses
   monkeypatching a global and validates numpy states, which numpy itself does
   not (forged ones segfault it). Everything else uses the fast C unpickler.

What remains possible for a hostile peer is resource use proportional to what
admitted constructors allow (e.g. ``bytearray(10**9)``); message size limits
belong to the transport. :func:`check` applies steps 1 and 2 without building
anything, so a receiver can vet a value it only holds and decode it when it is used.
"""
from __future__ import annotations

import builtins
import copyreg
import io
import pickle
import pickletools
from collections import ChainMap
from collections.abc import Iterable, Mapping
from typing import Any, Iterator, Optional

# numpy is a hard dependency. Imported here, at module import, never looked up
# lazily: a lookup in sys.modules can return a module another thread is still
# importing (half-built, without ``typecodes`` or ``ndarray``).
import numpy as np
from ray import cloudpickle

from fed import errors as _errors
from fed.errors import FedConfigError, FedDeserializationRefused, FedSerializationError

__all__ = [
    "Allowlist",
    "check",
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

# rayfed's own error classes and the reconstructor their __reduce__ uses (which
# rebuilds only those classes); no other function of fed.errors.
_FED_ERROR_NAMES = tuple(
    sorted(
        f"fed.errors.{name}"
        for name, obj in vars(_errors).items()
        if isinstance(obj, type) and issubclass(obj, _errors.FedError)
        and obj.__module__ == _errors.__name__
    )
) + ("fed.errors._rebuild_error",)

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
    "'module.*'; a dict {'module': '*'} or {'module': ['Name', ...]} (or 'Name'; a '*' in "
    "the list admits the module's classes); "
    "or the string '*' to allow everything (disables the restriction)"
)

# Verdicts of Allowlist._verdict.
_REFUSE = 0
_BY_NAME = 1  # exact entry, or allow-all
_BY_MODULE = 2  # admitted by a 'module.*' entry
_BY_CLASS_WILDCARD = 3  # admitted by RayFed's {'module': ['*']}: classes of the module only

# numpy 2 moved numpy.core to numpy._core (numpy.core stays as a shim): a module
# named in the config under either name covers both.
_NUMPY_CORE_ALIASES = (("numpy.core.", "numpy._core."), ("numpy._core.", "numpy.core."))


def _module_aliases(module: str) -> tuple[str, ...]:
    """``module`` and, for numpy's core modules, its numpy 1/2 twin."""
    for prefix, twin in _NUMPY_CORE_ALIASES:
        if module.startswith(prefix) or module == prefix[:-1]:
            return (module, twin[:-1] + module[len(prefix) - 1:])
    return (module,)


def _is_dotted_identifier(text: str) -> bool:
    """True for 'a', 'a.b', 'a.b_c.D' (each part a Python identifier)."""
    return bool(text) and all(part.isidentifier() for part in text.split("."))


def _config_error(entry: object, reason: str) -> FedConfigError:
    return FedConfigError(
        f"{CONFIG_KEY}: bad entry {entry!r} ({reason}); {_ACCEPTED_FORMS}"
    )


def _make_allowlist(
    entries: tuple[str, ...], allow_all: bool, class_modules: tuple[str, ...] = ()
) -> "Allowlist":
    """Pickle support: rebuild an Allowlist (it travels to Ray actors)."""
    return Allowlist(entries, allow_all=allow_all, class_modules=class_modules)


class Allowlist:
    """Which globals a pickle from another party may name. Immutable.

    Built once from the user's config (:meth:`from_config`); the defaults are
    always admitted in addition. :meth:`allows` is called for every global a
    pickle names, so it is a couple of set lookups.

    Entries are ``"module.Name"`` (exact; nested classes as
    ``"module.Outer.Inner"``) or ``"module.*"`` (any top-level object *defined*
    in that module, checked after import so re-exports such as
    ``from os import system`` are not admitted through a wildcard).
    ``class_modules`` (RayFed's ``{"module": ["*"]}``) admit the *classes*
    defined in those modules, never their functions.
    """

    __slots__ = ("_allow_all", "_entries", "_exact", "_modules", "_class_modules")

    def __init__(
        self,
        entries: Iterable[str] = (),
        *,
        allow_all: bool = False,
        class_modules: Iterable[str] = (),
    ) -> None:
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
        object.__setattr__(self, "_class_modules", self._check_modules(class_modules))

    @staticmethod
    def _check_modules(modules: Iterable[str]) -> frozenset[str]:
        for module in modules:
            if not isinstance(module, str) or not _is_dotted_identifier(module):
                raise _config_error(module, "not a module name like 'mypkg.mymod'")
        return frozenset(modules)

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
            entries, class_modules = cls._entries_from_dict(value)
            return cls(entries, class_modules=class_modules)
        if isinstance(value, (list, tuple, set, frozenset)):
            return cls(value)
        raise _config_error(value, f"unsupported type {type(value).__name__}")

    @staticmethod
    def _entries_from_dict(value: Mapping[Any, Any]) -> tuple[list[str], list[str]]:
        """RayFed's ``{"module": "*" | "Name" | ["Name", "*", ...]}`` ->
        (entry strings, modules whose classes are admitted by a ``"*"`` in a list)."""
        entries: list[str] = []
        class_modules: list[str] = []
        for key, names in value.items():
            if not isinstance(key, str) or not _is_dotted_identifier(key):
                raise _config_error(key, "dict keys must be module names like 'mypkg.mymod'")
            if names == "*":
                entries.extend(f"{m}.*" for m in _module_aliases(key))
                continue
            if isinstance(names, str):
                names = [names]
            elif not isinstance(names, (list, tuple, set, frozenset)):
                raise _config_error(
                    {key: names}, "dict values must be '*', a name, or a list of names"
                )
            for name in names:
                if name == "*":  # RayFed: every class of the module
                    class_modules.extend(_module_aliases(key))
                elif isinstance(name, str) and _is_dotted_identifier(name):
                    entries.extend(f"{m}.{name}" for m in _module_aliases(key))
                else:
                    raise _config_error(
                        {key: names}, f"{name!r} is not a class/function name or '*'"
                    )
        return entries, class_modules

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
        if "." not in name:
            if module in self._modules:
                return _BY_MODULE
            if module in self._class_modules:
                return _BY_CLASS_WILDCARD
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
        listed = list(self._entries) + [f"classes of {m}" for m in sorted(self._class_modules)]
        if not listed:
            return _DEFAULTS_TEXT
        shown = listed[:10]
        more = len(listed) - len(shown)
        text = f"{_DEFAULTS_TEXT} + {', '.join(shown)}"
        return text + (f" (+{more} more)" if more else "")

    # ---------------------------------------------------------------- value object
    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Allowlist is immutable; build a new one with from_config()")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("Allowlist is immutable")

    def _key(self) -> tuple:
        return (self._entries, self._allow_all, tuple(sorted(self._class_modules)))

    def __reduce__(self):
        return (_make_allowlist, self._key())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Allowlist):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        if self._allow_all:
            return "Allowlist(allow_all=True)"
        classes = sorted(self._class_modules)
        extra = f", class_modules={classes!r}" if classes else ""
        return f"Allowlist({list(self._entries)!r}{extra})"


_DEFAULT_ALLOWLIST = Allowlist()


def default_allowlist() -> Allowlist:
    """The allowlist used when the user configures nothing."""
    return _DEFAULT_ALLOWLIST


# --------------------------------------------------------------------------- dumps

def _reduce_dtype(dtype: Any) -> tuple:
    """Pickle a plain numpy dtype as ``numpy.dtype("<f8")``: no state, no BUILD.

    numpy's own reduce adds a state (BUILD opcode); a receiver must check such
    states in the slow pure-Python unpickler. Plain dtypes (no fields, subarray
    or metadata) rebuild exactly from their ``str``, which keeps the common
    "dict of arrays" payload on the fast C unpickler.
    """
    if dtype.fields is None and dtype.subdtype is None and dtype.metadata is None:
        text = dtype.str
        try:
            rebuilt = np.dtype(text)
        except (TypeError, ValueError):
            rebuilt = None
        if rebuilt is not None and rebuilt == dtype and rebuilt.str == text:
            return (np.dtype, (text,))
    return dtype.__reduce__()


def _make_pickler_class() -> Any:
    """cloudpickle's Pickler plus the dtype reducer; built once, at import."""
    table = {type(np.dtype(code)): _reduce_dtype for code in np.typecodes["All"]}
    return type(
        "_FedPickler",
        (cloudpickle.Pickler,),
        # One flat ChainMap (the C pickler looks it up for every object): ours first,
        # then cloudpickle's and copyreg's live tables.
        {"dispatch_table": ChainMap(table, *cloudpickle.Pickler.dispatch_table.maps)},
    )


_FedPickler = _make_pickler_class()


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
    is a 1-D unsigned-byte memoryview on the original memory (non-contiguous
    arrays are copied into the pickle). Plain dtypes are written as
    ``numpy.dtype("<f8")`` so the receiver can use its fast path. Keep ``value``
    unchanged until the buffers have been sent. Raises
    :class:`~fed.errors.FedSerializationError` when the value cannot be pickled.
    """
    out_of_band: list[pickle.PickleBuffer] = []
    try:
        with io.BytesIO() as file:
            _FedPickler(
                file, protocol=PICKLE_PROTOCOL, buffer_callback=out_of_band.append
            ).dump(value)
            data = file.getvalue()
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


def _refusal(
    module: str, name: str, defined_in: Optional[str] = None, real_name: Optional[str] = None
) -> FedDeserializationRefused:
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
        origin = f" (it is {_shorten(real_name)})" if real_name else ""
        hint = (
            f"{type_name!r}{origin} can run code or act on this machine, so it is never "
            "admitted by default and should not be added to the allowlist; a well-behaved "
            "peer does not send it. (Only if every peer is fully trusted: "
            f"{_ALLOW_ALL_EXAMPLE} disables the restriction.)"
        )
    elif defined_in is not None:
        hint = (
            f"'{_shorten(module)}.*' admits only objects defined in {_shorten(module)!r}, but "
            f"{type_name!r} is {_shorten(real_name or defined_in)!r}. If you trust it, allow it "
            f"by name: {_config_example(type_name)}."
        )
    else:
        hint = (
            "If you trust this type, allow it on the receiving party: "
            f"{_config_example(type_name)} (or '{_shorten(module)}.*' for the whole module; "
            'RayFed\'s dict form {"module": ["Name"]} works too).'
        )
    return FedDeserializationRefused(type_name=type_name, hint=hint)


_NO_MORE = object()
_copyreg_reconstructor = copyreg._reconstructor
_RECONSTRUCT_NAMES = frozenset(
    f"numpy.{core}.multiarray._reconstruct" for core in ("core", "_core")
)
_NPY_LIST_PICKLE = 0x02  # dtype flag: items pickled as a list of Python objects
_NPY_ALIGNED_STRUCT = 0x80
_NPY_MAXDIMS = 64


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
    if verdict == _BY_MODULE:
        defined_in = getattr(obj, "__module__", None)
        if defined_in != module:
            real = f"{defined_in}.{getattr(obj, '__qualname__', name)}"
            raise _refusal(module, name, defined_in=str(defined_in), real_name=real)
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
            hint=f"{{{module!r}: ['*']}} admits only the classes of {module!r}, and this is "
            f"a {type(obj).__name__}; if you trust it, add its name to that list.",
        )
    if defined_in not in _module_aliases(module) and not module.startswith(defined_in + "."):
        real = f"{defined_in}.{obj.__qualname__}"
        raise _refusal(module, name, defined_in=defined_in, real_name=real)


class _NeedsGuard(Exception):
    """Internal: the fast C unpickler met a global only the guarded one may handle."""


def _needs_guard(full_name: str, obj: Any) -> bool:
    """Globals that must not be called freely: the numpy array constructors.

    ``numpy.ndarray(shape, dtype, buffer, offset)`` reads outside its buffer (a
    negative offset) or dereferences raw bytes as object pointers, and
    ``_reconstruct`` returns uninitialized memory; numpy's own pickles only use
    them in fixed patterns that the guarded unpickler checks.
    """
    if full_name in _RECONSTRUCT_NAMES:
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


def _bad_numpy_state(what: str) -> FedSerializationError:
    return FedSerializationError(
        f"malformed pickle from another party: {what} is not one numpy produces (forged?)"
    )


def _dtype_from_state(np: Any, inst: Any, state: Any) -> Any:
    """Rebuild, with numpy's public constructors, the dtype a BUILD state describes.

    numpy's ``dtype.__setstate__`` trusts its input (a forged state segfaults
    numpy 2.4), so a state is applied only if it is exactly the state numpy
    produces for a dtype built this safe way.
    """
    if type(state) is not tuple or (state[:1], len(state)) not in (((3,), 8), ((4,), 9)):
        raise _bad_numpy_state("dtype state")
    endian, subarray, names, fields, elsize, _alignment, flags = state[1:8]
    metadata = state[8] if len(state) == 9 else None
    if type(endian) is not str or endian not in ("<", ">", "|", "=") or type(flags) is not int:
        raise _bad_numpy_state("dtype state")
    if subarray is not None:
        base, shape = subarray if type(subarray) is tuple and len(subarray) == 2 else (None, None)
        if not isinstance(base, np.dtype) or type(shape) is not tuple or not all(
            type(n) is int and 0 <= n for n in shape
        ):
            raise _bad_numpy_state("dtype subarray")
        candidate = np.dtype((base, shape))
    elif names is not None:
        if type(names) is not tuple or type(fields) is not dict or type(elsize) is not int:
            raise _bad_numpy_state("structured dtype")
        formats, offsets, titles = [], [], []
        for field in names:
            spec = fields.get(field) if type(field) is str else None
            if (
                type(spec) is not tuple
                or len(spec) not in (2, 3)
                or not isinstance(spec[0], np.dtype)
                or type(spec[1]) is not int
            ):
                raise _bad_numpy_state("structured dtype field")
            formats.append(spec[0])
            offsets.append(spec[1])
            titles.append(spec[2] if len(spec) == 3 else None)
        candidate = np.dtype(
            {"names": list(names), "formats": formats, "offsets": offsets,
             "titles": titles, "itemsize": elsize},
            align=bool(flags & _NPY_ALIGNED_STRUCT),
        )
    else:
        candidate = inst
        if inst.kind in ("m", "M") and len(state) == 9:
            pair = type(metadata) is tuple and len(metadata) == 2
            user_md, unit_md = metadata if pair else (None, None)
            if type(unit_md) is not tuple or len(unit_md) != 4 or type(unit_md[0]) is not bytes:
                raise _bad_numpy_state("datetime dtype")
            unit, count = unit_md[0].decode("ascii"), unit_md[1]
            if type(count) is not int or not unit.isalpha():
                raise _bad_numpy_state("datetime dtype")
            unit_text = "" if unit == "generic" else f"[{count}{unit}]"
            candidate = np.dtype(f"{inst.kind}8{unit_text}")
            metadata = user_md
        if endian in ("<", ">"):
            candidate = candidate.newbyteorder(endian)
    if metadata is not None:
        if type(metadata) is not dict:
            raise _bad_numpy_state("dtype metadata")
        candidate = np.dtype(candidate, metadata=metadata)
    return candidate


def _check_array_state(np: Any, state: Any) -> None:
    """An ndarray BUILD state must be self-consistent (numpy trusts it)."""
    if type(state) is not tuple or len(state) != 5:
        raise _bad_numpy_state("array state")
    version, shape, dtype, is_fortran, raw = state
    if type(version) is not int or version != 1 or type(is_fortran) is not bool:
        raise _bad_numpy_state("array state")
    if type(shape) is not tuple or len(shape) > _NPY_MAXDIMS or not all(
        type(n) is int and n >= 0 for n in shape
    ):
        raise _bad_numpy_state("array shape")
    if not isinstance(dtype, np.dtype):
        raise _bad_numpy_state("array dtype")
    count = 1
    for n in shape:
        count *= n
    if dtype.flags & _NPY_LIST_PICKLE:
        if type(raw) is not list or len(raw) != count:
            raise _bad_numpy_state("object array data")
    elif type(raw) is not bytes or len(raw) != count * dtype.itemsize:
        raise _bad_numpy_state("array data")


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

    def _load_reduce(self) -> None:
        stack = self.stack
        args = stack.pop()
        func = stack[-1]
        if func is np.dtype:
            # numpy's own dtype pickles: dtype("f8", False, True). Forcing copy=True
            # keeps BUILD away from numpy's shared builtin dtype singletons.
            if (
                type(args) is not tuple
                or not 1 <= len(args) <= 3
                or type(args[0]) is not str
                or not all(type(a) is bool for a in args[1:])
            ):
                raise _bad_numpy_state("the numpy.dtype call")
            obj = np.dtype(args[0], args[1] if len(args) > 1 else False, True)
            self._fresh[id(obj)] = (obj, args[0])
        elif self._global_name(func) in _RECONSTRUCT_NAMES:
            # numpy pickles arrays as _reconstruct(cls, (0,), b"b") + BUILD(state);
            # any other shape would hand back uninitialized memory.
            if type(args) is not tuple or len(args) != 3 or args[1] != (0,):
                raise _bad_numpy_state("the _reconstruct call")
            obj = func(*args)
            self._fresh[id(obj)] = (obj, None)
        else:
            self._refuse_array_call(np, func)
            if func is _copyreg_reconstructor and type(args) is tuple and len(args) == 3:
                self._refuse_array_call(np, args[1])  # base.__new__(cls, state)
            obj = func(*args)
        stack[-1] = obj

    def _load_newobj(self) -> None:
        if len(self.stack) >= 2:
            self._refuse_array_call(np, self.stack[-2])
        pickle._Unpickler.load_newobj(self)  # type: ignore[attr-defined]

    def _load_newobj_ex(self) -> None:
        if len(self.stack) >= 3:
            self._refuse_array_call(np, self.stack[-3])
        pickle._Unpickler.load_newobj_ex(self)  # type: ignore[attr-defined]

    def _instantiate(self, klass: Any, args: Any) -> None:  # INST / OBJ opcodes
        self._refuse_array_call(np, klass)
        super()._instantiate(klass, args)

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


# ------------------------------------------------------------ opcode pre-scan
#
# CPython < 3.15's C unpickler sizes its memo array from the index in a PUT /
# LONG_BINPUT opcode and zero-fills it: ten bytes like b"]r\xff\xff\xff\x7f."
# make it allocate and touch tens of GiB (cpython gh-115952). Length-prefixed
# opcodes with absurd lengths also make it allocate before noticing the data is
# short. So before unpickling, walk the opcodes once (cheap next to unpickling,
# and the pickle is small when arrays travel out of band) and refuse these.

_ARG_INVALID = -1  # in _OPCODE_KINDS; a value >= 0 is the size of a fixed argument
_ARG_SPECIAL = -2

# Slow-path categories in _OPCODE_SPECIAL.
_COUNTED, _LINE, _LINE_PAIR, _PUT, _LONG_BINPUT, _FRAME, _STOP, _BUILD = range(8)


def _opcode_tables() -> tuple[list[int], dict[int, tuple[int, int, bool]]]:
    """Opcode byte -> fixed argument size (fast path) or slow-path (category, width, signed)."""
    kinds = [_ARG_INVALID] * 256
    special: dict[int, tuple[int, int, bool]] = {}
    counted = {
        pickletools.TAKEN_FROM_ARGUMENT1: (1, False),
        pickletools.TAKEN_FROM_ARGUMENT4: (4, True),
        pickletools.TAKEN_FROM_ARGUMENT4U: (4, False),
        pickletools.TAKEN_FROM_ARGUMENT8U: (8, False),
    }
    for op in pickletools.opcodes:
        code = op.code.encode("latin-1")[0]
        arg = op.arg
        if arg is None or arg.n >= 0:
            kinds[code] = 0 if arg is None else arg.n
            continue
        kinds[code] = _ARG_SPECIAL
        if arg.n in counted:
            special[code] = (_COUNTED, *counted[arg.n])
        elif arg.name == "stringnl_noescape_pair":  # GLOBAL, INST
            special[code] = (_LINE_PAIR, 0, False)
        elif op.name == "PUT":
            special[code] = (_PUT, 0, False)
        else:  # UP_TO_NEWLINE
            special[code] = (_LINE, 0, False)
    special[pickle.LONG_BINPUT[0]] = (_LONG_BINPUT, 4, False)
    special[pickle.FRAME[0]] = (_FRAME, 8, False)
    special[pickle.STOP[0]] = (_STOP, 0, False)
    special[pickle.BUILD[0]] = (_BUILD, 0, False)
    for code in (pickle.LONG_BINPUT[0], pickle.FRAME[0], pickle.STOP[0], pickle.BUILD[0]):
        kinds[code] = _ARG_SPECIAL
    return kinds, special


_OPCODE_KINDS, _OPCODE_SPECIAL = _opcode_tables()


def _malformed(what: str, offset: int) -> FedSerializationError:
    return FedSerializationError(f"malformed pickle from another party: {what} at offset {offset}")


def _scan_opcodes(data: bytes) -> tuple[int, bool]:
    """Validate opcode framing and memo indices.

    Returns the offset just after STOP and whether the pickle has BUILD opcodes.

    A legitimate memo index is below the opcode's offset (each memo entry costs
    at least one byte), so that is the bound: the memo stays O(len(data)).
    """
    kinds = _OPCODE_KINDS
    special = _OPCODE_SPECIAL
    size = len(data)
    pos = 0
    builds = False
    while pos < size:
        kind = kinds[data[pos]]
        if kind >= 0:  # fast path: no argument or a fixed-size one
            pos += 1 + kind
            continue
        start = pos
        if kind == _ARG_INVALID:
            raise _malformed(f"invalid opcode {data[pos]:#04x}", start)
        category, width, signed = special[data[pos]]
        pos += 1
        if category == _COUNTED:
            if pos + width > size:
                break
            length = int.from_bytes(data[pos : pos + width], "little", signed=signed)
            pos += width
            if length < 0 or length > size - pos:
                raise _malformed(f"length {length} exceeds the data", start)
            pos += length
        elif category == _BUILD:
            builds = True
        elif category == _STOP:
            return pos, builds
        elif category == _LONG_BINPUT or category == _FRAME:
            if pos + width > size:
                break
            value = int.from_bytes(data[pos : pos + width], "little")
            pos += width
            if category == _LONG_BINPUT and value >= start:
                raise _malformed(f"memo index {value} out of range", start)
            if category == _FRAME and value > size - pos:
                raise _malformed(f"frame of {value} bytes exceeds the data", start)
        else:  # newline-terminated argument(s)
            end = data.find(b"\n", pos)
            if end < 0:
                break
            if category == _PUT:
                try:
                    index = int(data[pos:end])
                except ValueError:
                    raise _malformed("bad PUT index", start) from None
                if not 0 <= index < start:
                    raise _malformed(f"memo index {index} out of range", start)
            elif category == _LINE_PAIR:
                end = data.find(b"\n", end + 1)
                if end < 0:
                    break
            pos = end + 1
    raise _malformed("data ends before the STOP opcode", min(pos, size))


# ------------------------------------------------------------ globals without unpickling
#
# A value held until a barrier claims it is checked on arrival but not built: a pickle
# of admitted types can decode to far more memory than it has bytes (32 bytes give
# ``bytearray(2**28)``). So the receiver asks only which globals the pickle would load.

_STRING_PUSH = {pickle.SHORT_BINUNICODE[0]: 1, pickle.BINUNICODE[0]: 4,
                pickle.BINUNICODE8[0]: 8}  # opcode -> width of its length prefix
_MEMO_GET = {pickle.BINGET[0]: 1, pickle.LONG_BINGET[0]: 4, pickle.GET[0]: 0}
_MEMO_PUT = {pickle.BINPUT[0]: 1, pickle.LONG_BINPUT[0]: 4, pickle.PUT[0]: 0,
             pickle.MEMOIZE[0]: -1}
_NAMED_GLOBAL = frozenset((pickle.GLOBAL[0], pickle.INST[0]))  # "module\nname\n" argument
# Extension codes and persistent ids reach code other than find_class: never written here.
_UNSUPPORTED = frozenset((pickle.EXT1[0], pickle.EXT2[0], pickle.EXT4[0],
                          pickle.PERSID[0], pickle.BINPERSID[0]))
_FOLLOWED = bytes(
    code in (*_STRING_PUSH, *_MEMO_GET, *_MEMO_PUT, *_NAMED_GLOBAL, *_UNSUPPORTED,
             pickle.STACK_GLOBAL[0], pickle.NEXT_BUFFER[0], pickle.FRAME[0], pickle.STOP[0])
    for code in range(256))


def _opcode_end(data: bytes, pos: int) -> int:
    """Where the opcode at `pos` ends (its framing already passed _scan_opcodes)."""
    kind = _OPCODE_KINDS[data[pos]]
    if kind >= 0:
        return pos + 1 + kind
    category, width, signed = _OPCODE_SPECIAL[data[pos]]
    if category == _COUNTED:
        length = int.from_bytes(data[pos + 1 : pos + 1 + width], "little", signed=signed)
        return pos + 1 + width + length
    if category in (_LONG_BINPUT, _FRAME):
        return pos + 1 + width
    if category in (_STOP, _BUILD):
        return pos + 1
    end = data.index(b"\n", pos + 1)
    return (data.index(b"\n", end + 1) if category == _LINE_PAIR else end) + 1


def _memo_index(data: bytes, pos: int, end: int, width: int, memo: dict) -> Any:
    if width < 0:  # MEMOIZE: the next free index, as both unpicklers count
        return len(memo)
    if width == 0:  # PUT / GET: a decimal line
        return int(data[pos + 1 : end - 1])
    return int.from_bytes(data[pos + 1 : pos + 1 + width], "little")


def _pickle_globals(data: bytes) -> tuple[list[tuple[str, str]], int]:
    """The (module, name) pairs a pickle hands to find_class, and its NEXT_BUFFER count.

    Tracks strings only: STACK_GLOBAL must take two strings pushed by the two
    stack-changing opcodes before it (what picklers write: string opcodes or memo gets
    of strings, with MEMOIZE/PUT/FRAME between). Anything else is refused, not guessed.
    """
    names: list[tuple[str, str]] = []
    memo: dict[int, str | None] = {}
    below: str | None = None  # the two topmost stack items, when known strings
    top: str | None = None
    used, pos, kinds, followed = 0, 0, _OPCODE_KINDS, _FOLLOWED
    while True:
        code = data[pos]
        if not followed[code]:  # any other opcode: the top of the stack is unknown
            kind = kinds[code]
            pos = pos + 1 + kind if kind >= 0 else _opcode_end(data, pos)
            below = top = None
            continue
        end = _opcode_end(data, pos)
        if code in _STRING_PUSH:
            below, top = top, data[pos + 1 + _STRING_PUSH[code] : end].decode("utf-8", "surrogatepass")
        elif code in _MEMO_GET:
            below, top = top, memo.get(_memo_index(data, pos, end, _MEMO_GET[code], memo))
        elif code in _MEMO_PUT:
            memo[_memo_index(data, pos, end, _MEMO_PUT[code], memo)] = top
        elif code == pickle.STACK_GLOBAL[0]:
            if below is None or top is None:
                raise _malformed("STACK_GLOBAL without two literal names before it", pos)
            names.append((below, top))
            below = top = None
        elif code in _NAMED_GLOBAL:
            module, name = data[pos + 1 : end - 1].decode("utf-8").split("\n")
            names.append((module, name))
            below = top = None
        elif code in _UNSUPPORTED:
            raise _malformed(f"unsupported opcode {code:#04x}", pos)
        elif code == pickle.NEXT_BUFFER[0]:
            used += 1
            below = top = None
        elif code == pickle.STOP[0]:
            return names, used
        pos = end  # FRAME: the stack is unchanged


def _find_global(module: str, name: str) -> Any:
    """Import `module` and look `name` up as an unpickler does (dotted names too)."""
    unpickler = pickle._Unpickler(io.BytesIO(), fix_imports=False)  # type: ignore[attr-defined]
    unpickler.proto = PICKLE_PROTOCOL
    return unpickler.find_class(module, name)


def check(data: Any, buffer_count: int, allowlist: Allowlist) -> None:
    """Check a serialized value as :func:`loads` would, without building anything.

    The opcode framing, the number of out-of-band buffers, and every global the pickle
    names (against `allowlist`, imported only if admitted) are checked; a value of
    admitted types is not, so it may still fail when decoded (e.g. a forged numpy
    state). Raises what :func:`loads` raises for the same defects. With an allow-all
    allowlist nothing is checked (the peer is trusted with code).
    """
    if allowlist.allow_all:
        return
    data = data if isinstance(data, bytes) else bytes(data)
    try:
        end, _builds = _scan_opcodes(data)
        if end != len(data):
            raise FedSerializationError(f"{len(data) - end} trailing bytes after the end of the pickle")
        names, used = _pickle_globals(data)
    except (ValueError, IndexError, UnicodeDecodeError) as exc:
        raise _malformed(f"{type(exc).__name__}: {_shorten(str(exc))}", 0) from None
    if used != buffer_count:
        raise FedSerializationError(
            f"the pickle uses {used} out-of-band buffers but {buffer_count} were received")
    for module, name in dict.fromkeys(names):
        _admit(allowlist, module, name, _find_global)


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
        if allowlist.allow_all:
            value = pickle.Unpickler(stream, buffers=remaining).load()
        else:
            end, builds = _scan_opcodes(data)
            if end != size:
                raise FedSerializationError(
                    f"{size - end} trailing bytes after the end of the pickle"
                )
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
