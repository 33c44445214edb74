"""HTTP tests of the emulator app through httpx.ASGITransport: Sell routes, faults, control."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from replicad.connectors.emulator import DEFAULT_TOKEN, create_app
from replicad.connectors.emulator.faults import MALFORMED_ID_BASE
from replicad.connectors.emulator.responses import TruncatedBody

RECORDS = 30
PAGE_SIZE = 10


@pytest.fixture
def app() -> Starlette:
    return create_app(records=RECORDS, seed=11, page_size=PAGE_SIZE)


@pytest.fixture
async def client(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://emulator") as http:
        yield http


@pytest.fixture
def device() -> str:
    return str(uuid.uuid4())


def sell_headers(device: str, token: str = DEFAULT_TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "X-Basecrm-Device-UUID": device}


async def start(client: httpx.AsyncClient, device: str) -> httpx.Response:
    return await client.post("/v2/sync/start", headers=sell_headers(device))


async def fetch(client: httpx.AsyncClient, device: str, session_id: str) -> httpx.Response:
    return await client.get(f"/v2/sync/{session_id}/queues/main", headers=sell_headers(device))


async def ack(client: httpx.AsyncClient, device: str, keys: list[str]) -> httpx.Response:
    body = {"data": {"ack_keys": keys}}
    return await client.post("/v2/sync/ack", headers=sell_headers(device), json=body)


async def session_id(client: httpx.AsyncClient, device: str) -> str:
    response = await start(client, device)
    assert response.status_code == 201
    sid: str = response.json()["data"]["id"]
    return sid


async def add_faults(client: httpx.AsyncClient, *rules: dict[str, Any]) -> None:
    response = await client.post("/_emulator/faults", json={"rules": list(rules)})
    assert response.status_code == 200, response.text


def assert_envelope(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    body: dict[str, Any] = response.json()
    assert body["errors"][0]["error"]["code"] == code
    assert body["errors"][0]["meta"] == {"type": "error"}
    assert body["meta"]["type"] == "errors"
    assert body["meta"]["http_status"].startswith(f"{status} ")
    uuid.UUID(body["meta"]["logref"])
    return body


# -- Sell routes ---------------------------------------------------------------


async def test_missing_or_wrong_token_is_401_envelope(client: httpx.AsyncClient) -> None:
    """Requests without the right bearer token get a 401 envelope that never echoes a token."""
    wrong = "x" * 64
    attempts = [
        client.post("/v2/sync/start", headers={"X-Basecrm-Device-UUID": "d"}),
        client.post("/v2/sync/start", headers=sell_headers("d", wrong)),
        client.get("/v2/sync/abc/queues/main", headers=sell_headers("d", wrong)),
        client.post("/v2/sync/ack", headers=sell_headers("d", wrong), json={}),
        client.post("/v2/sync/start", headers={"Authorization": DEFAULT_TOKEN}),
    ]
    for attempt in attempts:
        response = await attempt
        body = assert_envelope(response, 401, "unauthorized")
        assert body["meta"]["http_status"] == "401 Unauthorized"
        assert wrong not in response.text and DEFAULT_TOKEN not in response.text


async def test_token_never_echoed_in_any_answer(client: httpx.AsyncClient, device: str) -> None:
    """No Sell or control answer contains the access token."""
    sid = await session_id(client, device)
    answers = [
        await fetch(client, device, sid),
        await fetch(client, device, "no-such-session"),
        await ack(client, device, ["Contact-1-1"]),
        await client.post("/v2/sync/start", headers={"Authorization": f"Bearer {DEFAULT_TOKEN}"}),
        await client.get("/_emulator/stats"),
        await client.get("/_emulator/state"),
        await client.get("/_emulator/faults"),
    ]
    for answer in answers:
        assert DEFAULT_TOKEN not in answer.text
        assert DEFAULT_TOKEN not in str(answer.headers)


async def test_users_self_checks_token_only(client: httpx.AsyncClient) -> None:
    """/v2/users/self answers the token owner without a device header, and 401 for bad tokens."""
    good = await client.get("/v2/users/self", headers={"Authorization": f"Bearer {DEFAULT_TOKEN}"})
    assert good.status_code == 200
    assert good.json()["meta"] == {"type": "user"}
    assert good.json()["data"]["id"] == 1
    bad = await client.get("/v2/users/self", headers={"Authorization": "Bearer " + "y" * 64})
    assert_envelope(bad, 401, "unauthorized")
    stats = (await client.get("/_emulator/stats")).json()
    assert stats["requests"] == {"start": 0, "fetch": 0, "ack": 0}


async def test_missing_device_header_is_400(client: httpx.AsyncClient) -> None:
    """Authenticated requests without X-Basecrm-Device-UUID get a 400 missing_device_uuid."""
    headers = {"Authorization": f"Bearer {DEFAULT_TOKEN}"}
    for response in (
        await client.post("/v2/sync/start", headers=headers),
        await client.get("/v2/sync/x/queues/main", headers=headers),
        await client.post("/v2/sync/ack", headers={**headers, "X-Basecrm-Device-UUID": " "}),
    ):
        assert_envelope(response, 400, "missing_device_uuid")


async def test_unknown_session_is_404(client: httpx.AsyncClient, device: str) -> None:
    """Fetching a session that does not exist, or belongs to another device, is a 404."""
    assert_envelope(await fetch(client, device, "nope"), 404, "not_found")
    sid = await session_id(client, device)
    assert_envelope(await fetch(client, str(uuid.uuid4()), sid), 404, "not_found")


async def test_unknown_routes_answer_envelope(client: httpx.AsyncClient, device: str) -> None:
    """Unknown paths and methods answer 404/405 in the Sell error envelope."""
    assert_envelope(await client.get("/v2/sync/x/queues/other"), 404, "not_found")
    response = await client.get("/v2/sync/start", headers=sell_headers(device))
    assert response.status_code == 405
    assert response.json()["meta"]["http_status"] == "405 Method Not Allowed"


async def test_start_body_shape(client: httpx.AsyncClient, device: str) -> None:
    """Start answers 201 with the sync_session object and its main queue."""
    response = await start(client, device)
    assert response.status_code == 201
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    sid = body["data"]["id"]
    assert body == {
        "data": {
            "id": sid,
            "queues": [
                {
                    "data": {"name": "main", "pages": 3, "total_count": RECORDS},
                    "meta": {
                        "type": "sync_queue",
                        "links": {"self": f"http://emulator/v2/sync/{sid}/queues/main"},
                    },
                }
            ],
        },
        "meta": {"type": "sync_session"},
    }


async def test_full_flow_then_204(client: httpx.AsyncClient, device: str) -> None:
    """Pages of page_size items, a 204 at the end, 202 acks, then start answers 204."""
    sid = await session_id(client, device)
    keys: list[str] = []
    counts_left = []
    while (response := await fetch(client, device, sid)).status_code == 200:
        body = response.json()
        assert body["meta"]["type"] == "collection"
        assert body["meta"]["count"] == len(body["items"]) == PAGE_SIZE
        assert body["meta"]["failed_objects"] == []
        counts_left.append(body["meta"]["count_left"])
        keys += [item["meta"]["sync"]["ack_key"] for item in body["items"]]
    assert response.status_code == 204
    assert counts_left == [20, 10, 0]
    assert (await fetch(client, device, sid)).status_code == 204
    answer = await ack(client, device, keys)
    assert answer.status_code == 202
    assert answer.json() == {"data": {}}
    assert (await start(client, device)).status_code == 204


async def test_malformed_ack_body_is_422(client: httpx.AsyncClient, device: str) -> None:
    """An ack body that is not {"data": {"ack_keys": [str]}} is rejected with 422."""
    headers = sell_headers(device)
    for content in (b"not json", b"[]", b'{"data": {}}', b'{"data": {"ack_keys": [1]}}'):
        response = await client.post("/v2/sync/ack", headers=headers, content=content)
        assert_envelope(response, 422, "invalid_argument")


async def test_session_limit_is_429_with_retry_after(
    client: httpx.AsyncClient, device: str
) -> None:
    """The 101st concurrently active session is refused with 429 and Retry-After."""
    for _ in range(100):
        assert (await start(client, device)).status_code == 201
    refused = await start(client, device)
    assert_envelope(refused, 429, "too_many_sessions")
    assert 1 <= int(refused.headers["retry-after"]) <= 300


async def test_session_ttl_expires_idle_sessions(device: str) -> None:
    """A session idle for longer than session_ttl is gone (404) and frees its slot."""
    app = create_app(records=5, session_ttl=0.05)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://emulator") as client:
        sid = await session_id(client, device)
        await asyncio.sleep(0.1)
        assert_envelope(await fetch(client, device, sid), 404, "not_found")


# -- faults --------------------------------------------------------------------


async def test_status_fault_has_no_effect(client: httpx.AsyncClient, device: str) -> None:
    """A status fault answers the error envelope with Retry-After and changes nothing."""
    await add_faults(
        client, {"endpoint": "start", "action": "status", "status": 503, "retry_after": 2}
    )
    failed = await start(client, device)
    assert_envelope(failed, 503, "service_unavailable")
    assert failed.headers["retry-after"] == "2"
    stats = (await client.get("/_emulator/stats")).json()
    assert stats["sessions_started"] == 0 and stats["devices"] == {}
    sid = await session_id(client, device)
    first = (await fetch(client, device, sid)).json()
    await add_faults(client, {"endpoint": "any", "action": "status", "status": 500, "times": 2})
    assert_envelope(await fetch(client, device, sid), 500, "internal_server_error")
    keys = [item["meta"]["sync"]["ack_key"] for item in first["items"]]
    assert_envelope(await ack(client, device, keys), 500, "internal_server_error")
    second = (await fetch(client, device, sid)).json()
    assert second["meta"]["count_left"] == first["meta"]["count_left"] - PAGE_SIZE
    stats = (await client.get("/_emulator/stats")).json()
    assert stats["devices"][device]["queued"] == RECORDS


async def test_skip_and_times(client: httpx.AsyncClient, device: str) -> None:
    """skip lets K matching requests through; times bounds how often a rule fires (0 = forever)."""
    await add_faults(
        client, {"endpoint": "start", "action": "status", "status": 502, "skip": 1, "times": 2}
    )
    codes = [(await start(client, device)).status_code for _ in range(5)]
    assert codes == [201, 502, 502, 201, 201]
    await client.delete("/_emulator/faults")
    await add_faults(client, {"endpoint": "ack", "action": "status", "status": 500, "times": 0})
    assert {(await ack(client, device, [])).status_code for _ in range(4)} == {500}
    rules = (await client.get("/_emulator/faults")).json()["rules"]
    assert rules[0]["fired"] == 4
    assert (await client.delete("/_emulator/faults")).json() == {"rules": []}
    assert (await ack(client, device, [])).status_code == 202


async def test_delay_fault_answers_normally(client: httpx.AsyncClient, device: str) -> None:
    """A delay fault sleeps, then answers as usual."""
    await add_faults(client, {"endpoint": "start", "action": "delay", "seconds": 0.2})
    began = time.monotonic()
    assert (await start(client, device)).status_code == 201
    assert time.monotonic() - began >= 0.2


async def test_empty_page_does_not_end_session(client: httpx.AsyncClient, device: str) -> None:
    """empty_page answers 200 with no items, consumes nothing, and the session goes on."""
    sid = await session_id(client, device)
    await add_faults(client, {"endpoint": "fetch", "action": "empty_page"})
    empty = await fetch(client, device, sid)
    assert empty.status_code == 200
    assert empty.json() == {
        "items": [],
        "meta": {"type": "collection", "count": 0, "count_left": RECORDS, "failed_objects": []},
    }
    served = 0
    while (response := await fetch(client, device, sid)).status_code == 200:
        served += response.json()["meta"]["count"]
    assert served == RECORDS


async def test_failed_objects_fault(client: httpx.AsyncClient, device: str) -> None:
    """failed_objects leaves items out of a page, lists them, and a later session delivers them."""
    sid = await session_id(client, device)
    await add_faults(client, {"endpoint": "fetch", "action": "failed_objects", "count": 3})
    page = (await fetch(client, device, sid)).json()
    assert page["meta"]["count"] == len(page["items"]) == PAGE_SIZE - 3
    failed = page["meta"]["failed_objects"]
    assert len(failed) == 3 and all(set(f) == {"type", "id"} for f in failed)
    keys = [item["meta"]["sync"]["ack_key"] for item in page["items"]]
    while (response := await fetch(client, device, sid)).status_code == 200:
        keys += [item["meta"]["sync"]["ack_key"] for item in response.json()["items"]]
    await ack(client, device, keys)
    later = await session_id(client, device)
    again = (await fetch(client, device, later)).json()
    assert [{"type": i["meta"]["type"], "id": i["data"]["id"]} for i in again["items"]] == failed


async def test_malformed_fault_items(client: httpx.AsyncClient, device: str) -> None:
    """malformed adds hostile items whose acknowledgement is harmless."""
    sid = await session_id(client, device)
    await add_faults(client, {"endpoint": "fetch", "action": "malformed"})
    page = (await fetch(client, device, sid)).json()
    bad = page["items"][PAGE_SIZE:]
    assert page["meta"]["count"] == PAGE_SIZE + 4
    assert [item["meta"]["type"] for item in bad] == [
        "contact; DROP TABLE contact",
        "sqlite_master",
        "contact",
        "contact",
    ]
    assert isinstance(bad[2]["data"], list)
    assert "ack_key" not in bad[3]["meta"]["sync"]
    bogus = [item["meta"]["sync"]["ack_key"] for item in bad[:3]]
    assert all(int(key.split("-")[1]) > MALFORMED_ID_BASE for key in bogus)
    assert (await ack(client, device, bogus)).status_code == 202
    stats = (await client.get("/_emulator/stats")).json()
    assert stats["ack_keys_applied"] == 0 and stats["devices"][device]["queued"] == RECORDS


async def test_truncate_consumes_page(client: httpx.AsyncClient, device: str) -> None:
    """truncate raises a protocol error in the client but the page counts as served."""
    sid = await session_id(client, device)
    await add_faults(client, {"endpoint": "fetch", "action": "truncate"})
    with pytest.raises(TruncatedBody):
        await fetch(client, device, sid)
    after = (await fetch(client, device, sid)).json()
    assert after["meta"]["count_left"] == RECORDS - 2 * PAGE_SIZE


async def test_page_faults_are_not_spent_on_204(client: httpx.AsyncClient, device: str) -> None:
    """Page-shaping faults wait for a fetch that would serve a page."""
    sid = await session_id(client, device)
    while (await fetch(client, device, sid)).status_code == 200:
        pass
    await add_faults(client, {"endpoint": "fetch", "action": "empty_page"})
    assert (await fetch(client, device, sid)).status_code == 204
    rules = (await client.get("/_emulator/faults")).json()["rules"]
    assert rules[0]["fired"] == 0


@pytest.mark.parametrize(
    "rule",
    [
        {"endpoint": "start", "action": "truncate"},
        {"endpoint": "fetch", "action": "explode"},
        {"endpoint": "nowhere", "action": "status"},
        {"endpoint": "any", "action": "status", "status": 200},
        {"endpoint": "any", "action": "delay", "seconds": -1},
        {"endpoint": "any", "action": "status", "times": -1},
        {"endpoint": "any", "action": "status", "colour": "red"},
    ],
)
async def test_invalid_fault_rules_are_422(client: httpx.AsyncClient, rule: dict[str, Any]) -> None:
    """Invalid fault rules are rejected and none of the batch is added."""
    response = await client.post("/_emulator/faults", json={"rules": [rule]})
    assert response.status_code == 422
    assert "error" in response.json()
    assert (await client.get("/_emulator/faults")).json() == {"rules": []}


# -- control endpoints ---------------------------------------------------------


async def test_state_endpoint_shape(client: httpx.AsyncClient) -> None:
    """/_emulator/state lists records and revisions by type and string id, plus deleted ids."""
    await client.post(
        "/_emulator/mutate", json={"ops": [{"op": "delete", "type": "deal", "id": 2}]}
    )
    response = await client.get("/_emulator/state")
    assert response.headers["content-type"] == "application/json"
    state = json.loads(response.content)
    assert set(state) == {"records", "revisions", "deleted"}
    assert len(state["records"]["contact"]) == 15
    assert "2" not in state["records"]["deal"]
    assert state["deleted"] == {"contact": [], "lead": [], "deal": [2]}
    assert state["records"]["lead"]["1"]["id"] == 1
    assert set(state["revisions"]["lead"]) == set(state["records"]["lead"])


async def test_mutate_endpoint(client: httpx.AsyncClient, device: str) -> None:
    """/_emulator/mutate applies ops and random changes, reporting each result."""
    response = await client.post(
        "/_emulator/mutate",
        json={
            "ops": [
                {"op": "create", "type": "lead", "data": {"first_name": "Ada"}},
                {"op": "update", "type": "contact", "id": 1, "data": {"vip_since": "2024"}},
            ],
            "random": {"count": 5, "seed": 1},
        },
    )
    assert response.status_code == 200
    results = response.json()["results"]
    assert len(results) == 7
    assert results[0]["op"] == "create" and results[0]["id"] == 9
    assert set(results[0]) == {"op", "type", "id", "revision"}
    state = (await client.get("/_emulator/state")).json()
    assert state["records"]["contact"]["1"]["vip_since"] == "2024"
    assert state["revisions"]["contact"]["1"] == results[1]["revision"]


async def test_mutate_errors(client: httpx.AsyncClient) -> None:
    """Bad mutation bodies get 422, missing records 404 with the results applied before."""
    assert (await client.post("/_emulator/mutate", content=b"{")).status_code == 422
    assert (await client.post("/_emulator/mutate", json={"ops": {}})).status_code == 422
    response = await client.post(
        "/_emulator/mutate",
        json={
            "ops": [
                {"op": "delete", "type": "contact", "id": 1},
                {"op": "delete", "type": "contact", "id": 1},
            ]
        },
    )
    assert response.status_code == 404
    assert response.json()["results"] == [
        {"op": "delete", "type": "contact", "id": 1, "revision": 0}
    ]


async def test_stats_and_reset(client: httpx.AsyncClient, device: str) -> None:
    """/_emulator/stats counts requests, acked keys, sessions and queued entries; reset zeroes."""
    sid = await session_id(client, device)
    page = (await fetch(client, device, sid)).json()
    await ack(client, device, [item["meta"]["sync"]["ack_key"] for item in page["items"]])
    stats = (await client.get("/_emulator/stats")).json()
    assert stats["requests"] == {"start": 1, "fetch": 1, "ack": 1}
    assert stats["acked_keys"] == PAGE_SIZE
    assert stats["sessions_started"] == 1
    assert stats["devices"] == {device: {"queued": RECORDS - PAGE_SIZE, "active_sessions": 1}}
    reset = (await client.post("/_emulator/stats/reset")).json()
    assert reset["requests"] == {"start": 0, "fetch": 0, "ack": 0}
    assert reset["acked_keys"] == reset["sessions_started"] == 0
    assert reset["devices"][device]["queued"] == RECORDS - PAGE_SIZE


async def test_latency_delays_every_api_request_and_counts_them_all(device: str) -> None:
    """With --latency every API request waits before its answer (a lower bound only:
    the answers are the usual ones)."""
    app = create_app(records=RECORDS, seed=11, page_size=PAGE_SIZE, latency=0.15)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://emulator") as http:
        t0 = time.monotonic()
        sid = await session_id(http, device)
        page = await fetch(http, device, sid)
        assert time.monotonic() - t0 >= 0.3
        assert page.status_code == 200 and page.json()["items"]
        stats = await http.get("/_emulator/stats")
        assert stats.json()["requests"]["fetch"] == 1
