"""What every connector's HTTP side shares: the keep-alive client and its lifetime."""

from __future__ import annotations

import ssl

import httpx


def tls_verification(base_url: str) -> ssl.SSLContext | bool:
    """What the client verifies TLS with: the system's CA store (httpx's default)
    for https, and for plain http a context that trusts nothing.

    Plain http is only accepted for loopback (see daemon.config) and redirects are
    off, so such a client never makes a TLS handshake; loading the CA store for it
    would only add about 40 ms to every start. Its context still requires a
    verified certificate and host name, so any TLS connection would fail closed.
    """
    if base_url.lower().startswith("https://"):
        return True
    return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)


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
        verify=tls_verification(base_url),
        follow_redirects=False,
    )
