"""The emulator's CDM delete route (docs/push-wire.md) in both profiles, through
httpx.ASGITransport: answers, log, faults, the Sell queue, and the real CDM client."""

from __future__ import annotations

import random
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from replicad.connectors.cdm import CdmClient, CdmSettings
from replicad.connectors.emulator import DEFAULT_TOKEN, create_app
from replicad.connectors.emulator.runtime import PROFILES
from replicad.connectors.push_model import Operation, PushBatch, PushItem, PushOutcome
from replicad.connectors.retry import RetryPolicy

TRACKING = "trk-del"
AUTH = {"Authorization": f"Bearer {DEFAULT_TOKEN}", "X-Tracking-ID": TRACKING}
CONTACTS = 15  # of the 30 seeded records (seed 11): 15 contacts, 8 leads, 7 deals
FAST = RetryPolicy(max_retries=3, base=0.001, cap=0.002)


@pytest.fixture(params=PROFILES)
def profile(request: pytest.FixtureRequest) -> str:
    value: str = request.param
    return value


@pytest.fixture
def transport(profile: str) -> httpx.ASGITransport:
    return httpx.ASGITransport(app=create_app(records=30, seed=11, page_size=10, profile=profile))


@pytest.fixture
async def client(transport: httpx.ASGITransport) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=transport, base_url="http://emulator") as http:
        yield http


async def records(client: httpx.AsyncClient, type_: str) -> dict[str, Any]:
    found: dict[str, Any] = (await client.get("/_emulator/state")).json()["records"][type_]
    return found


async def pushes(client: httpx.AsyncClient) -> list[dict[str, Any]]:
    log: list[dict[str, Any]] = (await client.get("/_emulator/pushes")).json()["requests"]
    return log


async def add_faults(client: httpx.AsyncClient, *rules: dict[str, Any]) -> None:
    response = await client.post("/_emulator/faults", json={"rules": list(rules)})
    assert response.status_code == 200, response.text


async def test_delete_answers_by_profile(client: httpx.AsyncClient, profile: str) -> None:
    """standard: 200 {"data": {"id": …}} echoing X-Tracking-ID; variant: 204, no body,
    no echo. The record is gone from the account and from lookups."""
    assert "4" in await records(client, "lead")
    answer = await client.delete("/api/lead/4", headers=AUTH)
    if profile == "standard":
        assert answer.status_code == 200 and answer.json() == {"data": {"id": 4}}
        assert answer.headers["x-tracking-id"] == TRACKING
    else:
        assert answer.status_code == 204 and answer.content == b""
        assert "x-tracking-id" not in answer.headers
    assert "4" not in await records(client, "lead")
    listed = (await client.get("/api/lead", headers=AUTH)).json()["data"]
    assert 4 not in [r["id"] for r in listed] and len(listed) == 7


async def test_delete_of_a_missing_record_is_404(client: httpx.AsyncClient) -> None:
    """A record that never existed, or is already deleted, answers 404 with a message;
    so does an unknown object."""
    assert (await client.delete("/api/deal/3", headers=AUTH)).status_code in (200, 204)
    again = await client.delete("/api/deal/3", headers=AUTH)
    assert again.status_code == 404
    assert again.json() == {"success": False, "message": "deal '3' does not exist"}
    for path in ("/api/deal/999", "/api/deal/0", "/api/deal/abc", "/api/deal/-1"):
        missing = await client.delete(path, headers=AUTH)
        assert missing.status_code == 404 and missing.json()["message"]
    unknown = await client.delete("/api/invoice/1", headers=AUTH)
    assert unknown.status_code == 404 and unknown.json()["message"] == "Unknown object"


async def test_delete_needs_the_token(client: httpx.AsyncClient) -> None:
    """Without the bearer token: 401, nothing deleted."""
    answer = await client.delete("/api/contact/1", headers={"X-Tracking-ID": "t"})
    assert answer.status_code == 401 and answer.json()["success"] is False
    assert "1" in await records(client, "contact")


async def test_other_cdm_and_endgrate_routes_still_answer(
    client: httpx.AsyncClient, profile: str
) -> None:
    """The delete route shadows nothing: writes, lookups and transfers answer as before;
    other methods on either CDM path are 405."""
    created = await client.post("/api/contact", headers=AUTH, json={"email": "n@x.t"})
    assert created.status_code == (201 if profile == "standard" else 202)
    found = await client.get("/api/contact", headers=AUTH, params={"email": "n@x.t"})
    assert [r["id"] for r in found.json()["data"]] == [CONTACTS + 1]
    transfer = {"session_id": "s", "endgrate_type": "crm-lead", "transfer_data": []}
    assert (await client.post("/api/push/transfer", headers=AUTH, json=transfer)).is_success
    assert (await client.delete("/api/contact", headers=AUTH)).status_code == 405
    assert (await client.post("/api/contact/1", headers=AUTH, json={})).status_code == 405
    assert (await client.get("/api/contact/1", headers=AUTH)).status_code == 405


async def test_delete_is_logged_and_counted(client: httpx.AsyncClient, profile: str) -> None:
    """Every delete is in the push log as cdm_delete (one item; applied only when it
    deleted) and counted in the statistics."""
    await client.delete("/api/contact/2", headers={**AUTH, "X-Sync-Data": "push"})
    await client.delete("/api/contact/2", headers=AUTH)
    log = await pushes(client)
    ok = 200 if profile == "standard" else 204
    assert [(e["endpoint"], e["items"], e["applied"], e["status"]) for e in log] == [
        ("cdm_delete", 1, True, ok),
        ("cdm_delete", 1, False, 404),
    ]
    assert log[0]["tracking_id"] == TRACKING and log[0]["headers"] == {"x-sync-data": "push"}
    assert (await client.get("/_emulator/stats")).json()["requests"]["cdm_delete"] == 2


async def test_status_fault_deletes_nothing(client: httpx.AsyncClient) -> None:
    """A status fault on cdm_delete (or any push endpoint) answers before deleting."""
    await add_faults(
        client,
        {"endpoint": "cdm_delete", "action": "status", "status": 503, "retry_after": 1},
        {"endpoint": "push", "action": "status", "status": 500},
    )
    first = await client.delete("/api/contact/5", headers=AUTH)
    assert first.status_code == 503 and first.headers["retry-after"] == "1"
    assert (await client.delete("/api/contact/5", headers=AUTH)).status_code == 500
    assert "5" in await records(client, "contact")
    assert (await client.delete("/api/contact/5", headers=AUTH)).is_success


async def test_lost_response_deletes_then_answers_502(client: httpx.AsyncClient) -> None:
    """lost_response deletes the record, then answers 502; a second delete is a 404."""
    await add_faults(client, {"endpoint": "cdm_delete", "action": "lost_response"})
    assert (await client.delete("/api/contact/6", headers=AUTH)).status_code == 502
    assert "6" not in await records(client, "contact")
    assert (await client.delete("/api/contact/6", headers=AUTH)).status_code == 404
    log = await pushes(client)
    assert [(e["applied"], e["status"]) for e in log] == [(True, 502), (False, 404)]


async def test_deleted_record_reaches_sell_pull(client: httpx.AsyncClient) -> None:
    """A CDM delete enters the Sell sync queue: the next pull brings a deleted item."""
    sell = {"Authorization": f"Bearer {DEFAULT_TOKEN}", "X-Basecrm-Device-UUID": str(uuid.uuid4())}

    async def pull() -> list[dict[str, Any]]:
        started = await client.post("/v2/sync/start", headers=sell)
        if started.status_code == 204:
            return []
        sid = started.json()["data"]["id"]
        items: list[dict[str, Any]] = []
        while True:
            page = await client.get(f"/v2/sync/{sid}/queues/main", headers=sell)
            if page.status_code == 204:
                break
            items += page.json()["items"]
        keys = [item["meta"]["sync"]["ack_key"] for item in items]
        await client.post("/v2/sync/ack", headers=sell, json={"data": {"ack_keys": keys}})
        return items

    assert len(await pull()) == 30
    assert await pull() == []
    assert (await client.delete("/api/contact/3", headers=AUTH)).is_success
    (deleted,) = await pull()
    assert deleted["data"] == {"id": 3}
    assert deleted["meta"]["type"] == "contact"
    assert deleted["meta"]["sync"] == {
        "event_type": "deleted",
        "ack_key": "Contact-3-0",
        "revision": 0,
    }
    assert await pull() == []


# -- the real client against the emulator -----------------------------------------


def cdm(transport: httpx.ASGITransport) -> CdmClient:
    settings = CdmSettings(base_url="http://emulator", token=DEFAULT_TOKEN, retry=FAST)
    return CdmClient(settings, transport=transport, rng=random.Random(2))


async def push_one(
    transport: httpx.ASGITransport,
    item: PushItem,
    *,
    obj: str = "contact",
    operation: Operation = "mirror",
    key_field: str | None = "email",
) -> PushOutcome:
    async with cdm(transport) as c:
        result = await c.push(
            PushBatch("trk", obj, (item,), operation=operation, key_field=key_field)
        )
    assert result.error is None
    (outcome,) = result.outcomes
    return outcome


def delete(rid: str) -> PushItem:
    return PushItem(1, "int-1", "delete", {}, id=rid)


async def test_client_deletes_then_finds_it_gone(
    transport: httpx.ASGITransport, client: httpx.AsyncClient
) -> None:
    """The client's delete is confirmed in both profiles; deleting it again is not_found."""
    done = await push_one(transport, delete("7"))
    assert (done.id, done.confirmed, done.not_found) == ("7", True, False)
    assert "7" not in await records(client, "contact")
    again = await push_one(transport, delete("7"))
    assert again.not_found and again.rejected is not None
    assert "does not exist at the destination" in again.rejected


async def test_client_delete_with_a_lost_answer_is_confirmed(
    transport: httpx.ASGITransport, client: httpx.AsyncClient
) -> None:
    """The emulator deletes but loses the answer; the resent DELETE meets 404 and the
    client confirms the delete it most likely made."""
    await add_faults(client, {"endpoint": "cdm_delete", "action": "lost_response"})
    done = await push_one(transport, delete("8"))
    assert done.confirmed and done.id == "8"
    assert [e["status"] for e in await pushes(client)] == [502, 404]


async def test_client_matches_by_key_field(
    transport: httpx.ASGITransport, client: httpx.AsyncClient
) -> None:
    """Against the emulator: an update by key updates the seeded record, an insert sync
    leaves it as it is, and an update of an absent key is not_found."""
    lead = (await records(client, "lead"))["2"]
    email = lead["email"]
    assert isinstance(email, str) and email
    updated = await push_one(
        transport,
        PushItem(1, "i1", "update", {"email": email, "title": "Boss"}),
        obj="lead",
        operation="update",
    )
    assert (updated.id, updated.confirmed) == ("2", True)
    assert (await records(client, "lead"))["2"]["title"] == "Boss"
    kept = await push_one(
        transport,
        PushItem(2, "i2", "insert", {"email": email, "title": "Other"}),
        obj="lead",
        operation="insert",
    )
    assert (kept.id, kept.confirmed) == ("2", True)
    assert (await records(client, "lead"))["2"]["title"] == "Boss"
    absent = await push_one(
        transport,
        PushItem(3, "i3", "update", {"email": "nobody@x.t", "title": "X"}),
        obj="lead",
        operation="update",
    )
    assert absent.not_found
