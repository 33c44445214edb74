"""Push destination routes of the emulator (docs/push-wire.md) through httpx.ASGITransport."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from replicad.connectors.emulator import DEFAULT_TOKEN, create_app
from replicad.connectors.emulator.push_match import UpsertMatcher
from replicad.connectors.emulator.push_state import WireError, page_bounds, parse_transfer
from replicad.connectors.emulator.records import RecordStore

RECORDS = 30  # 15 contacts, 8 leads, 7 deals
CONTACTS = 15
SEED = 11
TRACKING = "batch-7f3a"
AUTH = {"Authorization": f"Bearer {DEFAULT_TOKEN}", "X-Tracking-ID": TRACKING}


@pytest.fixture
def app() -> Starlette:
    return create_app(records=RECORDS, seed=SEED, page_size=10)


@pytest.fixture
async def client(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://emulator") as http:
        yield http


def body(
    items: list[dict[str, Any]],
    *,
    endgrate_type: str = "crm-contact",
    session_id: str = "session-1",
    synchronous: bool = True,
    **flags: bool,
) -> dict[str, Any]:
    return {
        "session_id": session_id,
        "endgrate_type": endgrate_type,
        "synchronous": synchronous,
        "transfer_data": items,
        **flags,
    }


async def post_transfer(
    client: httpx.AsyncClient, items: list[dict[str, Any]], **options: Any
) -> str:
    response = await client.post("/api/push/transfer", headers=AUTH, json=body(items, **options))
    assert response.status_code == 200, response.text
    assert response.json()["success"] is True
    transfer_id: str = response.json()["transfer_id"]
    uuid.UUID(transfer_id)
    return transfer_id


async def get_data(client: httpx.AsyncClient, transfer_id: str, **params: Any) -> httpx.Response:
    query = {"transfer_id": transfer_id, **params}
    return await client.get("/api/push/data", headers=AUTH, params=query)


async def results(client: httpx.AsyncClient, transfer_id: str) -> list[dict[str, Any]]:
    response = await get_data(client, transfer_id)
    assert response.status_code == 200, response.text
    data: list[dict[str, Any]] = response.json()["transfer_data"]
    return data


async def errors(client: httpx.AsyncClient, transfer_id: str) -> list[dict[str, Any]]:
    response = await client.get("/api/errors", headers=AUTH, params={"transfer_id": transfer_id})
    assert response.status_code == 200
    found: list[dict[str, Any]] = response.json()["errors"]
    return found


async def push(
    client: httpx.AsyncClient, items: list[dict[str, Any]], **options: Any
) -> list[dict[str, Any]]:
    """A synchronous transfer's results."""
    return await results(client, await post_transfer(client, items, **options))


async def state(client: httpx.AsyncClient) -> dict[str, Any]:
    snapshot: dict[str, Any] = (await client.get("/_emulator/state")).json()
    return snapshot


async def add_faults(client: httpx.AsyncClient, *rules: dict[str, Any]) -> None:
    response = await client.post("/_emulator/faults", json={"rules": list(rules)})
    assert response.status_code == 200, response.text


def person(snapshot: dict[str, Any]) -> dict[str, Any]:
    """A seeded person contact with an email and a phone."""
    for record in snapshot["records"]["contact"].values():
        if not record["is_organization"] and record["email"] and record["phone"]:
            return dict(record)
    raise AssertionError("the seeded account has no suitable contact")


def organization(snapshot: dict[str, Any]) -> dict[str, Any]:
    for record in snapshot["records"]["contact"].values():
        if record["is_organization"]:
            return dict(record)
    raise AssertionError("the seeded account has no organization")


# -- Endgrate transfers ----------------------------------------------------------


async def test_transfer_creates_record_in_the_account(client: httpx.AsyncClient) -> None:
    """A synchronous transfer creates a contact with the next id and returns it as stored."""
    [result] = await push(
        client, [{"internal_id": "c1", "data": {"first_name": "Bob", "email": "bob@example.com"}}]
    )
    assert result["id"] == str(CONTACTS + 1)
    assert result["data"]["id"] == CONTACTS + 1
    assert result["data"]["email"] == "bob@example.com"
    assert {"created_at", "updated_at"} <= set(result["data"])
    snapshot = await state(client)
    assert snapshot["records"]["contact"][str(CONTACTS + 1)] == result["data"]


async def test_repeat_internal_id_maps_to_one_record(client: httpx.AsyncClient) -> None:
    """Posting an internal_id again updates its record (merging fields) instead of creating."""
    first = await push(client, [{"internal_id": "c1", "data": {"first_name": "Solo", "x": 1}}])
    second = await push(client, [{"internal_id": "c1", "data": {"nickname": "S"}}])
    assert first[0]["id"] == second[0]["id"]
    assert second[0]["data"]["first_name"] == "Solo" and second[0]["data"]["nickname"] == "S"
    snapshot = await state(client)
    assert len(snapshot["records"]["contact"]) == CONTACTS + 1
    revisions = snapshot["revisions"]["contact"]
    assert revisions[first[0]["id"]] > max(
        rev for id_, rev in revisions.items() if id_ != first[0]["id"]
    )


async def test_internal_id_is_scoped_by_session_and_type(client: httpx.AsyncClient) -> None:
    """The same internal_id in another session or endgrate_type is another record."""
    item = [{"internal_id": "x", "data": {"first_name": "Solo"}}]
    first = (await push(client, item))[0]["id"]
    other_session = (await push(client, item, session_id="session-2"))[0]["id"]
    lead = (await push(client, item, endgrate_type="crm-lead"))[0]
    assert first != other_session
    assert lead["data"]["id"] == 9  # a lead, next to the 8 seeded ones
    snapshot = await state(client)
    assert len(snapshot["records"]["contact"]) == CONTACTS + 2
    assert len(snapshot["records"]["lead"]) == 9


async def test_upsert_matches_existing_contact_by_email(client: httpx.AsyncClient) -> None:
    """A new internal_id whose email belongs to a contact updates that contact."""
    existing = person(await state(client))
    [result] = await push(
        client, [{"internal_id": "new", "data": {"email": existing["email"], "title": "CFO"}}]
    )
    assert result["id"] == str(existing["id"])
    assert result["data"] == {
        **existing,
        "title": "CFO",
        "updated_at": result["data"]["updated_at"],
    }
    assert len((await state(client))["records"]["contact"]) == CONTACTS


async def test_upsert_falls_back_to_phone_then_full_name(client: httpx.AsyncClient) -> None:
    """Without an email match, phone and then first+last name find the contact."""
    existing = person(await state(client))
    by_phone = await push(
        client,
        [{"internal_id": "p", "data": {"email": "nobody@x.test", "phone": existing["phone"]}}],
    )
    name = {"first_name": existing["first_name"], "last_name": existing["last_name"]}
    namesakes = [
        record["id"]
        for record in (await state(client))["records"]["contact"].values()
        if not record["is_organization"]
        and (record["first_name"], record["last_name"]) == tuple(name.values())
    ]
    by_name = await push(client, [{"internal_id": "n", "data": {"phone": "+0", **name}}])
    assert by_phone[0]["id"] == str(existing["id"])
    assert by_name[0]["id"] == str(min(namesakes))  # the lowest id wins


async def test_disable_upsert_creates_new_record(client: httpx.AsyncClient) -> None:
    """disable_upsert skips matching: a known email still creates a second contact."""
    existing = person(await state(client))
    item = [{"internal_id": "new", "data": {"email": existing["email"]}}]
    [result] = await push(client, item, disable_upsert=True)
    assert result["id"] == str(CONTACTS + 1)
    again = await push(client, item, disable_upsert=True)
    assert again[0]["id"] == result["id"]


async def test_company_is_an_organization_matched_by_name(client: httpx.AsyncClient) -> None:
    """crm-company writes organizations, upserting by name; crm-contact never matches them."""
    org = organization(await state(client))
    [matched] = await push(
        client, [{"internal_id": "co", "data": {"name": org["name"]}}], endgrate_type="crm-company"
    )
    assert matched["id"] == str(org["id"])
    [fresh] = await push(
        client, [{"internal_id": "co2", "data": {"name": "Brand New"}}], endgrate_type="crm-company"
    )
    assert fresh["data"]["is_organization"] is True
    [person_push] = await push(client, [{"internal_id": "p", "data": {"email": org["email"]}}])
    assert person_push["id"] not in {str(org["id"]), fresh["id"]}


async def test_associations_are_written_idempotently(client: httpx.AsyncClient) -> None:
    """Associated records are written too, keyed by their own internal_id and type."""
    acme = {"crm-company": [{"internal_id": "Company1", "data": {"name": "Acme Nova"}}]}
    items = [
        {"internal_id": "Contact1", "data": {"first_name": "Bob"}, "associations": acme},
        {"internal_id": "Contact2", "data": {"first_name": "Dave"}, "associations": acme},
    ]
    first = await push(client, items)
    await push(client, items)
    snapshot = await state(client)
    contacts = snapshot["records"]["contact"]
    assert len(contacts) == CONTACTS + 3
    companies = [r for r in contacts.values() if r.get("name") == "Acme Nova"]
    assert len(companies) == 1 and companies[0]["is_organization"] is True
    assert [r["data"]["first_name"] for r in first] == ["Bob", "Dave"]


async def test_item_with_id_updates_that_record(client: httpx.AsyncClient) -> None:
    """An item naming an id updates that record; an unknown id fails as not_found."""
    transfer_id = await post_transfer(
        client,
        [
            {"internal_id": "a", "id": "3", "data": {"value": 10}},
            {"internal_id": "b", "id": "999", "data": {"value": 11}},
        ],
        endgrate_type="crm-deal",
    )
    done = await results(client, transfer_id)
    assert done[0]["id"] == "3" and done[0]["data"]["value"] == 10
    assert done[0]["data"]["name"]  # fields not pushed are kept
    assert done[1] == {"id": None, "data": {}}
    [error] = await errors(client, transfer_id)
    assert error["index"] == 1 and error["error_type"] == "not_found"
    assert len((await state(client))["records"]["deal"]) == 7


async def test_sample_data_writes_nothing(client: httpx.AsyncClient) -> None:
    """sample_data completes with null ids and leaves the account untouched."""
    before = await state(client)
    done = await push(
        client, [{"internal_id": "s", "data": {"email": "s@x.test"}}], sample_data=True
    )
    assert done == [{"id": None, "data": {}}]
    assert await state(client) == before


async def test_async_transfer_needs_one_poll(client: httpx.AsyncClient) -> None:
    """An asynchronous transfer answers 400 "not yet completed" to the first poll, then 200."""
    transfer_id = await post_transfer(
        client, [{"internal_id": "a", "data": {"first_name": "Al"}}], synchronous=False
    )
    pending = await get_data(client, transfer_id)
    assert pending.status_code == 400
    assert pending.json() == {"success": False, "message": "Transfer has not yet completed"}
    done = await get_data(client, transfer_id)
    assert done.status_code == 200
    assert done.json()["transfer_data"][0]["data"]["first_name"] == "Al"


async def test_push_data_pagination(client: httpx.AsyncClient) -> None:
    """limit/offset page the results in push order; next links the following page."""
    items = [{"internal_id": f"i{n}", "data": {"first_name": f"N{n}"}} for n in range(5)]
    transfer_id = await post_transfer(client, items)
    seen: list[str] = []
    response = await get_data(client, transfer_id, limit=2)
    pages = 0
    while True:
        page = response.json()
        assert page["meta"]["count"] == 5
        seen += [item["data"]["first_name"] for item in page["transfer_data"]]
        pages += 1
        if page["meta"]["next"] is None:
            break
        assert (pages == 1) == (page["meta"]["previous"] is None)
        response = await client.get(page["meta"]["next"], headers=AUTH)
    assert seen == [f"N{n}" for n in range(5)]
    assert pages == 3
    default = (await get_data(client, transfer_id)).json()
    assert len(default["transfer_data"]) == 5 and default["meta"]["next"] is None
    assert (await get_data(client, transfer_id, offset=9)).json()["transfer_data"] == []
    for bad in ({"limit": 0}, {"limit": "x"}, {"offset": -1}):
        assert (await get_data(client, transfer_id, **bad)).status_code == 400


async def test_validation_failure_listed_in_errors(client: httpx.AsyncClient) -> None:
    """Invalid items get a null id and an errors entry; the other items are written."""
    transfer_id = await post_transfer(
        client,
        [
            {"internal_id": "ok", "data": {"email": "ok@x.test"}},
            {"internal_id": "bad", "data": {"email": "no-at-sign"}},
        ],
    )
    done = await results(client, transfer_id)
    assert done[0]["id"] is not None and done[1] == {"id": None, "data": {}}
    assert await errors(client, transfer_id) == [
        {
            "internal_id": "bad",
            "index": 1,
            "error_type": "validation",
            "error_resolve_text": "email must contain @",
        }
    ]
    deal = await post_transfer(
        client, [{"internal_id": "d", "data": {"value": -5}}], endgrate_type="crm-deal"
    )
    assert (await errors(client, deal))[0]["error_resolve_text"] == "value must not be negative"


async def test_failing_association_fails_its_item(client: httpx.AsyncClient) -> None:
    """An item and its associations succeed or fail together."""
    bad_company = {"crm-company": [{"internal_id": "co", "data": {"name": "B", "email": "b"}}]}
    transfer_id = await post_transfer(
        client,
        [{"internal_id": "c", "data": {"first_name": "C"}, "associations": bad_company}],
    )
    assert await results(client, transfer_id) == [{"id": None, "data": {}}]
    [error] = await errors(client, transfer_id)
    assert error["internal_id"] == "co" and error["index"] == 0
    assert len((await state(client))["records"]["contact"]) == CONTACTS


@pytest.mark.parametrize(
    "payload",
    [
        [],
        {"endgrate_type": "crm-contact", "transfer_data": []},
        {"session_id": "s", "endgrate_type": "crm-invoice", "transfer_data": []},
        {"session_id": "s", "endgrate_type": "crm-contact", "transfer_data": {}},
        {"session_id": "s", "endgrate_type": "crm-contact", "transfer_data": [{"data": {}}]},
        {"session_id": "s", "endgrate_type": "crm-contact", "transfer_data": [], "sample_data": 1},
        {
            "session_id": "s",
            "endgrate_type": "crm-contact",
            "transfer_data": [{"internal_id": "a", "associations": {"crm-x": []}}],
        },
    ],
)
async def test_malformed_transfer_is_400(client: httpx.AsyncClient, payload: Any) -> None:
    """A body not of the documented shape answers 400 and writes nothing."""
    response = await client.post("/api/push/transfer", headers=AUTH, json=payload)
    assert response.status_code == 400
    assert response.json()["success"] is False and response.json()["message"]
    assert (await client.post("/api/push/transfer", headers=AUTH, content=b"{")).status_code == 400


async def test_unknown_or_missing_transfer(client: httpx.AsyncClient) -> None:
    """Polling an unknown transfer is 404, omitting transfer_id 400."""
    assert (await get_data(client, "nope")).status_code == 404
    assert (await client.get("/api/errors", headers=AUTH)).status_code == 400
    missing = await client.get("/api/errors", headers=AUTH, params={"transfer_id": "nope"})
    assert missing.status_code == 404


async def test_pushed_record_reaches_sell_pull(client: httpx.AsyncClient) -> None:
    """Pushed creates and updates come back through the Sell Sync API with new revisions."""
    device = str(uuid.uuid4())
    sell = {"Authorization": f"Bearer {DEFAULT_TOKEN}", "X-Basecrm-Device-UUID": device}

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

    initial = await pull()
    top = max(item["meta"]["sync"]["revision"] for item in initial)
    assert await pull() == []
    [created] = await push(client, [{"internal_id": "n", "data": {"first_name": "New"}}])
    [updated] = await push(client, [{"internal_id": "u", "id": "2", "data": {"nickname": "U"}}])
    items = await pull()
    by_id = {(item["meta"]["type"], item["data"]["id"]): item for item in items}
    assert set(by_id) == {("contact", int(created["id"])), ("contact", 2)}
    assert by_id["contact", 2]["meta"]["sync"]["event_type"] == "updated"
    assert by_id["contact", 2]["data"] == updated["data"]
    assert by_id["contact", int(created["id"])]["meta"]["sync"]["event_type"] == "created"
    assert all(item["meta"]["sync"]["revision"] > top for item in items)


async def test_upsert_sees_records_changed_by_mutate(client: httpx.AsyncClient) -> None:
    """Upsert matching follows emails changed and records deleted through /_emulator/mutate."""
    existing = person(await state(client))
    await push(client, [{"internal_id": "warm", "data": {"first_name": "Warm"}}])  # builds index
    ops = [{"op": "update", "type": "contact", "id": existing["id"], "data": {"email": "m@x.t"}}]
    await client.post("/_emulator/mutate", json={"ops": ops})
    [by_new] = await push(client, [{"internal_id": "a", "data": {"email": "m@x.t"}}])
    [by_old] = await push(client, [{"internal_id": "b", "data": {"email": existing["email"]}}])
    assert by_new["id"] == str(existing["id"])
    assert by_old["id"] != str(existing["id"])
    await client.post(
        "/_emulator/mutate",
        json={"ops": [{"op": "delete", "type": "contact", "id": existing["id"]}]},
    )
    [after_delete] = await push(client, [{"internal_id": "c", "data": {"email": "m@x.t"}}])
    assert after_delete["id"] != str(existing["id"])


# -- CDM ---------------------------------------------------------------------------


async def test_cdm_create_twice_makes_two_records(client: httpx.AsyncClient) -> None:
    """CDM has no idempotency key: the same create posted twice creates two records."""
    fields = {"first_name": "Twice", "email": "twice@x.test"}
    first = await client.post("/api/contact", headers=AUTH, json=fields)
    second = await client.post("/api/contact", headers=AUTH, json=fields)
    assert first.status_code == second.status_code == 201
    assert first.json()["data"]["id"] != second.json()["data"]["id"]
    assert first.json()["data"]["email"] == "twice@x.test"
    assert len((await state(client))["records"]["contact"]) == CONTACTS + 2


async def test_cdm_update_merges_fields(client: httpx.AsyncClient) -> None:
    """A body with id updates that record (200), keeping the fields it does not send."""
    before = (await state(client))["records"]["lead"]["4"]
    response = await client.post("/api/lead", headers=AUTH, json={"id": 4, "title": "Boss"})
    assert response.status_code == 200
    data = response.json()["data"]
    assert data == {**before, "title": "Boss", "updated_at": data["updated_at"]}
    as_text = await client.post("/api/lead", headers=AUTH, json={"id": "4", "status": "New"})
    assert as_text.status_code == 200 and as_text.json()["data"]["title"] == "Boss"


async def test_cdm_unknown_object_or_id_is_404(client: httpx.AsyncClient) -> None:
    """Unknown objects and updates of unknown ids answer 404."""
    assert (await client.post("/api/invoice", headers=AUTH, json={})).status_code == 404
    assert (await client.get("/api/invoice", headers=AUTH)).status_code == 404
    missing = await client.post("/api/deal", headers=AUTH, json={"id": 999, "value": 1})
    assert missing.status_code == 404 and missing.json()["success"] is False
    assert (await client.post("/api/deal", headers=AUTH, json=[1])).status_code == 400


async def test_cdm_validation_is_422(client: httpx.AsyncClient) -> None:
    """Invalid fields answer 422 with per-field errors and write nothing."""
    before = await state(client)
    response = await client.post("/api/contact", headers=AUTH, json={"email": "nope"})
    assert response.status_code == 422
    assert response.json() == {
        "message": "email must contain @",
        "errors": [{"field": "email", "message": "email must contain @"}],
    }
    deal = await client.post("/api/deal", headers=AUTH, json={"id": 1, "value": -1})
    assert deal.status_code == 422 and deal.json()["errors"][0]["field"] == "value"
    assert await state(client) == before


async def test_cdm_list_by_field(client: httpx.AsyncClient) -> None:
    """GET /api/{object}?field=value lists the records whose field equals value exactly."""
    for _ in range(2):
        await client.post("/api/lead", headers=AUTH, json={"email": "dup@x.test", "score": 5})
    found = await client.get("/api/lead", headers=AUTH, params={"email": "dup@x.test"})
    assert found.status_code == 200
    assert [r["email"] for r in found.json()["data"]] == ["dup@x.test"] * 2
    both = await client.get("/api/lead", headers=AUTH, params={"email": "dup@x.test", "score": 5})
    assert len(both.json()["data"]) == 2
    none = await client.get("/api/lead", headers=AUTH, params={"email": "DUP@x.test"})
    assert none.json() == {"data": []}


async def test_cdm_sync_id_only_with_push_header(client: httpx.AsyncClient) -> None:
    """X-Sync-ID comes back only when X-Sync-Data: push was sent."""
    plain = await client.post("/api/contact", headers=AUTH, json={"name": "P"})
    assert "x-sync-id" not in plain.headers
    pushed = await client.post(
        "/api/contact",
        headers={**AUTH, "X-Sync-Data": "push", "X-Sync-Sources": "quickbooks"},
        json={"name": "Q"},
    )
    uuid.UUID(pushed.headers["x-sync-id"])


async def test_tracking_id_is_echoed(client: httpx.AsyncClient) -> None:
    """Every push answer, errors included, echoes the request's X-Tracking-ID."""
    transfer_id = await post_transfer(client, [])
    answers = [
        await client.post("/api/contact", headers=AUTH, json={"name": "T"}),
        await client.post("/api/contact", headers=AUTH, json={"email": "bad"}),
        await client.get("/api/contact", headers=AUTH, params={"name": "T"}),
        await get_data(client, transfer_id),
        await client.get("/api/errors", headers=AUTH, params={"transfer_id": transfer_id}),
        await client.post("/api/push/transfer", headers=AUTH, json={}),
    ]
    for answer in answers:
        assert answer.headers["x-tracking-id"] == TRACKING


# -- authentication, statistics, log ---------------------------------------------


async def test_push_routes_require_token(client: httpx.AsyncClient) -> None:
    """Every push route answers 401 {"success": false} without the right bearer token."""
    before = await state(client)
    wrong = {"Authorization": "Bearer " + "z" * 64}
    for headers in ({}, wrong):
        for answer in (
            await client.post("/api/push/transfer", headers=headers, json=body([])),
            await client.get("/api/push/data", headers=headers, params={"transfer_id": "x"}),
            await client.get("/api/errors", headers=headers, params={"transfer_id": "x"}),
            await client.post("/api/contact", headers=headers, json={"name": "N"}),
            await client.get("/api/contact", headers=headers),
        ):
            assert answer.status_code == 401
            assert answer.json()["success"] is False and answer.json()["message"]
            assert DEFAULT_TOKEN not in answer.text
    assert await state(client) == before


async def test_stats_count_push_requests(client: httpx.AsyncClient) -> None:
    """Push requests are counted per endpoint next to the unchanged Sell counters."""
    transfer_id = await post_transfer(client, [])
    await get_data(client, transfer_id)
    await client.post("/api/deal", headers=AUTH, json={"value": 1})
    await client.get("/api/deal", headers={})
    requests = (await client.get("/_emulator/stats")).json()["requests"]
    assert requests == {
        "start": 0,
        "fetch": 0,
        "ack": 0,
        "transfer": 1,
        "push_data": 1,
        "cdm_write": 1,
        "cdm_list": 1,
    }
    reset = (await client.post("/_emulator/stats/reset")).json()
    assert reset["requests"] == {"start": 0, "fetch": 0, "ack": 0}


async def test_pushes_log_and_reset(client: httpx.AsyncClient) -> None:
    """/_emulator/pushes lists every push request oldest first; reset empties it."""
    await post_transfer(client, [{"internal_id": "a"}, {"internal_id": "b"}])
    await client.post(
        "/api/contact",
        headers={**AUTH, "X-Sync-Data": "push", "X-Sync-Sources": "crm,accounting"},
        json={"email": "bad"},
    )
    await client.get("/api/contact", params={"email": "x"})
    log = (await client.get("/_emulator/pushes")).json()["requests"]
    assert [
        {key: entry[key] for key in ("endpoint", "tracking_id", "headers", "items", "applied")}
        for entry in log
    ] == [
        {
            "endpoint": "transfer",
            "tracking_id": TRACKING,
            "headers": {},
            "items": 2,
            "applied": True,
        },
        {
            "endpoint": "cdm_write",
            "tracking_id": TRACKING,
            "headers": {"x-sync-data": "push", "x-sync-sources": "crm,accounting"},
            "items": 1,
            "applied": False,
        },
        {"endpoint": "cdm_list", "tracking_id": None, "headers": {}, "items": 0, "applied": False},
    ]
    assert [entry["status"] for entry in log] == [200, 422, 401]
    assert (await client.post("/_emulator/pushes/reset")).json() == {"requests": []}
    assert (await client.get("/_emulator/pushes")).json() == {"requests": []}


# -- faults ------------------------------------------------------------------------


async def test_lost_response_applies_then_502(client: httpx.AsyncClient) -> None:
    """lost_response carries the write out, answers 502, and a resend stays idempotent."""
    await add_faults(client, {"endpoint": "transfer", "action": "lost_response"})
    item = [{"internal_id": "lost", "data": {"first_name": "Lost"}}]
    lost = await client.post("/api/push/transfer", headers=AUTH, json=body(item))
    assert lost.status_code == 502 and lost.json()["success"] is False
    assert len((await state(client))["records"]["contact"]) == CONTACTS + 1
    [resent] = await push(client, item)
    assert resent["id"] == str(CONTACTS + 1)
    assert len((await state(client))["records"]["contact"]) == CONTACTS + 1
    log = (await client.get("/_emulator/pushes")).json()["requests"]
    assert (log[0]["applied"], log[0]["status"]) == (True, 502)


async def test_cdm_lost_response_is_found_by_list(client: httpx.AsyncClient) -> None:
    """A CDM create whose answer was lost exists, and listing by its natural key finds it."""
    await add_faults(client, {"endpoint": "push", "action": "lost_response"})
    lost = await client.post("/api/contact", headers=AUTH, json={"email": "lost@x.test"})
    assert lost.status_code == 502
    found = await client.get("/api/contact", headers=AUTH, params={"email": "lost@x.test"})
    assert [r["id"] for r in found.json()["data"]] == [CONTACTS + 1]


async def test_status_fault_changes_nothing(client: httpx.AsyncClient) -> None:
    """A 503 status fault answers with Retry-After before anything is written."""
    before = await state(client)
    await add_faults(
        client,
        {"endpoint": "push", "action": "status", "status": 503, "retry_after": 1, "times": 2},
    )
    refused = await client.post(
        "/api/push/transfer",
        headers=AUTH,
        json=body([{"internal_id": "a", "data": {"first_name": "A"}}]),
    )
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert refused.json()["success"] is False
    assert refused.headers["x-tracking-id"] == TRACKING
    cdm = await client.post("/api/contact", headers=AUTH, json={"name": "A"})
    assert cdm.status_code == 503
    assert await state(client) == before
    log = (await client.get("/_emulator/pushes")).json()["requests"]
    assert [entry["applied"] for entry in log] == [False, False]
    assert (await client.post("/api/contact", headers=AUTH, json={"name": "A"})).status_code == 201


async def test_async_poll_status_fault_does_not_complete(client: httpx.AsyncClient) -> None:
    """A faulted poll does not count as the poll that completes an asynchronous transfer."""
    transfer_id = await post_transfer(client, [], synchronous=False)
    await add_faults(client, {"endpoint": "push_data", "action": "status", "status": 500})
    assert (await get_data(client, transfer_id)).status_code == 500
    assert (await get_data(client, transfer_id)).status_code == 400
    assert (await get_data(client, transfer_id)).status_code == 200


async def test_reject_fault_fails_matching_items(client: httpx.AsyncClient) -> None:
    """reject fails the items whose field matches, with the rule's message."""
    await add_faults(
        client,
        {
            "endpoint": "push",
            "action": "reject",
            "match": {"field": "email", "value": "x@y"},
            "message": "blocked address",
            "times": 2,
        },
    )
    transfer_id = await post_transfer(
        client,
        [
            {"internal_id": "a", "data": {"email": "ok@y"}},
            {"internal_id": "b", "data": {"email": "x@y"}},
        ],
    )
    done = await results(client, transfer_id)
    assert done[0]["id"] is not None and done[1]["id"] is None
    assert await errors(client, transfer_id) == [
        {
            "internal_id": "b",
            "index": 1,
            "error_type": "validation",
            "error_resolve_text": "blocked address",
        }
    ]
    cdm = await client.post("/api/lead", headers=AUTH, json={"email": "x@y"})
    assert cdm.status_code == 422
    assert cdm.json()["errors"] == [{"field": "email", "message": "blocked address"}]
    # times: 2 is spent, so the same record now goes through.
    assert (await client.post("/api/lead", headers=AUTH, json={"email": "x@y"})).status_code == 201


async def test_delay_fault_on_push(client: httpx.AsyncClient) -> None:
    """A delay fault sleeps, then answers as usual."""
    await add_faults(client, {"endpoint": "cdm_list", "action": "delay", "seconds": 0.2})
    began = time.monotonic()
    assert (await client.get("/api/deal", headers=AUTH)).status_code == 200
    assert time.monotonic() - began >= 0.2


async def test_sell_and_push_wildcards_are_separate(client: httpx.AsyncClient) -> None:
    """An "any" rule only hits Sell routes and a "push" rule only push routes."""
    await add_faults(
        client,
        {"endpoint": "any", "action": "status", "status": 500, "times": 0},
    )
    assert (await client.get("/api/deal", headers=AUTH)).status_code == 200
    await client.delete("/_emulator/faults")
    await add_faults(client, {"endpoint": "push", "action": "status", "status": 500, "times": 0})
    sell = {"Authorization": f"Bearer {DEFAULT_TOKEN}", "X-Basecrm-Device-UUID": "d"}
    assert (await client.post("/v2/sync/start", headers=sell)).status_code == 201


@pytest.mark.parametrize(
    "rule",
    [
        {"endpoint": "start", "action": "lost_response"},
        {"endpoint": "any", "action": "reject", "match": {"field": "a", "value": 1}},
        {"endpoint": "cdm_list", "action": "reject", "match": {"field": "a", "value": 1}},
        {"endpoint": "transfer", "action": "reject"},
        {"endpoint": "transfer", "action": "reject", "match": {"field": "", "value": 1}},
        {"endpoint": "transfer", "action": "reject", "match": {"field": "a"}},
        {"endpoint": "push", "action": "truncate"},
        {"endpoint": "push", "action": "lost_response", "seconds": 1},
    ],
)
async def test_invalid_push_fault_rules_are_422(
    client: httpx.AsyncClient, rule: dict[str, Any]
) -> None:
    """Push fault rules with a wrong endpoint or parameters are refused."""
    response = await client.post("/_emulator/faults", json={"rules": [rule]})
    assert response.status_code == 422
    assert (await client.get("/_emulator/faults")).json() == {"rules": []}


async def test_reject_rule_reported(client: httpx.AsyncClient) -> None:
    """GET /_emulator/faults shows a reject rule's match and message."""
    rule = {"endpoint": "cdm_write", "action": "reject", "match": {"field": "n", "value": 1}}
    await add_faults(client, rule)
    [shown] = (await client.get("/_emulator/faults")).json()["rules"]
    assert shown["match"] == {"field": "n", "value": 1} and shown["fired"] == 0
    # true is not 1: JSON values of different kinds never match.
    assert (await client.post("/api/deal", headers=AUTH, json={"n": True})).status_code == 201
    assert (await client.post("/api/deal", headers=AUTH, json={"n": 1})).status_code == 422


# -- pure logic --------------------------------------------------------------------


def test_page_bounds() -> None:
    """limit defaults to 100 and is capped at 1000; offset defaults to 0."""
    assert page_bounds(None, None) == (100, 0)
    assert page_bounds("5000", "3") == (1000, 3)
    for limit, offset in (("0", None), ("-1", None), (None, "x"), ("1.5", None)):
        with pytest.raises(WireError):
            page_bounds(limit, offset)


def test_parse_transfer_defaults() -> None:
    """Flags default to false and ids are kept as text."""
    parsed = parse_transfer(
        {
            "session_id": "s",
            "endgrate_type": "crm-deal",
            "transfer_data": [{"internal_id": "a", "id": 7}],
        }
    )
    assert not (parsed.synchronous or parsed.disable_upsert or parsed.sample_data)
    assert parsed.items[0].record.id == "7" and parsed.items[0].record.type == "deal"


def test_matcher_prefers_lowest_id() -> None:
    """Several contacts sharing a value: the lowest id wins; leads and deals never match."""
    store = RecordStore(0, seed=1)
    for _ in range(3):
        store.create("contact", {"email": "same@x", "is_organization": False})
    store.create("contact", {"name": "Org", "is_organization": True})
    matcher = UpsertMatcher(store)
    assert matcher.match("crm-contact", {"email": "same@x"}) == 1
    store.delete("contact", 1)
    assert matcher.match("crm-contact", {"email": "same@x"}) == 2
    assert matcher.match("crm-company", {"name": "Org"}) == 4
    assert matcher.match("crm-contact", {"name": "Org"}) is None
    assert matcher.match("crm-lead", {"email": "same@x"}) is None
