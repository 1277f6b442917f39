"""The errors of the party site service (all are rayfed errors, `fed.errors.FedError`).

Importable without the site extra, so the CLI can name a missing dependency clearly.
Each error says what is wrong and where (a file and field, a party, a site URL).
"""
from __future__ import annotations

from collections.abc import Sequence

from fed.errors import FedConfigError, FedError

#: What to run when the site extra is missing (named in every such error).
INSTALL_HINT = 'pip install -e ".[site]"'


class SiteError(FedError):
    """Base class of the site service's errors."""


class SiteDependencyError(SiteError, ImportError):
    """The site extra's packages are not installed."""

    def __init__(self, missing: Sequence[str]) -> None:
        self.missing = tuple(missing)
        super().__init__(
            f"the site service needs the 'site' extra (missing: {', '.join(self.missing)}); "
            f"install it with: {INSTALL_HINT}"
        )


class SiteConfigError(SiteError, FedConfigError):
    """A site directory, its site.yaml or a federation file is missing or invalid."""


class JobSpecError(SiteError, ValueError):
    """A job spec is invalid; ``problems`` holds ``(field path, what is wrong)`` pairs."""

    def __init__(self, problems: Sequence[tuple[str, str]], source: str = "job spec") -> None:
        self.problems = tuple(problems)
        self.source = source
        lines = [f"  {path}: {what}" if path else f"  {what}" for path, what in self.problems]
        super().__init__(f"invalid {source}:\n" + "\n".join(lines))


class IllegalTransitionError(SiteError):
    """A state change that the entity's transition table does not allow."""

    def __init__(self, entity: str, ident: str, current: str, target: str) -> None:
        self.entity, self.ident, self.current, self.target = entity, ident, current, target
        super().__init__(f"{entity} {ident}: cannot go from {current!r} to {target!r}")


class NotFoundError(SiteError, LookupError):
    """A job (or other record) this site does not hold."""


class AccessDenied(SiteError, PermissionError):
    """A peer party asked for something it may not do for this job."""


class Conflict(SiteError):
    """A request contradicts what the site holds (another spec, a decision already made)."""


class ComponentError(SiteError, ValueError):
    """A component registration is invalid (bad name, version or entrypoint)."""


class PeerSiteError(SiteError, ConnectionError):
    """A call to another party's site failed or was refused."""

    def __init__(self, party: str, url: str, detail: str) -> None:
        self.party, self.url, self.detail = party, url, detail
        super().__init__(f"site of party {party!r} at {url}: {detail}")


class RunnerError(SiteError):
    """The party's task runner refused or failed a request about a run."""


class RunnerUnavailableError(RunnerError, ConnectionError):
    """The runner's cluster cannot be reached (or refused our credentials); retry later."""

    def __init__(self, address: str, detail: str, check: str) -> None:
        self.address, self.detail = address, detail
        super().__init__(f"Ray cluster at {address}: {detail}; {check}")


class LaunchError(SiteError, ValueError):
    """A task launch that cannot be run: malformed, or naming an entrypoint that is missing."""
