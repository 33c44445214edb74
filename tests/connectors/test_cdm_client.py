"""CDM push client over httpx.MockTransport: headers, rejections, lost creates, resends."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from replicad.connectors.cdm import CdmClient, CdmSettings
from replicad.connectors.cdm_protocol import CdmProtocolError, rejection, write_body
from replicad.connectors.errors import AuthRefused, RemoteUnreachable
from replicad.connectors.push_model import Op, PushBatch, PushConnector, PushItem
from replicad.connectors.retry import RetryPolicy

TOKEN = "c" * 48
FAST = RetryPolicy(max_retries=3, base=0.001, cap=0.002)


@dataclass
class FakeCdm:
    """A tiny CDM: stores records per object, validates emails, echoes tracking ids.

    ``faults`` are consumed by writes, oldest first: ``"lost"`` applies the write and
    answers 502, an int answers that status without applying, an exception is raised,
    ``"bad_echo"`` applies and echoes another tracking id.
    """

    records: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    faults: list[Any] = field(default_factory=list)
    requests: list[httpx.Request] = field(default_factory=list)
    ignore_filter: bool = False  # answer every record of a lookup, as a buggy server might
    next_id: int = 500

    def writes(self) -> list[httpx.Request]:
        """The POST requests received, oldest first."""
        return [r for r in self.requests if r.method == "POST"]

    def lookups(self) -> list[httpx.Request]:
        """The GET requests received, oldest first."""
        return [r for r in self.requests if r.method == "GET"]

    def __call__(self, req: httpx.Request) -> httpx.Response:
        self.requests.append(req)
        if req.headers.get("Authorization") != f"Bearer {TOKEN}":
            return httpx.Response(401, json={"message": "bad token"})
        obj = req.url.path.removeprefix("/api/")
        if obj not in ("contact", "lead", "deal"):
            return httpx.Response(404, json={"message": f"unknown object {obj}"})
        table = self.records.setdefault(obj, [])
        if req.method == "GET":
            ((key, value),) = req.url.params.multi_items()
            found = [r for r in table if self.ignore_filter or str(r.get(key)) == value]
            return httpx.Response(200, json={"data": found})
        fault = self.faults.pop(0) if self.faults else None
        if isinstance(fault, Exception):
            raise fault
        if isinstance(fault, int):
            return httpx.Response(fault, headers={"Retry-After": "0"}, json={"message": "busy"})
        body = json.loads(req.content)
        email = body.get("email")
        if isinstance(email, str) and "@" not in email:
            errors = [{"field": "email", "message": "must contain @"}]
            return httpx.Response(422, json={"message": "email must contain @", "errors": errors})
        if "id" in body:
            rec = next((r for r in table if r["id"] == int(body["id"])), None)
            if rec is None:
                return httpx.Response(404, json={"message": "no such record"})
            rec.update({k: v for k, v in body.items() if k != "id"})
            status = 200
        else:
            self.next_id += 1
            rec = {**body, "id": self.next_id}
            table.append(rec)
            status = 201
        if fault == "lost":
            return httpx.Response(502)
        echo = req.headers["X-Tracking-ID"]
        headers = {"X-Tracking-ID": "someone-else" if fault == "bad_echo" else echo}
        if req.headers.get("X-Sync-Data") == "push":
            headers["X-Sync-ID"] = f"sync-{rec['id']}"
        return httpx.Response(status, headers=headers, json={"data": rec})


def make(server: FakeCdm, **kw: Any) -> CdmClient:
    settings = CdmSettings(base_url="https://cdm.test", token=TOKEN, retry=FAST, **kw)
    return CdmClient(settings, transport=httpx.MockTransport(server), rng=random.Random(1))


def item(entry: int, email: str = "", rid: str | None = None, **data: Any) -> PushItem:
    fields = {"name": f"n{entry}", "email": email or f"u{entry}@example.com", **data}
    op: Op = "insert" if rid is None else "update"
    return PushItem(entry=entry, internal_id=f"int-{entry}", op=op, data=fields, id=rid)


def batch(*items: PushItem, resend: bool = False) -> PushBatch:
    return PushBatch("trk-9", "contact", tuple(items), resend=resend)


async def test_headers_push_to_sources_and_sync_id() -> None:
    """Push-to-source sends X-Sync-Data and X-Sync-Sources; X-Sync-ID is recorded."""
    server = FakeCdm()
    async with make(server, push_to_source=True, sources=("quickbooks", "accounting")) as c:
        result = await c.push(batch(item(1), item(2)))
    assert result.error is None
    for n, req in enumerate(server.requests, start=1):
        assert req.url.path == "/api/contact"
        assert req.headers["Authorization"] == f"Bearer {TOKEN}"
        assert req.headers["User-Agent"] == "replicad"
        assert req.headers["X-Tracking-ID"] == f"trk-9.{n}"
        assert req.headers["X-Sync-Data"] == "push"
        assert req.headers["X-Sync-Sources"] == "quickbooks,accounting"
    got = [(o.entry, o.id, o.sync_id) for o in result.outcomes]
    assert got == [(1, "501", "sync-501"), (2, "502", "sync-502")]


async def test_no_sync_headers_without_push_to_source() -> None:
    """Without push_to_source neither sync header is sent, even with sources set."""
    server = FakeCdm()
    async with make(server, sources=("quickbooks",)) as c:
        result = await c.push(batch(item(1)))
    req = server.requests[0]
    assert "X-Sync-Data" not in req.headers and "X-Sync-Sources" not in req.headers
    assert result.outcomes[0].sync_id is None and result.outcomes[0].id == "501"


async def test_create_omits_id_and_update_carries_it() -> None:
    """A create has no id in its body (even one left in the data); an update has its id."""
    server = FakeCdm(records={"contact": [{"id": 7, "name": "old"}]})
    async with make(server) as c:
        result = await c.push(batch(item(1, id=None), item(2, rid="7")))
    create, update = (json.loads(r.content) for r in server.writes())
    assert "id" not in create and create["email"] == "u1@example.com"
    assert update["id"] == "7" and update["name"] == "n2"
    assert [o.id for o in result.outcomes] == ["501", "7"]
    assert server.records["contact"][0]["name"] == "n2"


async def test_an_update_without_an_id_is_never_posted_as_a_create() -> None:
    """An update of a record whose id is not known (its create was accepted without
    one) is refused unsent: posted without an id it would create a second record."""
    server = FakeCdm()
    edit = PushItem(entry=4, internal_id="int-4", op="update", data={"name": "x"}, id=None)
    async with make(server) as c:
        result = await c.push(batch(edit))
    assert server.requests == []
    (outcome,) = result.outcomes
    assert outcome.rejected is not None and "second record" in outcome.rejected


async def test_tracking_echo_mismatch_stops_the_batch() -> None:
    """An answer echoing another tracking id stops the batch; that entry stays in flight."""
    server = FakeCdm(faults=[None, "bad_echo"])
    async with make(server) as c:
        result = await c.push(batch(item(1), item(2), item(3)))
    assert [o.entry for o in result.outcomes] == [1]
    assert isinstance(result.error, CdmProtocolError) and "someone-else" in str(result.error)
    assert len(server.writes()) == 2


async def test_422_rejects_the_item_and_the_batch_goes_on() -> None:
    """A validation failure rejects that item with the server's message; the next is sent."""
    server = FakeCdm()
    async with make(server) as c:
        result = await c.push(batch(item(1, email="bad"), item(2)))
    assert result.error is None
    got = [(o.entry, o.id, o.rejected) for o in result.outcomes]
    assert got == [(1, None, "email must contain @"), (2, "501", None)]


async def test_a_rejection_echoing_the_token_keeps_no_credentials() -> None:
    """A 422 whose message repeats the Authorization header: the reason the replica
    keeps has the token replaced (the server's own words otherwise)."""

    def echo(req: httpx.Request) -> httpx.Response:
        said = f"invalid; request had Authorization: {req.headers['Authorization']}"
        return httpx.Response(422, json={"message": said})

    async with make(echo) as c:  # type: ignore[arg-type]
        result = await c.push(batch(item(1)))
    (outcome,) = result.outcomes
    assert outcome.rejected is not None and outcome.rejected.startswith("invalid")
    assert TOKEN not in outcome.rejected and TOKEN[:20] not in outcome.rejected


async def test_404_update_of_unknown_id_is_not_found() -> None:
    """An update of an unknown id (404) ends that item not_found; the batch goes on."""
    server = FakeCdm()
    async with make(server) as c:
        result = await c.push(batch(item(1, rid="999"), item(2)))
    first = result.outcomes[0]
    assert first.not_found and first.rejected == (
        "contact 999 does not exist at the destination (HTTP 404: no such record)"
    )
    assert result.outcomes[1].confirmed and result.error is None


async def test_lost_create_found_by_lookup_is_not_posted_again() -> None:
    """A create whose answer was lost is looked up; one match confirms it without a repost."""
    server = FakeCdm(faults=["lost"])
    async with make(server, natural_key="email") as c:
        result = await c.push(batch(item(1)))
        assert c.stats.write == 1 and c.stats.lookup == 1 and c.stats.retries == 1
    assert len(server.writes()) == 1 and len(server.records["contact"]) == 1
    (lookup,) = server.lookups()
    assert lookup.url.params["email"] == "u1@example.com"
    assert lookup.headers["X-Tracking-ID"] == "trk-9.1"
    assert result.outcomes[0].id == "501" and result.error is None


async def test_lost_create_not_found_is_posted_once_more() -> None:
    """A create that failed with 502 before arriving is looked up, then posted once."""
    server = FakeCdm(faults=[502])
    async with make(server, natural_key="email") as c:
        result = await c.push(batch(item(1)))
    assert [r.method for r in server.requests] == ["POST", "GET", "POST"]
    assert len(server.records["contact"]) == 1 and result.outcomes[0].id == "501"


async def test_lost_create_without_natural_key_is_rejected() -> None:
    """Without a natural key a lost create is rejected, never posted a second time."""
    server = FakeCdm(faults=[httpx.ReadTimeout("slow")])
    async with make(server) as c:
        result = await c.push(batch(item(1), item(2)))
    assert len(server.writes()) == 2 and server.lookups() == []
    first, second = result.outcomes
    assert first.rejected is not None and "none configured" in first.rejected
    assert "replicad retry" in first.rejected and second.confirmed


async def test_connect_error_is_retried_without_lookup() -> None:
    """A connection that never opened cannot have delivered the create: post again."""
    server = FakeCdm(faults=[httpx.ConnectError("refused")])
    async with make(server) as c:
        result = await c.push(batch(item(1)))
    assert server.lookups() == [] and len(server.writes()) == 2
    assert result.outcomes[0].id == "501"


async def test_429_and_503_are_retried_without_lookup() -> None:
    """429 and 503 honour Retry-After and say nothing was applied: retried as they are."""
    server = FakeCdm(faults=[429, 503])
    async with make(server, natural_key="email") as c:
        result = await c.push(batch(item(1)))
        assert c.stats.retries == 2 and c.stats.total == 3
    assert server.lookups() == [] and result.outcomes[0].id == "501"


async def test_lost_creates_stay_bounded() -> None:
    """A create that keeps failing with 502 gives up after the retry budget."""
    server = FakeCdm(faults=[502] * 20)
    async with make(server, natural_key="email") as c:
        result = await c.push(batch(item(1), item(2)))
    assert isinstance(result.error, RemoteUnreachable) and result.outcomes == []
    assert len(server.writes()) == FAST.max_retries + 1
    assert len(server.lookups()) == FAST.max_retries


async def test_resend_create_found_by_lookup() -> None:
    """A create in a resent batch that already arrived is confirmed without a post."""
    server = FakeCdm(records={"contact": [{"id": 42, "email": "u1@example.com"}]})
    async with make(server, natural_key="email") as c:
        result = await c.push(batch(item(1), resend=True))
    assert server.writes() == [] and result.outcomes[0].id == "42"


async def test_resend_create_not_found_is_posted() -> None:
    """A create in a resent batch that never arrived is posted once."""
    server = FakeCdm()
    async with make(server, natural_key="email") as c:
        result = await c.push(batch(item(1), resend=True))
    assert [r.method for r in server.requests] == ["GET", "POST"]
    assert result.outcomes[0].id == "501"


async def test_resend_without_natural_key_is_rejected() -> None:
    """A resent create with no natural key configured is rejected and sends nothing."""
    server = FakeCdm()
    async with make(server) as c:
        result = await c.push(batch(item(1), resend=True))
    assert server.requests == []
    reason = result.outcomes[0].rejected
    assert reason is not None and reason.startswith("create may have reached the destination")


async def test_resend_item_lacking_the_key_is_rejected() -> None:
    """A resent create whose data lacks the natural key is rejected with the key's name."""
    server = FakeCdm()
    lacking = PushItem(entry=1, internal_id="i", op="insert", data={"name": "x"})
    async with make(server, natural_key="email") as c:
        result = await c.push(batch(lacking, resend=True))
    assert result.outcomes[0].rejected == (
        "create may have reached the destination; cannot check without natural key "
        "'email' — check the destination for the record, then run `replicad retry ENTRY` "
        "to post it again"
    )
    assert server.requests == []


async def test_resend_with_several_matches_is_rejected() -> None:
    """Several records with the natural key cannot be told apart: the create is in
    doubt (one of them may be it), never posted again by itself."""
    twins = [{"id": 1, "email": "u1@example.com"}, {"id": 2, "email": "u1@example.com"}]
    server = FakeCdm(records={"contact": twins})
    async with make(server, natural_key="email") as c:
        result = await c.push(batch(item(1), resend=True))
    reason = result.outcomes[0].rejected
    assert reason is not None and "2 records" in reason and server.writes() == []
    assert result.outcomes[0].in_doubt


async def test_lookup_filters_again_on_the_client() -> None:
    """A server that ignores the lookup filter cannot make another record look like ours."""
    others = [{"id": 1, "email": "someone@example.com"}]
    server = FakeCdm(records={"contact": others}, ignore_filter=True)
    async with make(server, natural_key="email") as c:
        result = await c.push(batch(item(1), resend=True))
    assert len(server.writes()) == 1 and result.outcomes[0].id == "501"


async def test_update_is_reposted_on_resend() -> None:
    """An update in a resent batch is posted again without a lookup (it is idempotent)."""
    server = FakeCdm(records={"contact": [{"id": 7, "email": "a@b.c"}]})
    async with make(server, natural_key="email") as c:
        result = await c.push(batch(item(1, rid="7"), resend=True))
    assert [r.method for r in server.requests] == ["POST"]
    assert result.outcomes[0].id == "7"


async def test_lost_update_is_retried_directly() -> None:
    """An update whose answer was lost is simply posted again."""
    server = FakeCdm(records={"contact": [{"id": 7, "email": "a@b.c"}]}, faults=["lost"])
    async with make(server, natural_key="email") as c:
        result = await c.push(batch(item(1, rid="7")))
    assert [r.method for r in server.requests] == ["POST", "POST"]
    assert result.outcomes[0].id == "7" and len(server.records["contact"]) == 1


@pytest.mark.parametrize("status", [401, 403])
async def test_auth_refused_keeps_outcomes_so_far(status: int) -> None:
    """401/403 stop the batch with AuthRefused (no token in it); earlier outcomes are kept."""
    server = FakeCdm()

    def handler(req: httpx.Request) -> httpx.Response:
        if server.requests:
            server.requests.append(req)
            return httpx.Response(status, json={"message": f"bad Bearer {TOKEN}"})
        return server(req)

    settings = CdmSettings("https://cdm.test", TOKEN, retry=FAST)
    async with CdmClient(settings, transport=httpx.MockTransport(handler)) as c:
        result = await c.push(batch(item(1), item(2), item(3)))
    assert [o.entry for o in result.outcomes] == [1]
    assert isinstance(result.error, AuthRefused) and TOKEN not in str(result.error)
    assert len(server.requests) == 2
    assert TOKEN not in repr(settings)


async def test_any_4xx_to_a_write_rejects_that_record_only() -> None:
    """A 4xx answer to the write itself (here a 409) refuses that record; the next item
    still goes."""
    server = FakeCdm(faults=[409])
    async with make(server) as c:
        result = await c.push(batch(item(1), item(2)))
    assert result.error is None
    assert result.outcomes[0].rejected == "HTTP 409: busy" and result.outcomes[1].confirmed


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(201, headers={"X-Tracking-ID": "trk-9.1"}, json={"data": {"name": "x"}}),
        httpx.Response(201, headers={"X-Tracking-ID": "trk-9.1"}, content=b"{"),
        httpx.Response(202),
        httpx.Response(204),
        httpx.Response(202, json={"status": "queued"}),
    ],
)
async def test_accepted_write_without_record_is_confirmed_without_id(
    answer: httpx.Response,
) -> None:
    """202/204, or a 2xx whose body cannot be read or has no id, mean accepted: the
    entry is confirmed without a remote id and never posted again."""
    requests: list[httpx.Request] = []

    def handler(req: httpx.Request) -> httpx.Response:
        requests.append(req)
        return answer

    settings = CdmSettings("https://cdm.test", TOKEN, retry=FAST)
    async with CdmClient(settings, transport=httpx.MockTransport(handler)) as c:
        result = await c.push(batch(item(1)))
    assert result.error is None and len(requests) == 1
    assert [(o.confirmed, o.id) for o in result.outcomes] == [(True, None)]


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(201, json={"data": {"id": 7}}),
        httpx.Response(201, json={"data": {"id": 7}, "tracking_id": "trk-9.1"}),
        httpx.Response(200, json={"id": 7, "meta": {"tracking_id": "trk-9.1"}}),
    ],
)
async def test_tracking_echo_may_be_absent_or_in_the_body(answer: httpx.Response) -> None:
    """The echo may come as a header or in the body; without one the write still counts
    (a warning is logged once per connection)."""
    settings = CdmSettings("https://cdm.test", TOKEN, retry=FAST)
    async with CdmClient(settings, transport=httpx.MockTransport(lambda r: answer)) as c:
        result = await c.push(batch(item(1)))
    assert result.error is None and [o.id for o in result.outcomes] == ["7"]


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(201, headers={"X-Tracking-ID": "other.1"}, json={"data": {"id": 1}}),
        httpx.Response(201, json={"data": {"id": 1}, "tracking_id": "other.1"}),
    ],
)
async def test_echo_of_another_tracking_id_is_a_protocol_error(answer: httpx.Response) -> None:
    """An answer echoing another request's tracking id is not ours: a protocol error,
    the entry stays in flight."""
    settings = CdmSettings("https://cdm.test", TOKEN, retry=FAST)
    async with CdmClient(settings, transport=httpx.MockTransport(lambda r: answer)) as c:
        result = await c.push(batch(item(1)))
    assert isinstance(result.error, CdmProtocolError) and result.outcomes == []


def test_protocol_helpers() -> None:
    """Bodies keep fields; rejections read the message and field errors."""
    assert write_body(item(1, rid="3")) == {"name": "n1", "email": "u1@example.com", "id": "3"}
    body = {"message": "invalid", "errors": [{"field": "value", "message": "must be >= 0"}]}
    assert rejection(422, body) == "invalid; value: must be >= 0"
    assert rejection(400, None) == "HTTP 400"


def test_satisfies_push_connector() -> None:
    """CdmClient is a PushConnector and builds a token bucket when a rate limit is set."""
    connector: PushConnector = make(FakeCdm(), rate_limit="600/m")
    assert isinstance(connector, CdmClient) and connector.bucket is not None


@pytest.mark.parametrize("status", [404, 405])
async def test_lost_create_on_a_server_without_lookup_is_rejected_with_a_hint(status: int) -> None:
    """A server that cannot list records by a field (404/405) cannot tell whether a lost
    create arrived: the entry is rejected with the retry hint, never posted blindly."""
    server = FakeCdm(faults=["lost"])

    def handler(req: httpx.Request) -> httpx.Response:
        if req.method == "GET":
            server.requests.append(req)
            return httpx.Response(status, json={"message": "no listing"})
        return server(req)

    settings = CdmSettings("https://cdm.test", TOKEN, retry=FAST, natural_key="email")
    async with CdmClient(settings, transport=httpx.MockTransport(handler)) as c:
        result = await c.push(batch(item(1)))
    assert len(server.writes()) == 1 and result.error is None
    (outcome,) = result.outcomes
    assert outcome.rejected is not None and "replicad retry" in outcome.rejected


async def test_a_missing_tracking_echo_is_accepted_and_warned_once_per_destination() -> None:
    """Writes answered without the X-Tracking-ID echo are accepted; the warning comes
    once for the destination, not once per sync's client or per write."""
    from structlog.testing import capture_logs

    def no_echo(req: httpx.Request) -> httpx.Response:
        return httpx.Response(201, json={"data": {"id": 9}})

    settings = CdmSettings(base_url="https://no-echo.test", token=TOKEN, retry=FAST)
    with capture_logs() as logs:
        for _ in range(2):  # two push syncs on one connection
            transport = httpx.MockTransport(no_echo)
            async with CdmClient(settings, transport=transport) as c:
                result = await c.push(batch(item(1), item(2)))
            assert [o.id for o in result.outcomes] == ["9", "9"]
    assert [e["event"] for e in logs].count("push.no_tracking_echo") == 1
