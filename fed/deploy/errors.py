"""The error ``fed deploy`` raises for values it cannot render (a rayfed config error)."""
from __future__ import annotations

from collections.abc import Sequence

from fed.errors import FedConfigError


class DeployError(FedConfigError):
    """Values or a federation that cannot become manifests; ``problems`` holds
    ``(field path, what is wrong and how to fix it)`` pairs, all reported at once."""

    def __init__(self, problems: Sequence[tuple[str, str]], source: str = "values") -> None:
        self.problems = tuple(problems)
        self.source = source
        lines = [f"  {path}: {what}" if path else f"  {what}" for path, what in self.problems]
        super().__init__(f"cannot render ({source}):\n" + "\n".join(lines))


class ManifestInvalid(FedConfigError):
    """A rendered (or site-built) document does not match its Kubernetes or KubeRay schema."""

    def __init__(self, kind: str, name: str, detail: str) -> None:
        self.kind, self.name, self.detail = kind, name, detail
        super().__init__(f"{kind} {name!r} is not valid: {detail}")
