"""Whether the site extra is installed, checked before any site module is imported."""
from __future__ import annotations

import importlib

from fed.site.errors import SiteDependencyError

#: Import names of the extra's packages (pyproject.toml, ``[site]``).
SITE_MODULES: tuple[str, ...] = ("fastapi", "uvicorn", "sqlalchemy", "alembic", "yaml", "httpx", "prometheus_client")


def missing_modules() -> list[str]:
    """The extra's packages that cannot be imported here."""
    missing = []
    for name in SITE_MODULES:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    return missing


def require() -> None:
    """Raise SiteDependencyError naming the install command unless the extra is there."""
    missing = missing_modules()
    if missing:
        raise SiteDependencyError(missing)
