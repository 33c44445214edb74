"""Endgrate push client and the sync operations: insert and append never upsert; update,
mirror and deletes never reach a transfer."""

from __future__ import annotations

import json
import random
from typing import Any

import httpx
import pytest

from replicad.connectors.endgrate import EndgrateClient, EndgrateSettings
from replicad.connectors.errors import ConnectorError
from replicad.connectors.push_model import Operation, PushBatch, PushItem
from replicad.connectors.retry import RetryPolicy

TOKEN = "f" * 48
FAST = RetryPolicy(max_retries=3, base=0.001, cap=0.002)


class Server:
    """Accepts every transfer and returns an id per item."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.items = 0

    def __call__(self, req: httpx.Request) -> httpx.Response:
        self.requests.append(req)
        if req.url.path == "/api/push/transfer":
            self.items = len(json.loads(req.content)["transfer_data"])
            return httpx.Response(200, json={"success": True, "transfer_id": "t-1"})
        rows = [{"id": str(100 + n), "data": {}} for n in range(self.items)]
        return httpx.Response(200, json={"success": True, "transfer_data": rows})


def make(server: Server, **kw: Any) -> EndgrateClient:
    settings = EndgrateSettings(
        base_url="https://endgrate.test", token=TOKEN, session_id="s-1", retry=FAST, **kw
    )
    return EndgrateClient(settings, transport=httpx.MockTransport(server), rng=random.Random(1))


def batch(*items: PushItem, operation: Operation) -> PushBatch:
    return PushBatch("trk-2", "crm-contact", items, operation=operation, key_field="email")


INSERT = PushItem(1, "int-1", "insert", {"email": "a@x.t"})


@pytest.mark.parametrize(
    ("operation", "setting", "sent"),
    [
        ("insert", False, True),
        ("append", False, True),
        ("upsert", False, False),
        ("upsert", True, True),
    ],
)
async def test_insert_and_append_send_disable_upsert(
    operation: Operation, setting: bool, sent: bool
) -> None:
    """insert and append create records, never merge into a matching one: the transfer
    carries disable_upsert: true whatever the setting."""
    server = Server()
    async with make(server, disable_upsert=setting) as c:
        result = await c.push(batch(INSERT, operation=operation))
    assert result.error is None and [o.id for o in result.outcomes] == ["100"]
    assert json.loads(server.requests[0].content)["disable_upsert"] is sent


@pytest.mark.parametrize(
    ("b", "message"),
    [
        (batch(INSERT, operation="update"), "'update' operation"),
        (batch(INSERT, operation="mirror"), "'mirror' operation"),
        (
            batch(INSERT, PushItem(2, "int-2", "delete", {}, id="9"), operation="upsert"),
            "cannot delete",
        ),
    ],
)
async def test_what_endgrate_cannot_do_fails_the_push_unsent(b: PushBatch, message: str) -> None:
    """An update or mirror sync, or a delete, reaching Endgrate is a bug: the push fails
    with a ConnectorError, nothing is sent and the entries stay in flight."""
    server = Server()
    async with make(server) as c:
        result = await c.push(b)
    assert server.requests == [] and result.outcomes == []
    assert type(result.error) is ConnectorError and message in str(result.error)
