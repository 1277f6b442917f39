"""Which globals an opt-in pickle from another party may name: the allowlist.

Built once from ``cross_silo_comm.serializing_allowed_list`` (every RayFed form is
accepted); the defaults (plain data, numpy, rayfed's errors) are always admitted
in addition. Consulted by the restricted unpickler (unpickling.py) and, on the
sender, to decide whether a value the codec does not carry may be pickled.
"""
from __future__ import annotations

import builtins
from collections.abc import Iterable, Mapping
from typing import Any

from fed import errors as _errors
from fed.errors import FedConfigError

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
    # Not fractions.Fraction: Fraction("1e100000000") computes 10**N with the GIL held.
    + ["decimal.Decimal"]
    + _NUMPY_NAMES
    + list(_FED_ERROR_NAMES)
)

_DEFAULTS_TEXT = (
    "defaults (builtin containers/scalars/exceptions, collections, datetime, decimal, "
    "numpy arrays/dtypes/scalars, fed.errors)"
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

    def admits_class(self, cls: type) -> bool:
        """Whether the sender may pickle a value of class `cls` for a peer (the receiver
        still checks every global the pickle names)."""
        if self._allow_all:
            return True
        return self._verdict(cls.__module__, cls.__qualname__) != _REFUSE

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

