"""What the site's two HTTP clients share: they own an httpx.Client and close it."""
from __future__ import annotations

import httpx
from typing_extensions import Self


class OwnedHttpClient:
    """Base of a client holding ``self._client``; usable as a context manager."""

    _client: httpx.Client

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
