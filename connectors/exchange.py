"""The one retrying request of every connector: budget, retries, auth, redaction.

Every request of the Sell, Endgrate and CDM clients goes through ``Exchange.send``,
which owns what they share: the client-side rate budget, transport errors, 5xx, 429
and ``Retry-After``, bounded retries with jittered backoff, 401/403 (auth refused),
the classification of every other failure into the connector errors, and removing
the token from anything a server echoes. The protocol modules stay sans-IO; the
clients only say which answers they take as they are (``accept``) and whether a
request that may have been applied can simply be sent again.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Collection
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Any, Protocol, Self

import anyio
import httpx
import structlog

from replicad.connectors.errors import (
    AuthRefused,
    ConnectorError,
    RemoteRefused,
    plain_message,
    scrub,
)
from replicad.connectors.http import async_client
from replicad.connectors.push_model import PushOutcome
from replicad.connectors.ratelimit import TokenBucket, parse_rate
from replicad.connectors.retry import (
    RETRYABLE_STATUS,
    RetryPolicy,
    checked_retry_after,
    next_wait,
)

log = structlog.get_logger("replicad.http")

# Server failures after which the request may have been applied. 408, 425, 429 and 503
# say it was not (or not yet) handled.
MAYBE_APPLIED_STATUS = frozenset({500, 502, 504})

# Transport errors raised before the request could have left this host; any other
# transport error may follow a delivered request.
NOT_SENT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


@dataclass(slots=True)
class ConnectorSettings:
    """What every connection has (each kind's settings extend it)."""

    base_url: str
    token: str = field(repr=False)
    timeout: float = 30.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    rate_limit: str | None = None  # e.g. "600/m"; None sends without a client-side budget


class MaybeApplied(ConnectorError):
    """A request that must not be sent blindly again (``resend_unknown=False``) failed
    in a way after which it may have been applied; the backoff wait is already done."""

    def __init__(self, what: str, attempt: int) -> None:
        super().__init__(f"{what}: the answer was lost; the request may have been applied")
        self.attempt = attempt  # retries used so far: a caller's budget spans its checks


class RetryCounter(Protocol):
    """A client's statistics: the exchange counts the retries it makes."""

    retries: int


@dataclass(frozen=True, slots=True)
class Answer:
    """An answer the caller takes: its status, body and headers.

    ``lossy`` is true when a retry followed a failure after which the request may have
    reached the server (for a queue fetch: a page may be gone from the session).
    """

    status: int
    content: bytes
    headers: httpx.Headers
    lossy: bool = False

    def json(self) -> Any:
        """The body decoded from JSON, or None when empty or not JSON."""
        return decode_json(self.content)


Describe = Callable[[int, Any], str]


def decode_json(content: bytes) -> Any:
    """A JSON body, or None when it is empty or not JSON."""
    if not content:
        return None
    try:
        return json.loads(content)
    except ValueError:
        return None


class Exchange:
    """One connection's HTTP side: the keep-alive client and the retrying send."""

    def __init__(
        self,
        settings: ConnectorSettings,
        stats: RetryCounter,
        *,
        path: str = "",
        headers: dict[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        bucket: TokenBucket | None = None,
        rng: random.Random | None = None,
        describe: Describe = plain_message,
        auth_hint: str = "token rejected",
    ) -> None:
        self.settings = settings
        self.stats = stats
        # A connection's own budget, when it has one (Sell passes its bucket, which the
        # daemon carries across restarts).
        self.bucket = bucket or (
            TokenBucket(parse_rate(settings.rate_limit)) if settings.rate_limit else None
        )
        self.http = async_client(
            settings.base_url.rstrip("/") + path,
            settings.token,
            settings.timeout,
            transport,
            headers,
        )
        self._rng = rng or random.Random()
        self._describe = describe
        self._auth_hint = auth_hint

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self.http.aclose()

    def redact(self, message: str) -> str:
        """``message`` without credentials: servers echo request headers into errors."""
        return scrub(message, (self.settings.token,))

    async def send(
        self,
        request: httpx.Request,
        what: str,
        *,
        accept: Collection[int] = (),
        json_required: bool = False,
        resend_unknown: bool = True,
        attempt: int = 0,
    ) -> Answer:
        """Send ``request`` until it gets an answer the caller takes.

        Taken: any 2xx (with ``json_required``, not one whose body is a JSON document
        cut short: that is retried), and the statuses in ``accept``. 401/403 raise
        ``AuthRefused``; any other 4xx ``RemoteRefused``; transport errors, 5xx, 429
        and the like are retried (``Retry-After`` honoured) until the policy gives up
        (``RemoteUnreachable``). With ``resend_unknown=False`` a failure after which
        the request may have been applied raises ``MaybeApplied`` instead of sending
        it again. ``attempt`` retries are taken as already used.
        """
        policy = self.settings.retry
        lossy = False
        while True:
            if self.bucket is not None:
                await self.bucket.acquire()
            delay: float | None = None
            try:
                resp = await self.http.send(request)
                content = resp.content
            except (httpx.TransportError, httpx.DecodingError) as e:
                maybe_applied = not isinstance(e, NOT_SENT_ERRORS)
                reason = type(e).__name__
            else:
                status = resp.status_code
                if status in (401, 403):
                    raise AuthRefused(
                        self.redact(f"{what}: {self._auth_hint} ({self._message(status, content)})")
                    )
                if 200 <= status < 300:
                    if not json_required or status == 204 or _is_json(content):
                        return Answer(status, content, resp.headers, lossy)
                    maybe_applied = True  # the server answered: it handled the request
                    reason = f"HTTP {status} with a body that is not JSON"
                elif status in accept:
                    return Answer(status, content, resp.headers, lossy)
                elif status in RETRYABLE_STATUS:
                    maybe_applied = status in MAYBE_APPLIED_STATUS
                    reason = f"HTTP {status}"
                    delay = checked_retry_after(resp.headers.get("Retry-After"), policy, what)
                else:
                    raise RemoteRefused(self.redact(f"{what}: {self._message(status, content)}"))
            lossy = lossy or maybe_applied
            attempt += 1
            wait = next_wait(policy, attempt, delay, self._rng, what, reason)
            self.stats.retries += 1
            log.warning("http.retry", request=what, reason=reason, attempt=attempt, wait=wait)
            await anyio.sleep(wait)
            if maybe_applied and not resend_unknown:
                raise MaybeApplied(what, attempt)

    def _message(self, status: int, content: bytes) -> str:
        return self._describe(status, decode_json(content))


def _is_json(content: bytes) -> bool:
    """Whether a body is not a cut-off JSON document: empty, whole JSON, or plainly
    something else (a text "Accepted"), which the caller judges itself."""
    start = content.lstrip()[:1]
    if start not in (b"{", b"["):
        return True
    try:
        json.loads(content)
    except ValueError:
        return False
    return True


class HttpConnector:
    """Base of the clients: an async context manager closing its exchange's pool."""

    _exchange: Exchange

    @property
    def bucket(self) -> TokenBucket | None:
        """The client-side rate budget requests wait for, if the connection has one."""
        return self._exchange.bucket

    def redacted(self, outcome: PushOutcome) -> PushOutcome:
        """An outcome whose rejection reason (the destination's own words, kept in the
        replica) carries no credentials: servers echo request headers into errors."""
        if outcome.rejected is None:
            return outcome
        return replace(outcome, rejected=self._exchange.redact(outcome.rejected))

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
        await self._exchange.aclose()
