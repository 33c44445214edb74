"""The push clients' read-only credentials check (``replicad validate``).

Over httpx.MockTransport: which answers mean the token was taken, refused, or the
destination unreachable. Against the real emulator (in-process for both profiles, and
the ``replicad emulator`` subprocess): a good token passes, a bad one is refused, and
nothing is written.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import anyio
import httpx
import pytest

from replicad.connectors.cdm import CdmClient, CdmSettings
from replicad.connectors.emulator import create_app
from replicad.connectors.endgrate import EndgrateClient, EndgrateSettings
from replicad.connectors.errors import (
    AuthRefused,
    ConnectorError,
    RemoteRefused,
    RemoteUnreachable,
)
from replicad.connectors.push_model import PushConnector
from replicad.connectors.retry import RetryPolicy
from tests.e2e.harness import PROFILES
from tests.e2e.harness import TOKEN as E2E_TOKEN
from tests.e2e.harness import emulator as run_emulator

TOKEN = "k" * 48
FAST = RetryPolicy(max_retries=3, base=0.001, cap=0.002)
KINDS = ("cdm", "endgrate")

Handler = Callable[[httpx.Request], httpx.Response]


class Server:
    """Answers every request with the next status of ``statuses`` (the last repeats),
    after checking the token; records what it received."""

    def __init__(self, *statuses: int) -> None:
        self.statuses = list(statuses)
        self.requests: list[httpx.Request] = []

    def __call__(self, req: httpx.Request) -> httpx.Response:
        self.requests.append(req)
        if req.headers.get("Authorization") != f"Bearer {TOKEN}":
            return httpx.Response(401, json={"message": f"bad token {req.headers}"})
        status = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
        return httpx.Response(status, json={"message": f"HTTP {status}"})


def client(
    kind: str,
    handler: Handler | None = None,
    *,
    base_url: str = "https://push.test",
    token: str = TOKEN,
    transport: httpx.AsyncBaseTransport | None = None,
) -> CdmClient | EndgrateClient:
    """A client of ``kind`` over ``handler`` (MockTransport), else ``transport`` (else
    the network)."""
    if handler is not None:
        transport = httpx.MockTransport(handler)
    if kind == "cdm":
        cdm = CdmSettings(base_url=base_url, token=token, retry=FAST)
        return CdmClient(cdm, transport=transport, rng=random.Random(1))
    endgrate = EndgrateSettings(base_url=base_url, token=token, retry=FAST, session_id="s")
    return EndgrateClient(endgrate, transport=transport, rng=random.Random(1))


# -- the requests --------------------------------------------------------------------


async def test_cdm_check_lists_the_object_by_a_field_no_record_has() -> None:
    """CDM: one ``GET api/{object}?replicad_check=1`` with a replicad-check tracking id."""
    server = Server(200)
    async with client("cdm", server) as c:
        await c.check_credentials("contact")
    (req,) = server.requests
    assert req.method == "GET" and req.content == b""
    assert req.url.path == "/api/contact"
    assert dict(req.url.params) == {"replicad_check": "1"}
    assert req.headers["X-Tracking-ID"].startswith("replicad-check-")
    assert req.headers["Authorization"] == f"Bearer {TOKEN}"


async def test_cdm_check_quotes_the_object_as_one_segment() -> None:
    """An object holding ``/`` cannot reach another path."""
    server = Server(200)
    async with client("cdm", server) as c:
        await c.check_credentials("a/../b")
    assert server.requests[0].url.raw_path.startswith(b"/api/a%2F..%2Fb?")


async def test_endgrate_check_reads_a_transfer_that_does_not_exist() -> None:
    """Endgrate: one ``GET api/push/data?transfer_id=replicad-check``."""
    server = Server(404)
    async with client("endgrate", server) as c:
        await c.check_credentials("crm-contact")
    (req,) = server.requests
    assert req.method == "GET" and req.content == b""
    assert req.url.path == "/api/push/data"
    assert dict(req.url.params) == {"transfer_id": "replicad-check"}
    assert req.headers["X-Tracking-ID"].startswith("replicad-check-")


async def test_each_check_gets_its_own_tracking_id() -> None:
    server = Server(200)
    async with client("cdm", server) as c:
        await c.check_credentials("contact")
        await c.check_credentials("contact")
    first, second = (r.headers["X-Tracking-ID"] for r in server.requests)
    assert first != second


# -- accepted, refused, unreachable ----------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "status"),
    [
        *(("cdm", s) for s in (200, 202, 204, 404, 405)),
        *(("endgrate", s) for s in (200, 204, 400, 404, 405, 422)),
    ],
)
async def test_answers_past_authentication_accept_the_token(kind: str, status: int) -> None:
    """Any 2xx, and the statuses of an unknown object/transfer or route, take the token."""
    server = Server(status)
    async with client(kind, server) as c:
        await c.check_credentials("contact")
    assert len(server.requests) == 1


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("status", [401, 403])
async def test_401_and_403_refuse_the_token_without_retrying(kind: str, status: int) -> None:
    server = Server(status)
    async with client(kind, server) as c:
        with pytest.raises(AuthRefused) as refused:
            await c.check_credentials("contact")
    assert len(server.requests) == 1
    assert f"HTTP {status}" in str(refused.value)


@pytest.mark.parametrize("kind", KINDS)
async def test_a_wrong_token_is_refused_and_never_echoed(kind: str) -> None:
    """The server echoes the request headers into its 401; the token is scrubbed."""
    server = Server(200)
    async with client(kind, server, token="wrong-" + "x" * 40) as c:
        with pytest.raises(AuthRefused) as refused:
            await c.check_credentials("contact")
    assert "x" * 40 not in str(refused.value)


@pytest.mark.parametrize("kind", KINDS)
async def test_5xx_is_retried_then_unreachable(kind: str) -> None:
    """500s are retried within the policy, then raise RemoteUnreachable (a
    ConnectorError: validate says "not reachable now", not "refused")."""
    server = Server(500)
    async with client(kind, server) as c:
        with pytest.raises(RemoteUnreachable) as gave_up:
            await c.check_credentials("contact")
        assert c.stats.retries == FAST.max_retries
    assert isinstance(gave_up.value, ConnectorError)
    assert not isinstance(gave_up.value, AuthRefused)
    assert len(server.requests) == FAST.max_retries + 1


@pytest.mark.parametrize("kind", KINDS)
async def test_a_passing_outage_is_retried_until_accepted(kind: str) -> None:
    server = Server(503, 502, 200)
    async with client(kind, server) as c:
        await c.check_credentials("contact")
    assert len(server.requests) == 3


@pytest.mark.parametrize("kind", KINDS)
async def test_transport_errors_are_retried_then_unreachable(kind: str) -> None:
    calls = 0

    def down(req: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        raise httpx.ConnectError("connection refused", request=req)

    async with client(kind, down) as c:
        with pytest.raises(RemoteUnreachable):
            await c.check_credentials("contact")
    assert calls == FAST.max_retries + 1


@pytest.mark.parametrize(("kind", "status"), [("cdm", 400), ("cdm", 422), ("endgrate", 410)])
async def test_other_4xx_are_neither_accepted_nor_auth(kind: str, status: int) -> None:
    """A refusal outside the accept set is RemoteRefused: the token is left unchecked."""
    async with client(kind, Server(status)) as c:
        with pytest.raises(RemoteRefused):
            await c.check_credentials("contact")


@pytest.mark.parametrize("kind", KINDS)
async def test_clients_are_push_connectors_with_the_check(kind: str) -> None:
    connector: PushConnector = client(kind, Server(200))
    await connector.check_credentials("contact")
    await connector.aclose()


# -- against the emulator ------------------------------------------------------------


def pushes_of(app: Any) -> list[dict[str, Any]]:
    """The emulator's push log (``GET /_emulator/pushes``)."""
    entries: list[dict[str, Any]] = app.state.emulator.pushes.log.to_json()["requests"]
    return entries


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize(
    ("kind", "obj", "endpoint", "status"),
    [
        ("cdm", "contact", "cdm_list", 200),
        ("cdm", "no-such-object", "cdm_list", 404),
        ("endgrate", "crm-contact", "push_data", 404),
    ],
)
async def test_emulator_takes_a_good_token_and_refuses_a_bad_one(
    profile: str, kind: str, obj: str, endpoint: str, status: int
) -> None:
    """The in-process emulator answers the check without a 5xx and writes nothing."""
    app = create_app(records=5, seed=2, token=TOKEN, profile=profile)
    transport = httpx.ASGITransport(app=app)
    async with client(kind, base_url="http://emulator", transport=transport) as good:
        await good.check_credentials(obj)
    async with client(kind, base_url="http://emulator", token="bad", transport=transport) as bad:
        with pytest.raises(AuthRefused):
            await bad.check_credentials(obj)
    log = pushes_of(app)
    assert [(e["endpoint"], e["status"], e["applied"], e["items"]) for e in log] == [
        (endpoint, status, False, 0),
        (endpoint, 401, False, 0),
    ]
    assert all(e["tracking_id"].startswith("replicad-check-") for e in log)


def test_emulator_subprocess_answers_both_checks() -> None:
    """``replicad emulator`` (as the e2e harness starts it): a good token passes for
    both kinds, a bad one is refused, and no request is answered with a 5xx."""

    async def check(url: str) -> None:
        for kind, obj in (("cdm", "contact"), ("endgrate", "crm-contact")):
            async with client(kind, base_url=url, token=E2E_TOKEN) as good:
                await good.check_credentials(obj)
            async with client(kind, base_url=url, token="not-" + E2E_TOKEN) as bad:
                with pytest.raises(AuthRefused) as refused:
                    await bad.check_credentials(obj)
                assert E2E_TOKEN not in str(refused.value)

    with run_emulator(records=5) as emu:
        anyio.run(check, emu.url)
        statuses = [(p["endpoint"], p["status"]) for p in emu.control.pushes()]
    assert statuses == [
        ("cdm_list", 200),
        ("cdm_list", 401),
        ("push_data", 404),
        ("push_data", 401),
    ]
