"""Endgrate push client over httpx.MockTransport: shapes, polling, paging, errors, retries."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from replicad.connectors.endgrate import EndgrateClient, EndgrateSettings
from replicad.connectors.endgrate_protocol import (
    DataPage,
    EndgrateProtocolError,
    ReturnedRow,
    next_offset,
    parse_errors,
)
from replicad.connectors.errors import AuthRefused, RemoteUnreachable
from replicad.connectors.push_model import Associated, PushBatch, PushConnector, PushItem
from replicad.connectors.retry import RetryPolicy

TOKEN = "e" * 48
FAST = RetryPolicy(max_retries=3, base=0.001, cap=0.002)


@dataclass
class FakeEndgrate:
    """A tiny Endgrate: assigns ids by internal_id, serves data and errors per transfer."""

    pending_polls: int = 0  # api/push/data answers "not yet completed" this many times
    invalid: set[str] = field(default_factory=set)  # internal_ids that fail validation
    error_by: str = "index"  # how api/errors names failed items: "index" or "internal_id"
    faults: list[httpx.Response] = field(default_factory=list)  # answered before anything
    requests: list[httpx.Request] = field(default_factory=list)
    transfers: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    ids: dict[str, int] = field(default_factory=dict)
    sample: bool = False

    def bodies(self) -> list[dict[str, Any]]:
        """JSON bodies of the transfer requests, oldest first."""
        return [json.loads(r.content) for r in self.requests if r.method == "POST"]

    def paths(self) -> list[str]:
        """Paths of every request received, oldest first."""
        return [r.url.path for r in self.requests]

    def __call__(self, req: httpx.Request) -> httpx.Response:
        self.requests.append(req)
        if req.headers.get("Authorization") != f"Bearer {TOKEN}":
            return httpx.Response(401, json={"success": False, "message": "bad token"})
        if self.faults:
            return self.faults.pop(0)
        if req.url.path == "/api/push/transfer":
            body = json.loads(req.content)
            tid = f"tr-{len(self.transfers) + 1}"
            self.sample = body["sample_data"]
            self.transfers[tid] = body["transfer_data"]
            return httpx.Response(200, json={"success": True, "transfer_id": tid})
        tid = req.url.params["transfer_id"]
        items = self.transfers[tid]
        if req.url.path == "/api/push/data":
            if self.pending_polls:
                self.pending_polls -= 1
                msg = {"success": False, "message": "Transfer has not yet completed"}
                return httpx.Response(400, json=msg)
            limit = int(req.url.params.get("limit", "100"))
            offset = int(req.url.params.get("offset", "0"))
            rows = [self._row(x) for x in items[offset : offset + limit]]
            more = offset + limit < len(items)
            nxt = f"/api/push/data?transfer_id={tid}&offset={offset + limit}" if more else None
            meta = {"count": len(items), "previous": None, "next": nxt}
            return httpx.Response(200, json={"success": True, "meta": meta, "transfer_data": rows})
        errors = [
            {
                **({"index": i} if self.error_by == "index" else {}),
                "internal_id": x["internal_id"],
                "error_type": "validation",
                "error_resolve_text": "email must contain @",
            }
            for i, x in enumerate(items)
            if x["internal_id"] in self.invalid
        ]
        return httpx.Response(200, json={"success": True, "errors": errors})

    def _row(self, x: dict[str, Any]) -> dict[str, Any]:
        if x["internal_id"] in self.invalid:
            return {"id": None, "data": {}}
        if self.sample:
            return {"id": None, "data": x["data"]}
        rid = self.ids.setdefault(x["internal_id"], 1000 + len(self.ids))
        return {"id": str(rid), "data": x["data"]}


def make(server: FakeEndgrate, **kw: Any) -> EndgrateClient:
    settings = EndgrateSettings(
        base_url="https://endgrate.test/", token=TOKEN, session_id="sess-1", retry=FAST, **kw
    )
    return EndgrateClient(settings, transport=httpx.MockTransport(server), rng=random.Random(1))


def item(entry: int, email: str = "", rid: str | None = None, **kw: Any) -> PushItem:
    data = {"first_name": f"n{entry}", "email": email or f"u{entry}@example.com"}
    return PushItem(entry=entry, internal_id=f"int-{entry}", op="insert", data=data, id=rid, **kw)


def batch(*items: PushItem, resend: bool = False) -> PushBatch:
    return PushBatch("trk-1", "crm-contact", tuple(items), resend=resend)


async def test_transfer_shape_and_headers_on_every_request() -> None:
    """The transfer body follows the contract; Bearer and X-Tracking-ID go on every request."""
    server = FakeEndgrate()
    assocs = (
        Associated("crm-company", "co-1", {"name": "Acme"}),
        Associated("crm-deal", "d-1", {"value": 5}, id="77"),
        Associated("crm-company", "co-2", {"name": "Bacme"}, id="88"),
    )
    async with make(server, disable_upsert=True) as c:
        result = await c.push(batch(item(1, associations=assocs), item(2, rid="1000042")))
    assert result.error is None
    # Every row came back with an id: the errors list is not read.
    assert server.paths() == ["/api/push/transfer", "/api/push/data"]
    for req in server.requests:
        assert req.headers["Authorization"] == f"Bearer {TOKEN}"
        assert req.headers["X-Tracking-ID"] == "trk-1"
        assert req.headers["User-Agent"] == "replicad"
    body = server.bodies()[0]
    assert {k: v for k, v in body.items() if k != "transfer_data"} == {
        "session_id": "sess-1",
        "endgrate_type": "crm-contact",
        "synchronous": True,
        "disable_upsert": True,
        "sample_data": False,
    }
    first, second = body["transfer_data"]
    assert "id" not in first and second["id"] == "1000042"
    assert "associations" not in second
    assert first["associations"] == {
        "crm-company": [
            {"internal_id": "co-1", "data": {"name": "Acme"}},
            {"internal_id": "co-2", "data": {"name": "Bacme"}, "id": "88"},
        ],
        "crm-deal": [{"internal_id": "d-1", "data": {"value": 5}, "id": "77"}],
    }
    assert [(o.entry, o.id, o.transfer_id, o.confirmed) for o in result.outcomes] == [
        (1, "1000", "tr-1", True),
        (2, "1001", "tr-1", True),
    ]


async def test_polls_until_the_transfer_completes() -> None:
    """An asynchronous transfer is polled while push/data answers 'not yet completed'."""
    server = FakeEndgrate(pending_polls=3)
    async with make(server, synchronous=False, poll_interval=0.001) as c:
        result = await c.push(batch(item(1)))
        assert c.stats.data == 4 and c.stats.retries == 0
    assert server.bodies()[0]["synchronous"] is False
    assert result.error is None and result.outcomes[0].id == "1000"


async def test_poll_gives_up_after_max_wait() -> None:
    """A transfer that never completes stops the batch with RemoteUnreachable."""
    server = FakeEndgrate(pending_polls=10_000)
    policy = RetryPolicy(max_retries=3, base=0.001, cap=0.002, max_retry_after=0.02)
    settings = EndgrateSettings(
        "https://endgrate.test", TOKEN, "s", retry=policy, synchronous=False, poll_interval=0.005
    )
    async with EndgrateClient(settings, transport=httpx.MockTransport(server)) as c:
        result = await c.push(batch(item(1)))
    assert isinstance(result.error, RemoteUnreachable) and result.outcomes == []
    assert "has not completed" in str(result.error)


async def test_pages_through_returned_data() -> None:
    """Returned data is read page by page with our own offsets until next is null."""
    server = FakeEndgrate()
    async with make(server, page_limit=2) as c:
        result = await c.push(batch(*(item(i) for i in range(1, 6))))
    pages = [r.url.params for r in server.requests if r.url.path == "/api/push/data"]
    assert [(p["limit"], p["offset"]) for p in pages] == [("2", "0"), ("2", "2"), ("2", "4")]
    assert [o.id for o in result.outcomes] == ["1000", "1001", "1002", "1003", "1004"]


async def test_errors_become_rejections_by_index() -> None:
    """An item listed by api/errors is rejected with its type and resolve text."""
    server = FakeEndgrate(invalid={"int-2"})
    async with make(server) as c:
        result = await c.push(batch(item(1), item(2, email="bad"), item(3)))
    assert result.error is None
    got = [(o.entry, o.id, o.rejected) for o in result.outcomes]
    assert got == [
        (1, "1000", None),
        (2, None, "validation: email must contain @"),
        (3, "1001", None),
    ]


async def test_errors_by_internal_id_of_an_association() -> None:
    """An error naming an associated record's internal_id rejects the item carrying it."""
    server = FakeEndgrate(error_by="internal_id", invalid={"int-2"})
    assoc = Associated("crm-company", "co-9", {"name": "X"})
    errors = {
        "success": True,
        "errors": [{"internal_id": "co-9", "error_type": "conflict", "error_resolve_text": "x"}],
    }

    def handler(req: httpx.Request) -> httpx.Response:
        if req.url.path == "/api/errors":
            server.requests.append(req)
            return httpx.Response(200, json=errors)
        return server(req)

    settings = EndgrateSettings("https://endgrate.test", TOKEN, "s", retry=FAST)
    async with EndgrateClient(settings, transport=httpx.MockTransport(handler)) as c:
        result = await c.push(batch(item(1), item(2, associations=(assoc,))))
    assert [o.rejected for o in result.outcomes] == [None, "conflict: x"]


async def test_sample_data_confirms_without_ids() -> None:
    """With sample_data every item is confirmed and no remote id is recorded."""
    server = FakeEndgrate()
    async with make(server, sample_data=True) as c:
        result = await c.push(batch(item(1), item(2)))
    assert server.bodies()[0]["sample_data"] is True
    assert [(o.confirmed, o.id) for o in result.outcomes] == [(True, None), (True, None)]


async def test_429_retry_after_then_success() -> None:
    """A 429 waits Retry-After and the transfer is sent again."""
    server = FakeEndgrate(faults=[httpx.Response(429, headers={"Retry-After": "0"})])
    async with make(server) as c:
        result = await c.push(batch(item(1)))
        assert c.stats.retries == 1 and c.stats.transfer == 1 and c.stats.total == 3
    assert result.error is None and result.outcomes[0].confirmed
    assert server.paths()[:2] == ["/api/push/transfer", "/api/push/transfer"]


async def test_503_retried_then_success() -> None:
    """503 answers are retried with backoff; Endgrate's idempotency makes reposting safe."""
    server = FakeEndgrate(faults=[httpx.Response(503), httpx.Response(503)])
    async with make(server) as c:
        result = await c.push(batch(item(1)))
        assert c.stats.retries == 2
    assert result.error is None and result.outcomes[0].id == "1000"


async def test_retries_exhausted_is_unreachable() -> None:
    """Failures that outlast the retry budget leave every item in flight."""
    server = FakeEndgrate(faults=[httpx.Response(502)] * 10)
    async with make(server) as c:
        result = await c.push(batch(item(1)))
    assert isinstance(result.error, RemoteUnreachable) and result.outcomes == []
    assert "gave up after 3 retries" in str(result.error)
    assert len(server.requests) == 4


async def test_network_error_retried() -> None:
    """A transport error is retried like any lost answer."""
    calls: list[int] = []
    server = FakeEndgrate()

    def handler(req: httpx.Request) -> httpx.Response:
        calls.append(1)
        if len(calls) == 1:
            raise httpx.ReadError("reset")
        return server(req)

    settings = EndgrateSettings("https://endgrate.test", TOKEN, "s", retry=FAST)
    async with EndgrateClient(settings, transport=httpx.MockTransport(handler)) as c:
        result = await c.push(batch(item(1)))
    assert result.error is None and result.outcomes[0].confirmed


@pytest.mark.parametrize("status", [401, 403])
async def test_auth_refused_without_token(status: int) -> None:
    """401/403 end the push with AuthRefused whose message never contains the token."""
    echo = {"success": False, "message": f"token Bearer {TOKEN} is invalid"}
    server = FakeEndgrate(faults=[httpx.Response(status, json=echo)])
    async with make(server) as c:
        result = await c.push(batch(item(1)))
    assert isinstance(result.error, AuthRefused) and result.outcomes == []
    assert TOKEN not in str(result.error) and "invalid" in str(result.error)
    assert TOKEN not in repr(c.settings)


async def test_transfer_4xx_rejects_its_items() -> None:
    """A 4xx answer to the transfer itself (e.g. an unknown type) rejects every item with
    the destination's message: that is an explicit refusal of the write."""
    bad = httpx.Response(400, json={"success": False, "message": "unknown endgrate_type"})
    server = FakeEndgrate(faults=[bad])
    async with make(server) as c:
        result = await c.push(batch(item(1), item(2)))
    assert result.error is None and len(server.requests) == 1
    assert all("unknown endgrate_type" in (o.rejected or "") for o in result.outcomes)
    assert [o.entry for o in result.outcomes] == [1, 2]


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(200, json={"success": True}),
        httpx.Response(200, json={"success": True, "transfer_id": ""}),
        httpx.Response(201, json=["not", "an", "object"]),
        httpx.Response(202, content=b"Accepted"),
        httpx.Response(204),
    ],
)
async def test_accepted_transfer_without_transfer_id_confirms_without_ids(
    answer: httpx.Response,
) -> None:
    """Any 2xx to a transfer is an accepted transfer; without a transfer_id there is no
    returned data to read, so its items are confirmed without remote ids."""
    server = FakeEndgrate(faults=[answer])
    async with make(server) as c:
        result = await c.push(batch(item(1), item(2)))
    assert result.error is None and len(server.requests) == 1
    assert [(o.entry, o.confirmed, o.id) for o in result.outcomes] == [
        (1, True, None),
        (2, True, None),
    ]


@pytest.mark.parametrize("status", [201, 202])
async def test_transfer_answered_201_or_202_reads_returned_data(status: int) -> None:
    """A 201 or 202 with a transfer_id is as good as a 200: the ids are read back."""
    server = FakeEndgrate()

    def handler(req: httpx.Request) -> httpx.Response:
        resp = server(req)
        if req.url.path == "/api/push/transfer":
            return httpx.Response(status, json=json.loads(resp.content))
        return resp

    settings = EndgrateSettings("https://endgrate.test", TOKEN, "s", retry=FAST)
    async with EndgrateClient(settings, transport=httpx.MockTransport(handler)) as c:
        result = await c.push(batch(item(1)))
    assert result.error is None and result.outcomes[0].id == "1000"


async def test_count_mismatch_is_an_error() -> None:
    """Returned data whose count differs from the pushed items leaves all in flight."""
    server = FakeEndgrate()

    def handler(req: httpx.Request) -> httpx.Response:
        if req.url.path == "/api/push/data":
            meta = {"count": 1, "previous": None, "next": None}
            rows = [{"id": "1", "data": {}}]
            return httpx.Response(200, json={"success": True, "meta": meta, "transfer_data": rows})
        return server(req)

    settings = EndgrateSettings("https://endgrate.test", TOKEN, "s", retry=FAST)
    async with EndgrateClient(settings, transport=httpx.MockTransport(handler)) as c:
        result = await c.push(batch(item(1), item(2)))
    assert isinstance(result.error, EndgrateProtocolError) and result.outcomes == []
    assert "1 rows for a transfer of 2" in str(result.error)


@pytest.mark.parametrize("errors", [404, 405, "empty"])
async def test_row_without_id_is_confirmed_without_one_after_rereads(errors: Any) -> None:
    """A row with no id that no error names was accepted: it is read again a bounded
    number of times, then confirmed without a remote id, never rejected. A 404/405 from
    api/errors means this server has no errors list; rows with ids are confirmed."""
    server = FakeEndgrate(invalid={"int-1"})

    def handler(req: httpx.Request) -> httpx.Response:
        if req.url.path == "/api/errors":
            server.requests.append(req)
            if errors == "empty":
                return httpx.Response(200, json={"success": True, "errors": []})
            return httpx.Response(errors, json={"message": "Not Found"})
        return server(req)

    settings = EndgrateSettings(
        "https://endgrate.test", TOKEN, "s", retry=FAST, poll_interval=0.001, id_rereads=2
    )
    async with EndgrateClient(settings, transport=httpx.MockTransport(handler)) as c:
        result = await c.push(batch(item(1), item(2)))
    assert result.error is None
    assert [(o.entry, o.confirmed, o.id) for o in result.outcomes] == [
        (1, True, None),
        (2, True, "1000"),
    ]
    assert server.paths().count("/api/push/data") == 3
    assert server.paths().count("/api/errors") == 3


async def test_listed_error_still_rejects_when_some_rows_lack_ids() -> None:
    """The errors list, when the server has one, names the items it refused."""
    server = FakeEndgrate(invalid={"int-2"})
    async with make(server) as c:
        result = await c.push(batch(item(1), item(2)))
    assert [(o.confirmed, o.id) for o in result.outcomes] == [(True, "1000"), (False, None)]
    assert result.outcomes[1].rejected == "validation: email must contain @"


@pytest.mark.parametrize(
    "fault",
    [
        [httpx.Response(400, json={"message": "transfer_id is malformed"})],
        [httpx.Response(500)] * 10,
        [httpx.Response(200, json={"success": True, "meta": {}})],
        [httpx.Response(200, content=b"{trunc")] * 10,
    ],
)
async def test_failing_returned_data_read_leaves_the_batch_in_flight(
    fault: list[httpx.Response],
) -> None:
    """A failing follow-up read never rejects: the accepted transfer's items get no
    outcome (they stay in flight and are resent, which Endgrate makes idempotent)."""
    server = FakeEndgrate()

    def handler(req: httpx.Request) -> httpx.Response:
        if req.url.path == "/api/push/data" and fault:
            server.requests.append(req)
            return fault.pop(0)
        return server(req)

    settings = EndgrateSettings("https://endgrate.test", TOKEN, "s", retry=FAST)
    async with EndgrateClient(settings, transport=httpx.MockTransport(handler)) as c:
        result = await c.push(batch(item(1)))
    assert result.error is not None and result.outcomes == []


@pytest.mark.parametrize("style", ["link", "number", "absent-count"])
async def test_meta_next_may_be_a_link_a_number_or_null(style: str) -> None:
    """meta.next as a link or as a number (an offset) pages on; offsets are computed
    from the rows, never taken from a link; meta.count may be absent."""
    server = FakeEndgrate()

    def handler(req: httpx.Request) -> httpx.Response:
        resp = server(req)
        if req.url.path != "/api/push/data":
            return resp
        body = json.loads(resp.content)
        nxt = body["meta"]["next"]
        if style == "number" and nxt is not None:
            body["meta"]["next"] = int(req.url.params["offset"]) + 1
        if style == "link" and nxt is not None:
            body["meta"]["next"] = "https://elsewhere.example/steal?offset=1"
        if style == "absent-count":
            del body["meta"]["count"]
        return httpx.Response(200, json=body)

    settings = EndgrateSettings("https://endgrate.test", TOKEN, "s", retry=FAST, page_limit=1)
    async with EndgrateClient(settings, transport=httpx.MockTransport(handler)) as c:
        result = await c.push(batch(item(1), item(2), item(3)))
    assert [o.id for o in result.outcomes] == ["1000", "1001", "1002"]
    assert {r.url.host for r in server.requests} == {"endgrate.test"}


async def test_resend_posts_again_under_the_same_tracking_id() -> None:
    """A resent batch is posted again; the same internal_id gets the same remote id."""
    server = FakeEndgrate()
    async with make(server) as c:
        first = await c.push(batch(item(1)))
        again = await c.push(batch(item(1), resend=True))
    assert first.outcomes[0].id == again.outcomes[0].id == "1000"
    assert [r.headers["X-Tracking-ID"] for r in server.requests] == ["trk-1"] * 4


async def test_empty_batch_sends_nothing() -> None:
    """An empty batch is answered without any request."""
    server = FakeEndgrate()
    async with make(server) as c:
        result = await c.push(batch())
    assert result.outcomes == [] and result.error is None and server.requests == []


def test_satisfies_push_connector_and_validates_settings() -> None:
    """EndgrateClient is a PushConnector; a page_limit beyond 1000 is refused."""
    connector: PushConnector = make(FakeEndgrate(), rate_limit="10/s")
    assert isinstance(connector, EndgrateClient) and connector.bucket is not None
    with pytest.raises(ValueError, match="page_limit"):
        EndgrateSettings("https://e.test", TOKEN, "s", page_limit=1001)


def test_next_offset_checks_paging() -> None:
    """Paging must add up: no empty page with a next link, no early or late end."""
    rows = (ReturnedRow("1"), ReturnedRow("2"))
    assert next_offset(DataPage(4, rows, True), expected=4, offset=0) == 2
    assert next_offset(DataPage(4, rows, False), expected=4, offset=2) is None
    with pytest.raises(EndgrateProtocolError, match="empty page"):
        next_offset(DataPage(4, (), True), expected=4, offset=2)
    with pytest.raises(EndgrateProtocolError, match="ended after 2"):
        next_offset(DataPage(4, rows, False), expected=4, offset=0)
    with pytest.raises(EndgrateProtocolError, match="more rows"):
        next_offset(DataPage(3, rows, True), expected=3, offset=2)


@pytest.mark.parametrize(
    "err",
    [
        {"error_type": "validation"},
        {"index": -1, "error_type": "validation"},
        {"index": True, "error_type": "validation"},
        {"index": 0},
        {"index": 0, "error_type": "v", "error_resolve_text": 5},
        "oops",
    ],
)
def test_parse_errors_is_strict(err: Any) -> None:
    """An error entry must name its item and carry an error_type."""
    with pytest.raises(EndgrateProtocolError):
        parse_errors(200, {"success": True, "errors": [err]})


async def test_a_truncated_returned_data_body_is_retried_like_a_transient_fault() -> None:
    """A 2xx push/data answer whose body is cut short is asked again (sustained faults
    must not end the push cycle); the retry gets the ids."""
    server = FakeEndgrate()
    faults = [httpx.Response(200, content=b'{"success": true, "meta": {"cou')]

    def handler(req: httpx.Request) -> httpx.Response:
        if req.url.path == "/api/push/data" and faults:
            server.requests.append(req)
            return faults.pop(0)
        return server(req)

    settings = EndgrateSettings("https://endgrate.test", TOKEN, "s", retry=FAST)
    async with EndgrateClient(settings, transport=httpx.MockTransport(handler)) as c:
        result = await c.push(batch(item(1)))
        assert c.stats.retries == 1
    assert result.error is None and result.outcomes[0].id == "1000"


@pytest.mark.parametrize("status", [404, 405])
async def test_a_server_without_returned_data_confirms_without_ids(status: int) -> None:
    """api/push/data answering 404/405: this server returns no data (a webhook would);
    the accepted transfer's entries are confirmed without ids, not resent forever."""
    server = FakeEndgrate()

    def handler(req: httpx.Request) -> httpx.Response:
        if req.url.path == "/api/push/data":
            server.requests.append(req)
            return httpx.Response(status, json={"message": "Not Found"})
        return server(req)

    settings = EndgrateSettings("https://endgrate.test", TOKEN, "s", retry=FAST)
    async with EndgrateClient(settings, transport=httpx.MockTransport(handler)) as c:
        result = await c.push(batch(item(1), item(2)))
    assert result.error is None
    assert [(o.confirmed, o.id) for o in result.outcomes] == [(True, None), (True, None)]


async def test_a_cut_transfer_answer_is_posted_again() -> None:
    """A 2xx transfer answer cut short is retried (idempotent by internal_id), so a
    refusal in the lost body cannot be taken for an acceptance."""
    server = FakeEndgrate(faults=[httpx.Response(202, content=b'{"success": tr')])
    async with make(server) as c:
        result = await c.push(batch(item(1)))
        assert c.stats.retries == 1
    assert result.error is None and result.outcomes[0].id == "1000"
    assert server.paths()[:2] == ["/api/push/transfer", "/api/push/transfer"]
