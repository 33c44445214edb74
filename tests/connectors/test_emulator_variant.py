"""The emulator's variant profile: the other legal answers of docs/push-wire.md."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from replicad.connectors.emulator import DEFAULT_TOKEN, create_app

AUTH = {"Authorization": f"Bearer {DEFAULT_TOKEN}", "X-Tracking-ID": "trk-v"}
SELL = {"Authorization": f"Bearer {DEFAULT_TOKEN}", "X-Basecrm-Device-UUID": "dev-v"}


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(records=20, seed=3, page_size=10, profile="variant")
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://emulator") as http:
        yield http


def transfer(*emails: str) -> dict[str, object]:
    return {
        "session_id": "s",
        "endgrate_type": "crm-contact",
        "synchronous": True,
        "transfer_data": [
            {"internal_id": f"v-{n}", "data": {"first_name": "V", "email": e}}
            for n, e in enumerate(emails)
        ],
    }


async def test_transfers_answer_201_and_202_without_success(client: httpx.AsyncClient) -> None:
    """Transfers are answered 201 and 202 in turn, with a transfer_id and no "success"."""
    first = await client.post("/api/push/transfer", headers=AUTH, json=transfer("a@x"))
    second = await client.post("/api/push/transfer", headers=AUTH, json=transfer("b@x"))
    assert [first.status_code, second.status_code] == [201, 202]
    assert "success" not in first.json() and first.json()["transfer_id"]
    assert "x-tracking-id" not in first.headers


async def test_no_errors_list_and_numeric_next(client: httpx.AsyncClient) -> None:
    """api/errors answers 404; api/push/data pages with meta.next as an offset, no count."""
    tid = (
        await client.post("/api/push/transfer", headers=AUTH, json=transfer("a@x", "b@x", "c@x"))
    ).json()["transfer_id"]
    errors = await client.get("/api/errors", headers=AUTH, params={"transfer_id": tid})
    assert errors.status_code == 404
    page = await client.get(
        "/api/push/data", headers=AUTH, params={"transfer_id": tid, "limit": 2, "offset": 0}
    )
    assert page.json()["meta"] == {"next": 2} and len(page.json()["transfer_data"]) == 2
    last = await client.get(
        "/api/push/data", headers=AUTH, params={"transfer_id": tid, "limit": 2, "offset": 2}
    )
    assert last.json()["meta"] == {"next": None}


async def test_cdm_writes_answer_202_and_204_without_body_or_echo(
    client: httpx.AsyncClient,
) -> None:
    """A CDM create answers 202, an update 204, both without body or tracking echo."""
    created = await client.post("/api/contact", headers=AUTH, json={"email": "c@x"})
    assert created.status_code == 202 and created.content == b""
    assert "x-tracking-id" not in created.headers
    found = await client.get("/api/contact", headers=AUTH, params={"email": "c@x"})
    (record,) = found.json()["data"]
    updated = await client.post(
        "/api/contact", headers=AUTH, json={"id": record["id"], "email": "d@x"}
    )
    assert updated.status_code == 204 and updated.content == b""


async def test_acks_answer_plain_text(client: httpx.AsyncClient) -> None:
    """Sell acks are answered 200 with a body that is not JSON."""
    ack = await client.post("/v2/sync/ack", headers=SELL, json={"data": {"ack_keys": []}})
    assert ack.status_code == 200 and ack.content == b"OK"
