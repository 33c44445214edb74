"""The pull seam holds a second kind: a cursor-paged feed (no server-side queue, no
acks) implemented only against ``connectors.pull_model``, drained by the same loop
(``daemon.pull.pull_cycle``) into a real replica. Its cursor is the checkpoint the
store commits with each page and hands back at the next start."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from replicad.connectors.pull_model import PageBatch, RecordChange
from replicad.daemon import pull
from replicad.daemon.config import Connection, Sync
from replicad.store import Replica
from replicad.store.operate import resync_at

CONN = Connection("feed", "rest", "https://feed.test")
SYNC = Sync("feed", "pull", "feed", max_sessions=2)
PAGE = 3


@dataclass
class Session:
    id: str
    total_count: int | None


@dataclass
class Page:
    batch: PageBatch
    count: int
    count_left: int | None


@dataclass
class Count:
    total: int = 0


@dataclass
class NoBudget:
    def state(self, wall: float) -> dict[str, Any]:
        return {}

    def restore(self, state: Any, wall: float) -> bool:
        return True


@dataclass
class CursorFeed:
    """A change feed read by position: ``?after=<cursor>`` gives the next events."""

    events: list[dict[str, Any]]
    fail_after_pages: int | None = None  # raise (a crash) once this many pages are out
    starts: list[str | None] = field(default_factory=list)
    confirmed: list[str] = field(default_factory=list)
    stats: Count = field(default_factory=Count)
    bucket: NoBudget = field(default_factory=NoBudget)
    identity: str = "feed"
    confirm_batch: int = 4
    _next: int = 0
    _served: int = 0

    async def check_credentials(self) -> None:
        return None

    async def start(self, checkpoint: str | None = None) -> Session | None:
        self.starts.append(checkpoint)
        self._next = 0 if checkpoint is None else int(checkpoint) + 1
        if self._next >= len(self.events):
            return None
        return Session("cursor", len(self.events) - self._next)

    async def fetch(self, session_id: str) -> tuple[bytes | None, bool]:
        if self._next >= len(self.events):
            return None, False
        if self.fail_after_pages is not None and self._served >= self.fail_after_pages:
            raise RuntimeError("connection lost")
        self.stats.total += 1
        self._served += 1
        chunk = self.events[self._next : self._next + PAGE]
        body = {"after": self._next - 1, "events": chunk}
        self._next += len(chunk)
        return json.dumps(body).encode(), False

    def decode(self, raw: bytes) -> Page:
        body = json.loads(raw)
        changes = [
            RecordChange(
                e["type"], e["id"], e["rev"], str(body["after"] + 1 + i), e.get("gone", False),
                {} if e.get("gone") else {"id": e["id"], **e["data"]},
            )
            for i, e in enumerate(body["events"])
        ]  # fmt: skip
        return Page(PageBatch(changes), len(changes), None)

    async def confirm(self, tokens: list[str]) -> None:
        self.confirmed.extend(tokens)  # nothing to tell a feed: the cursor is ours

    async def aclose(self) -> None:
        return None


def event(id_: int, rev: int, name: str = "", gone: bool = False) -> dict[str, Any]:
    return {"type": "note", "id": id_, "rev": rev, "gone": gone, "data": {"text": name}}


@pytest.fixture
async def replica(tmp_path: Path) -> AsyncIterator[Replica]:
    r = await Replica.open(tmp_path / "replica.db")
    await r.register_sync(SYNC.label, "pull", CONN.name)
    try:
        yield r
    finally:
        await r.close()


async def notes(replica: Replica) -> dict[int, str]:
    rows = await replica.db.execute_fetchall("SELECT id, text FROM note")
    return {int(i): str(t) for i, t in rows}


async def test_a_cursor_feed_drains_through_the_same_loop(replica: Replica) -> None:
    """Every event is applied (updates and deletes too), the cursor is kept, and the
    next cycle starts after it and finds nothing."""
    feed = CursorFeed([event(i, 1, f"n{i}") for i in range(1, 8)] + [event(2, 2, "two")])
    feed.events.append(event(3, 0, gone=True))
    outcome = await pull.pull_cycle(replica, SYNC, CONN, feed)
    assert outcome.items == 9 and outcome.pages == 3
    assert await notes(replica) == {1: "n1", 2: "two", 4: "n4", 5: "n5", 6: "n6", 7: "n7"}
    assert await replica.checkpoint("feed") == "8"
    await pull.pull_cycle(replica, SYNC, CONN, feed)
    assert feed.starts == [None, "8"]


async def test_a_crash_mid_feed_resumes_at_the_committed_cursor(replica: Replica) -> None:
    """A failure after two pages: the next cycle starts right after what was stored,
    so no event is skipped and none is read twice."""
    events = [event(i, 1, f"n{i}") for i in range(1, 11)]
    feed = CursorFeed(events, fail_after_pages=2)
    with pytest.raises(RuntimeError):
        await pull.pull_cycle(replica, SYNC, CONN, feed)
    assert len(await notes(replica)) == 6
    again = CursorFeed(events)
    await pull.pull_cycle(replica, SYNC, CONN, again)
    assert again.starts[0] == "5"  # the committed pages' tokens were confirmed first
    assert again.stats.total == 2  # the remaining 4 events, in two pages
    assert await notes(replica) == {i: f"n{i}" for i in range(1, 11)}


async def test_a_resync_forgets_the_cursor(replica: Replica) -> None:
    """`replicad resync` of a cursor kind starts the feed from its beginning."""
    feed = CursorFeed([event(i, 1, f"n{i}") for i in range(1, 5)])
    await pull.pull_cycle(replica, SYNC, CONN, feed)
    assert await replica.checkpoint("feed") == "3"
    assert resync_at(replica.path, ["feed"]) == ["feed"]
    assert await replica.checkpoint("feed") is None
    again = CursorFeed(feed.events)
    await pull.pull_cycle(replica, SYNC, CONN, again)
    assert again.starts[0] is None and again.stats.total == 2
