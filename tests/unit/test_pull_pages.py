"""The pull loop's handling of odd pages (httpx.MockTransport for the wire, a real
replica): the body of each page is decoded on the writer thread, so a malformed body,
an empty page and a run of either are the loop's to handle."""

from __future__ import annotations

import json
import random
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest

from replicad.connectors.errors import ProtocolError
from replicad.connectors.retry import RetryPolicy
from replicad.connectors.sell import SellClient, SellSettings
from replicad.daemon import pull
from replicad.daemon.config import Connection, Sync
from replicad.store import Replica

CONN = Connection("crm", "sell", "https://sell.test", max_retries=2, ack_batch=1000)
SYNC = Sync("mirror", "pull", "crm", max_sessions=2)


def page_of(*ids: int) -> httpx.Response:
    items = [
        {
            "data": {"id": i, "name": f"n{i}"},
            "meta": {
                "type": "contact",
                "sync": {"event_type": "created", "ack_key": f"k{i}", "revision": 1},
            },
        }
        for i in ids
    ]
    return httpx.Response(200, json={"items": items, "meta": {"count_left": 0}})


Handler = Callable[[httpx.Request], httpx.Response]


def server(fetches: list[httpx.Response]) -> tuple[Handler, list[str]]:
    """Sessions start while fetch answers last (then 204); every ack is kept."""
    acked: list[str] = []

    def handle(req: httpx.Request) -> httpx.Response:
        if req.url.path.endswith("/sync/start"):
            if not fetches:
                return httpx.Response(204)
            return httpx.Response(201, json={"data": {"id": "s", "queues": []}})
        if req.url.path.endswith("/sync/ack"):
            acked.extend(json.loads(req.content)["data"]["ack_keys"])
            return httpx.Response(202, json={})
        return fetches.pop(0) if fetches else httpx.Response(204)

    return handle, acked


@pytest.fixture
async def replica(tmp_path: Path) -> AsyncIterator[Replica]:
    r = await Replica.open(tmp_path / "replica.db")
    await r.register_sync(SYNC.label, "pull", CONN.name)
    try:
        yield r
    finally:
        await r.close()


def client(handler: Handler) -> SellClient:
    settings = SellSettings(
        "https://sell.test", "t" * 64, "dev", retry=RetryPolicy(2, 0.001, 0.002)
    )
    return SellClient(settings, transport=httpx.MockTransport(handler), rng=random.Random(1))


async def ids(replica: Replica) -> list[int]:
    rows = await replica.db.execute_fetchall("SELECT id FROM contact ORDER BY id")
    return [int(r[0]) for r in rows]


async def test_a_malformed_page_is_skipped_and_another_session_follows(replica: Replica) -> None:
    """The pages around a malformed body are applied and acked; the lost page's items
    come back in the next session, which the loop starts because of it."""
    bad = httpx.Response(200, content=b'{"items": [{"da')
    handler, acked = server([page_of(1), bad, page_of(3), httpx.Response(204), page_of(2)])
    async with client(handler) as c:
        outcome = await pull.pull_cycle(replica, SYNC, CONN, c)
    assert outcome.sessions == 2 and outcome.pages == 3
    assert await ids(replica) == [1, 2, 3]
    assert sorted(acked) == ["k1", "k2", "k3"]


async def test_an_answer_that_is_not_a_page_counts_as_a_lost_page(replica: Replica) -> None:
    """A 2xx the Sync API does not give (202) is handled like a malformed page."""
    handler, acked = server(
        [page_of(1), httpx.Response(202, json={}), page_of(3), httpx.Response(204), page_of(2)]
    )
    async with client(handler) as c:
        outcome = await pull.pull_cycle(replica, SYNC, CONN, c)
    assert outcome.sessions == 2 and await ids(replica) == [1, 2, 3]
    assert sorted(acked) == ["k1", "k2", "k3"]


async def test_malformed_pages_in_a_row_end_the_cycle(replica: Replica) -> None:
    """More malformed pages in a row than max_retries: a ProtocolError, after the
    pages before them were applied."""
    bad = [httpx.Response(200, content=b"not json") for _ in range(CONN.max_retries + 1)]
    handler, _ = server([page_of(1), *bad, page_of(9)])
    async with client(handler) as c:
        with pytest.raises(ProtocolError, match="keeps answering malformed pages"):
            await pull.pull_cycle(replica, SYNC, CONN, c)
    assert await ids(replica) == [1]


async def test_empty_pages_are_paced_and_write_nothing(
    replica: Replica, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Empty 200 pages are not the end; they are waited on (longer each time), not
    counted, and not written: only the two real pages commit."""
    monkeypatch.setattr(pull, "EMPTY_PAGE_PAUSE", 0.01)
    empty = [page_of() for _ in range(3)]
    handler, _ = server([page_of(1), *empty, page_of(2)])
    writer = replica._writer  # the connection pages are applied on
    assert writer is not None
    statements: list[str] = []
    writer.set_trace_callback(statements.append)
    started = time.monotonic()
    async with client(handler) as c:
        outcome = await pull.pull_cycle(replica, SYNC, CONN, c)
    writer.set_trace_callback(None)
    assert time.monotonic() - started >= 0.01 * (1 + 2 + 3)
    assert outcome.pages == 2 and await ids(replica) == [1, 2]
    # Two pages written (each with its ack keys), and nothing for the empty ones.
    assert sum(s.startswith("INSERT INTO _replicad_pending_acks") for s in statements) == 2
    assert sum(s.startswith("INSERT INTO _replicad_applying") for s in statements) == 2


async def test_endless_empty_pages_abandon_the_session(
    replica: Replica, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A queue that only ever answers empty pages is given up on with a clear error."""
    monkeypatch.setattr(pull, "EMPTY_PAGE_PAUSE", 0.0)
    handler, _ = server([page_of() for _ in range(pull.MAX_EMPTY_PAGES + 5)])
    async with client(handler) as c:
        with pytest.raises(ProtocolError, match="empty pages in a row"):
            await pull.pull_cycle(replica, SYNC, CONN, c)


async def test_a_page_lost_in_the_last_allowed_session_is_not_success(replica: Replica) -> None:
    """When the last session a cycle may start loses a page, the cycle fails (exit code,
    status) instead of ending idle with rows missing; the pages around it are kept."""
    bad = httpx.Response(200, content=b'{"items": [{"da')
    handler, _ = server(
        [page_of(1), bad, httpx.Response(204), page_of(2), bad, httpx.Response(204), page_of(3)]
    )
    async with client(handler) as c:
        with pytest.raises(pull.IncompletePull, match="a page was lost in the last of 2"):
            await pull.pull_cycle(replica, SYNC, CONN, c)
    assert await ids(replica) == [1, 2]
    status = await replica.db.execute_fetchall(
        "SELECT last_error FROM replicad_syncs WHERE sync = 'mirror'"
    )
    assert "a page was lost" in next(iter(status))[0]


async def test_corruption_met_while_applying_stops_the_cycle_and_acks_nothing_more(
    replica: Replica, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLITE_CORRUPT while applying the second page: the cycle ends with
    ReplicaCorrupt (exit 2, naming `replicad doctor`), and no key is acknowledged
    after it — not even the first page's, flushed at the end of a healthy cycle."""
    from replicad.store import ReplicaCorrupt
    from replicad.store import replica as replica_module

    real = replica_module.apply_page
    calls = [0]

    def failing(*args: object, **kw: object) -> object:
        calls[0] += 1
        if calls[0] == 2:
            raise sqlite3.DatabaseError("database disk image is malformed")
        return real(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(replica_module, "apply_page", failing)
    handler, acked = server([page_of(1), page_of(2), page_of(3)])
    async with client(handler) as c:
        with pytest.raises(ReplicaCorrupt, match="replicad doctor"):
            await pull.pull_cycle(replica, SYNC, CONN, c)
    assert acked == []
    assert await ids(replica) == [1]
