"""The text of a refusal: what was refused and the configuration that admits it."""
from __future__ import annotations

from typing import Optional

from fed.errors import FedDeserializationRefused

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

