"""CDM push client over httpx.MockTransport: deletes, not_found, and the sync operations
of a diffed source (lookup by key_field before update, upsert and insert; append)."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from replicad.connectors.cdm import CdmClient, CdmSettings
from replicad.connectors.cdm_protocol import CdmProtocolError
from replicad.connectors.push_model import Op, Operation, PushBatch, PushItem, PushOutcome
from replicad.connectors.retry import RetryPolicy

TOKEN = "d" * 48
FAST = RetryPolicy(max_retries=3, base=0.001, cap=0.002)


@dataclass
class FakeCdm:
    """A tiny CDM with deletes: records per object, lookups by any one field.

    ``faults`` are consumed by writes and deletes (not lookups), oldest first:
    ``"lost"`` applies the request and answers 502, an int answers that status without
    applying it, an ``httpx.Response`` is answered as it is. ``lookup_status`` answers
    every lookup with that status instead (a server that cannot look records up).
    """

    records: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    faults: list[Any] = field(default_factory=list)
    requests: list[httpx.Request] = field(default_factory=list)
    lookup_status: int | None = None
    next_id: int = 500

    def sent(self) -> list[tuple[str, str]]:
        """``(method, path)`` of every request, oldest first."""
        return [(r.method, r.url.path) for r in self.requests]

    def bodies(self) -> list[dict[str, Any]]:
        """JSON bodies of the POSTs, oldest first."""
        return [json.loads(r.content) for r in self.requests if r.method == "POST"]

    def __call__(self, req: httpx.Request) -> httpx.Response:
        self.requests.append(req)
        if req.headers.get("Authorization") != f"Bearer {TOKEN}":
            return httpx.Response(401, json={"message": "bad token"})
        obj, _, rid = req.url.path.removeprefix("/api/").partition("/")
        table = self.records.setdefault(obj, [])
        if req.method == "GET":
            if self.lookup_status is not None:
                return httpx.Response(self.lookup_status, json={"message": "no listing"})
            ((key, value),) = req.url.params.multi_items()
            return httpx.Response(
                200, json={"data": [r for r in table if str(r.get(key)) == value]}
            )
        fault = self.faults.pop(0) if self.faults else None
        if isinstance(fault, httpx.Response):
            return fault
        if isinstance(fault, int):
            return httpx.Response(fault, headers={"Retry-After": "0"}, json={"message": "busy"})
        echo = {"X-Tracking-ID": req.headers["X-Tracking-ID"]}
        if req.method == "DELETE":
            rec = next((r for r in table if str(r["id"]) == rid), None)
            if rec is None:
                return httpx.Response(404, headers=echo, json={"message": "no such record"})
            table.remove(rec)
            if fault == "lost":
                return httpx.Response(502)
            return httpx.Response(200, headers=echo, json={"data": {"id": rec["id"]}})
        body = json.loads(req.content)
        if "id" in body:
            rec = next((r for r in table if str(r["id"]) == str(body["id"])), None)
            if rec is None:
                return httpx.Response(404, headers=echo, json={"message": "no such record"})
            rec.update({k: v for k, v in body.items() if k != "id"})
            status = 200
        else:
            self.next_id += 1
            rec = {**body, "id": self.next_id}
            table.append(rec)
            status = 201
        if fault == "lost":
            return httpx.Response(502)
        return httpx.Response(status, headers=echo, json={"data": rec})


def make(server: FakeCdm, **kw: Any) -> CdmClient:
    settings = CdmSettings(base_url="https://cdm.test", token=TOKEN, retry=FAST, **kw)
    return CdmClient(settings, transport=httpx.MockTransport(server), rng=random.Random(1))


def item(entry: int, op: Op, rid: str | None = None, **data: Any) -> PushItem:
    return PushItem(entry=entry, internal_id=f"int-{entry}", op=op, data=data, id=rid)


def gone(entry: int, rid: str | None) -> PushItem:
    """A delete item: the remote id, no data."""
    return PushItem(entry=entry, internal_id=f"int-{entry}", op="delete", data={}, id=rid)


def batch(
    *items: PushItem,
    operation: Operation = "upsert",
    key_field: str | None = "email",
    resend: bool = False,
) -> PushBatch:
    return PushBatch(
        "trk-4", "contact", tuple(items), resend=resend, operation=operation, key_field=key_field
    )


async def push(server: FakeCdm, b: PushBatch, **kw: Any) -> list[PushOutcome]:
    async with make(server, **kw) as c:
        result = await c.push(b)
    assert result.error is None
    return result.outcomes


def contacts(*emails: str, first: int = 7) -> dict[str, list[dict[str, Any]]]:
    return {"contact": [{"id": first + n, "email": e} for n, e in enumerate(emails)]}


# -- delete ------------------------------------------------------------------------


@pytest.mark.parametrize("key_field", [None, "email"])
async def test_delete_sends_delete_with_the_tracking_id(key_field: str | None) -> None:
    """A delete item is one DELETE api/{object}/{id} with X-Tracking-ID (no lookup, no
    body), confirmed with the id it deleted, for captured and diffed syncs alike."""
    server = FakeCdm(records=contacts("a@x.t"))
    async with make(server, push_to_source=True) as c:
        result = await c.push(batch(gone(1, "7"), operation="mirror", key_field=key_field))
        assert (c.stats.delete, c.stats.total) == (1, 1)
    assert server.sent() == [("DELETE", "/api/contact/7")]
    (req,) = server.requests
    assert req.headers["X-Tracking-ID"] == "trk-4.1" and req.content == b""
    assert req.headers["X-Sync-Data"] == "push"
    assert [(o.entry, o.id, o.confirmed, o.not_found) for o in result.outcomes] == [
        (1, "7", True, False)
    ]
    assert server.records["contact"] == []


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(200, json={"data": {"id": 7}}),
        httpx.Response(200, json={"data": {"id": 7}, "tracking_id": "trk-4.1"}),
        httpx.Response(204),
        httpx.Response(202, text="Accepted"),
        httpx.Response(200, content=b"{"),
    ],
)
async def test_any_2xx_to_a_delete_confirms_it(answer: httpx.Response) -> None:
    """200 with or without a body, 202, 204: the record is gone, confirmed with its id."""
    server = FakeCdm(faults=[answer])
    outcomes = await push(server, batch(gone(1, "7")))
    assert [(o.id, o.confirmed) for o in outcomes] == [("7", True)]
    assert len(server.requests) == 1


@pytest.mark.parametrize("status", [404, 410])
async def test_delete_of_a_missing_record_is_not_found(status: int) -> None:
    """404/410 to a delete: final, not_found, with the reason; the batch goes on."""
    server = FakeCdm(
        records=contacts("b@x.t", first=8),
        faults=[httpx.Response(status, json={"message": "gone"})],
    )
    first, second = await push(server, batch(gone(1, "7"), gone(2, "8")))
    assert first.not_found and not first.confirmed and first.id is None
    assert first.rejected == f"contact 7 does not exist at the destination (HTTP {status}: gone)"
    assert second.confirmed and not second.not_found and second.id == "8"


@pytest.mark.parametrize("status", [400, 409, 422])
async def test_other_4xx_to_a_delete_rejects_it(status: int) -> None:
    """Any other refusing 4xx rejects the delete (not not_found)."""
    server = FakeCdm(faults=[httpx.Response(status, json={"message": "locked"})])
    (outcome,) = await push(server, batch(gone(1, "7")))
    assert outcome.rejected is not None and "locked" in outcome.rejected
    assert not outcome.not_found


async def test_delete_after_a_500_is_sent_again() -> None:
    """Deletes are idempotent: a 500 (maybe applied) is followed by the same DELETE."""
    server = FakeCdm(records=contacts("a@x.t"), faults=[500])
    async with make(server) as c:
        result = await c.push(batch(gone(1, "7")))
        assert (c.stats.delete, c.stats.retries, c.stats.lookup) == (1, 1, 0)
    assert server.sent() == [("DELETE", "/api/contact/7")] * 2
    assert [(o.id, o.confirmed) for o in result.outcomes] == [("7", True)]


async def test_delete_whose_answer_was_lost_then_404_is_confirmed() -> None:
    """A delete applied but answered 502, then 404 on the retry, was most likely ours:
    confirmed, not not_found."""
    server = FakeCdm(records=contacts("a@x.t"), faults=["lost"])
    (outcome,) = await push(server, batch(gone(1, "7")))
    assert len(server.requests) == 2
    assert outcome.confirmed and outcome.id == "7" and not outcome.not_found


async def test_resent_delete_answered_404_is_confirmed() -> None:
    """A resent batch's delete may have arrived the first time: 404 confirms it."""
    (outcome,) = await push(FakeCdm(), batch(gone(1, "7"), resend=True))
    assert outcome.confirmed and outcome.id == "7"


async def test_delete_id_is_one_quoted_path_segment() -> None:
    """An id holding '/', '?' or spaces cannot reach another path."""
    server = FakeCdm(faults=[httpx.Response(204)])
    await push(server, batch(gone(1, "../a/b c?x")))
    (req,) = server.requests
    assert req.url.raw_path == b"/api/contact/..%2Fa%2Fb%20c%3Fx"


async def test_delete_without_a_remote_id_sends_nothing() -> None:
    """A delete of a record that never got an id at the destination: not_found, nothing sent."""
    server = FakeCdm()
    (outcome,) = await push(server, batch(gone(1, None)))
    assert server.requests == [] and outcome.not_found and outcome.rejected


async def test_delete_echoing_another_tracking_id_stops_the_batch() -> None:
    """An answer naming another request is not ours: a protocol error, in flight."""
    answer = httpx.Response(204, headers={"X-Tracking-ID": "other.1"})
    server = FakeCdm(faults=[answer])
    async with make(server) as c:
        result = await c.push(batch(gone(1, "7")))
    assert isinstance(result.error, CdmProtocolError) and result.outcomes == []


# -- update by key (an update item without an id) ----------------------------------


async def test_update_by_key_one_match_posts_with_that_id() -> None:
    """An update without an id is looked up by key_field; one match is updated by id."""
    server = FakeCdm(records=contacts("a@x.t", "b@x.t"))
    async with make(server) as c:
        result = await c.push(batch(item(1, "update", email="b@x.t", name="B")))
        assert (c.stats.lookup, c.stats.write) == (1, 1)
    assert server.sent() == [("GET", "/api/contact"), ("POST", "/api/contact")]
    lookup = server.requests[0]
    assert dict(lookup.url.params) == {"email": "b@x.t"}
    assert lookup.headers["X-Tracking-ID"] == "trk-4.1"
    assert server.bodies() == [{"email": "b@x.t", "name": "B", "id": "8"}]
    assert [(o.id, o.confirmed) for o in result.outcomes] == [("8", True)]


async def test_update_by_key_without_a_match_is_not_found() -> None:
    """No record with the key: not_found with the reason, nothing written."""
    server = FakeCdm(records=contacts("a@x.t"))
    (outcome,) = await push(server, batch(item(1, "update", email="z@x.t", name="Z")))
    assert server.bodies() == []
    assert outcome.not_found
    assert outcome.rejected == "no contact with email = 'z@x.t' at the destination"


async def test_update_by_key_with_several_matches_is_rejected() -> None:
    """Several records share the key: rejected (ambiguous), not not_found, no write."""
    server = FakeCdm(records=contacts("a@x.t", "a@x.t"))
    (outcome,) = await push(server, batch(item(1, "update", email="a@x.t")))
    assert server.bodies() == [] and not outcome.not_found
    assert outcome.rejected is not None and "2 contact records" in outcome.rejected


@pytest.mark.parametrize("status", [404, 405])
async def test_update_by_key_on_a_server_without_lookup_is_rejected(status: int) -> None:
    """A server that cannot look records up cannot match the update: rejected, clearly."""
    server = FakeCdm(records=contacts("a@x.t"), lookup_status=status)
    (outcome,) = await push(server, batch(item(1, "update", email="a@x.t")))
    assert server.bodies() == [] and not outcome.not_found
    assert outcome.rejected == (
        f"cannot match the record at the destination: it cannot look records up by email "
        f"(HTTP {status})"
    )


async def test_update_by_key_without_a_key_value_is_rejected_unsent() -> None:
    """An item lacking a usable key value is rejected before any request."""
    server = FakeCdm()
    (outcome,) = await push(server, batch(item(1, "update", email=None, name="N")))
    assert server.requests == []
    assert outcome.rejected is not None and "'email'" in outcome.rejected


async def test_update_by_key_answered_204_keeps_the_matched_id() -> None:
    """An update accepted without the record (204) is confirmed with the id found."""
    server = FakeCdm(records=contacts("a@x.t"), faults=[httpx.Response(204)])
    (outcome,) = await push(server, batch(item(1, "update", email="a@x.t", name="A")))
    assert (outcome.id, outcome.confirmed) == ("7", True)


async def test_update_by_key_deleted_meanwhile_is_not_found() -> None:
    """The matched record gone before the update (404): not_found."""
    server = FakeCdm(records=contacts("a@x.t"), faults=[httpx.Response(404)])
    (outcome,) = await push(server, batch(item(1, "update", email="a@x.t")))
    assert outcome.not_found and outcome.rejected is not None


# -- update with an id ------------------------------------------------------------


@pytest.mark.parametrize("key_field", [None, "email"])
async def test_update_with_an_unknown_id_is_not_found(key_field: str | None) -> None:
    """An update naming an id the destination lacks (404) is not_found, for captured
    and diffed syncs alike; it is posted directly, never looked up."""
    server = FakeCdm()
    (outcome,) = await push(
        server, batch(item(1, "update", "99", email="a@x.t"), key_field=key_field)
    )
    assert server.sent() == [("POST", "/api/contact")]
    assert outcome.not_found
    assert (
        outcome.rejected
        == "contact 99 does not exist at the destination (HTTP 404: no such record)"
    )


# -- insert: upsert / mirror ------------------------------------------------------


@pytest.mark.parametrize("operation", ["upsert", "mirror"])
async def test_upsert_insert_of_an_existing_key_updates_it(operation: Operation) -> None:
    """An upsert (or mirror) insert whose key exists updates that record with the
    item's data, by id; nothing is created."""
    server = FakeCdm(records=contacts("a@x.t"))
    outcomes = await push(
        server, batch(item(1, "insert", email="a@x.t", name="A"), operation=operation)
    )
    assert server.sent() == [("GET", "/api/contact"), ("POST", "/api/contact")]
    assert server.bodies() == [{"email": "a@x.t", "name": "A", "id": "7"}]
    assert [(o.id, o.confirmed) for o in outcomes] == [("7", True)]
    assert server.records["contact"] == [{"id": 7, "email": "a@x.t", "name": "A"}]


@pytest.mark.parametrize("resend", [False, True])
async def test_upsert_insert_of_a_new_key_creates_it(resend: bool) -> None:
    """No record with the key: created; the lookup also serves a resent batch's check."""
    server = FakeCdm(records=contacts("a@x.t"))
    outcomes = await push(server, batch(item(1, "insert", email="n@x.t"), resend=resend))
    assert server.sent() == [("GET", "/api/contact"), ("POST", "/api/contact")]
    assert server.bodies() == [{"email": "n@x.t"}]
    assert [o.id for o in outcomes] == ["501"]


async def test_upsert_insert_with_several_matches_is_rejected() -> None:
    """Several records with the key: rejected, nothing written."""
    server = FakeCdm(records=contacts("a@x.t", "a@x.t"))
    (outcome,) = await push(server, batch(item(1, "insert", email="a@x.t")))
    assert server.bodies() == [] and outcome.rejected is not None and not outcome.not_found


async def test_upsert_insert_whose_match_vanished_is_created() -> None:
    """The matched record deleted before the update (404): an upsert creates it."""
    server = FakeCdm(records=contacts("a@x.t"), faults=[httpx.Response(404)])
    (outcome,) = await push(server, batch(item(1, "insert", email="a@x.t")))
    assert [b.get("id") for b in server.bodies()] == ["7", None]
    assert outcome.confirmed and outcome.id == "501"


async def test_upsert_insert_on_a_server_without_lookup_is_rejected() -> None:
    """An upsert that cannot look its key up is rejected, never created blindly."""
    server = FakeCdm(lookup_status=405)
    (outcome,) = await push(server, batch(item(1, "insert", email="a@x.t")))
    assert server.bodies() == [] and outcome.rejected is not None


async def test_lost_create_is_found_by_key_field() -> None:
    """Without a natural_key setting, a create whose answer was lost is looked up by the
    sync's key field and confirmed without a second post."""
    server = FakeCdm(faults=["lost"])
    (outcome,) = await push(server, batch(item(1, "insert", email="n@x.t")))
    assert [r.method for r in server.requests] == ["GET", "POST", "GET"]
    assert all(
        dict(r.url.params) == {"email": "n@x.t"} for r in server.requests if r.method == "GET"
    )
    assert outcome.id == "501" and len(server.records["contact"]) == 1


async def test_the_natural_key_setting_wins_for_recovery_lookups() -> None:
    """natural_key, when configured, finds a lost create; key_field still matches first."""
    server = FakeCdm(faults=["lost"])
    (outcome,) = await push(
        server, batch(item(1, "insert", email="n@x.t", code=42)), natural_key="code"
    )
    lookups = [dict(r.url.params) for r in server.requests if r.method == "GET"]
    assert lookups == [{"email": "n@x.t"}, {"code": "42"}]
    assert outcome.id == "501" and len(server.records["contact"]) == 1


# -- insert: insert / append ------------------------------------------------------


async def test_insert_never_changes_an_existing_record() -> None:
    """An insert sync's item whose key exists is confirmed with that id, unwritten."""
    server = FakeCdm(records=contacts("a@x.t"))
    (outcome,) = await push(
        server, batch(item(1, "insert", email="a@x.t", name="X"), operation="insert")
    )
    assert server.sent() == [("GET", "/api/contact")]
    assert (outcome.id, outcome.confirmed) == ("7", True)
    assert server.records["contact"] == [{"id": 7, "email": "a@x.t"}]


async def test_insert_of_a_new_key_creates_it() -> None:
    server = FakeCdm(records=contacts("a@x.t"))
    (outcome,) = await push(server, batch(item(1, "insert", email="n@x.t"), operation="insert"))
    assert server.bodies() == [{"email": "n@x.t"}] and outcome.id == "501"


async def test_insert_with_several_matches_is_rejected() -> None:
    server = FakeCdm(records=contacts("a@x.t", "a@x.t"))
    (outcome,) = await push(server, batch(item(1, "insert", email="a@x.t"), operation="insert"))
    assert server.bodies() == [] and outcome.rejected is not None


async def test_append_always_creates_without_a_lookup() -> None:
    """append creates even when a record with the key exists; nothing is looked up."""
    server = FakeCdm(records=contacts("a@x.t"))
    (outcome,) = await push(server, batch(item(1, "insert", email="a@x.t"), operation="append"))
    assert server.sent() == [("POST", "/api/contact")]
    assert outcome.id == "501" and len(server.records["contact"]) == 2


async def test_update_sync_never_creates() -> None:
    """An update sync's insert item is matched like an update: absent, it is not_found."""
    server = FakeCdm()
    (outcome,) = await push(server, batch(item(1, "insert", email="a@x.t"), operation="update"))
    assert server.bodies() == [] and outcome.not_found


async def test_captured_table_batches_never_look_up() -> None:
    """Without key_field (a captured table) inserts are posted as creates, whatever the
    operation, exactly as before."""
    server = FakeCdm(records=contacts("a@x.t"))
    b = batch(item(1, "insert", email="a@x.t"), operation="insert", key_field=None)
    (outcome,) = await push(server, b)
    assert server.sent() == [("POST", "/api/contact")] and outcome.id == "501"
