"""Helpers for store tests: a fresh replica and item builders."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from replicad.connectors.push_model import PushItem
from replicad.store import PageBatch, PullTarget, RecordChange, Replica

TARGET = PullTarget(sync="mirror", connection="crm")


def up(type_: str, id_: int, rev: int, **data: Any) -> RecordChange:
    """An upsert item."""
    return RecordChange(type_, id_, rev, f"{type_}-{id_}-{rev}", False, {"id": id_, **data})


def gone(type_: str, id_: int) -> RecordChange:
    """A delete item (ids only, revision 0)."""
    return RecordChange(type_, id_, 0, f"{type_}-{id_}-0", True, {})


def page(*changes: RecordChange) -> PageBatch:
    """A page of changes."""
    return PageBatch(list(changes))


@pytest.fixture
async def replica(tmp_path: Path) -> AsyncIterator[Replica]:
    """An open replica with the mirror sync registered."""
    r = await Replica.open(tmp_path / "replica.db")
    await r.register_sync("mirror", "pull", "crm")
    try:
        yield r
    finally:
        await r.close()


async def rows(r: Replica, table: str) -> dict[int, dict[str, Any]]:
    """A table's rows by id, without the local-only columns."""
    cur = await r.db.execute(f'SELECT * FROM "{table}"')
    names = [d[0] for d in cur.description]
    out = {}
    for row in await cur.fetchall():
        rec = dict(zip(names, row, strict=True))
        rec.pop("_internal_id")
        rec.pop("_synced_at")
        out[rec["id"]] = rec
    return out


def payload(item: PushItem) -> dict[str, Any]:
    """An outbox item as its stored payload (``replicad_outbox.payload``) shows it."""
    return {
        "data": dict(item.data),
        "id": item.id,
        "associations": [
            {"type": a.type, "internal_id": a.internal_id, "id": a.id, "data": dict(a.data)}
            for a in item.associations
        ],
    }
