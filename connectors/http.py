"""What every connector's HTTP side shares: the keep-alive client and its lifetime."""

from __future__ import annotations

from types import TracebackType
from typing import Self

import httpx


def async_client(
    base_url: str,
    token: str,
    timeout: float,
    transport: httpx.AsyncBaseTransport | None,
    headers: dict[str, str] | None = None,
) -> httpx.AsyncClient:
    """A keep-alive client sending the Bearer token; TLS verification always on, and no
    redirects (a redirect could carry the token to another host)."""
    return httpx.AsyncClient(
        base_url=base_url.rstrip("/"),
        headers={
            "Authorization": f"Bearer {token}",
            "Accept": "application/json",
            "User-Agent": "replicad",
            **(headers or {}),
        },
        timeout=httpx.Timeout(timeout),
        transport=transport,
        verify=True,
        follow_redirects=False,
    )


class HttpConnector:
    """Base of the clients: an async context manager closing its ``_http`` pool."""

    _http: httpx.AsyncClient

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()
