"""Unit tests of the emulator's dataset, record store, sync state machine and mutations."""

from __future__ import annotations

from typing import Any

import pytest

from replicad.connectors.emulator.dataset import Dataset, generate, index_of, locate, type_counts
from replicad.connectors.emulator.mutations import MutationError, apply_mutations, random_mutations
from replicad.connectors.emulator.records import REVISION_BASE, RecordStore
from replicad.connectors.emulator.state import (
    Page,
    Session,
    SessionLimitError,
    SyncState,
    UnknownSessionError,
    ack_key,
    parse_ack_key,
)


class FakeClock:
    """A controllable monotonic clock."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_state(records: int = 20, *, page_size: int = 5, **kwargs: Any) -> SyncState:
    return SyncState(RecordStore(records, seed=3), page_size=page_size, **kwargs)


def drain(state: SyncState, session: Session) -> list[dict[str, Any]]:
    """Fetch every page of a session, acknowledging nothing."""
    items: list[dict[str, Any]] = []
    while (page := state.fetch(session)) is not None:
        items.extend(page.items)
    return items


def keys_of(items: list[dict[str, Any]]) -> list[str]:
    return [item["meta"]["sync"]["ack_key"] for item in items]


def sync_all(state: SyncState, device: str) -> list[dict[str, Any]]:
    """One full session that acknowledges everything it receives."""
    session = state.start(device)
    if session is None:
        return []
    items = drain(state, session)
    state.ack(device, keys_of(items))
    return items


# -- dataset -------------------------------------------------------------------


def test_dataset_is_deterministic() -> None:
    """The same (records, seed) always yields identical data; another seed differs."""
    assert list(generate(500, 42)) == list(generate(500, 42))
    assert list(generate(500, 42)) != list(generate(500, 43))


def test_dataset_type_split_and_ids() -> None:
    """Records split ~50/25/25 over contact/lead/deal with ids 1..n per type."""
    records = list(generate(1001, 1))
    counts = type_counts(1001)
    assert counts == {"contact": 501, "lead": 250, "deal": 250}
    for type_ in counts:
        ids = [data["id"] for t, data in records if t == type_]
        assert ids == list(range(1, counts[type_] + 1))


def test_dataset_index_mapping_round_trips() -> None:
    """locate() and index_of() are inverse functions."""
    for index in range(200):
        assert index_of(*locate(index)) == index


def test_dataset_shapes_and_edge_values() -> None:
    """Records carry nested fields, nulls, unicode, zero-padded postal codes and valid links."""
    records = list(generate(2000, 1))
    contacts = {data["id"]: data for t, data in records if t == "contact"}
    deals = [data for t, data in records if t == "deal"]
    postal = [data["address"]["postal_code"] for t, data in records if t != "deal"]
    assert all(isinstance(code, str) and len(code) == 5 for code in postal)
    assert any(code.startswith("0") for code in postal)
    assert any(not (data.get("name") or "").isascii() for _, data in records)
    assert any(data["phone"] is None for data in contacts.values())
    assert any(data["is_organization"] for data in contacts.values())
    assert all(deal["contact_id"] in contacts for deal in deals)
    assert {type(deal["value"]) for deal in deals} == {int, float}
    assert {deal["currency"] for deal in deals} == {"EUR", "USD"}
    contact = contacts[1]
    assert set(contact["custom_fields"]) == {"tier", "score"}
    assert isinstance(contact["tags"], list)
    assert contact["created_at"] <= contact["updated_at"]


def test_lazy_and_eager_stores_agree() -> None:
    """Records rebuilt on demand equal the eagerly generated ones."""
    eager = RecordStore(300, seed=9)
    lazy = RecordStore(300, seed=9, eager_limit=0)
    for index in range(300):
        key = locate(index)
        assert eager.current(key) == lazy.current(key)
    assert lazy.current(("contact", 1))[1] == REVISION_BASE + 1


# -- queues and sessions -------------------------------------------------------


def test_initial_queue_holds_every_live_record() -> None:
    """A device's first session announces and serves every record exactly once."""
    state = make_state(23)
    session = state.start("dev")
    assert session is not None
    assert session.total == 23
    assert state.pages(session) == 5
    items = drain(state, session)
    assert len(items) == 23
    assert len({(i["meta"]["type"], i["data"]["id"]) for i in items}) == 23
    assert all(i["meta"]["sync"]["event_type"] == "created" for i in items)


def test_item_shape_and_ack_key() -> None:
    """Items carry the data plus meta.type and meta.sync {event_type, ack_key, revision}."""
    state = make_state(4)
    session = state.start("dev")
    assert session is not None
    page = state.fetch(session)
    assert page is not None
    item = page.items[0]
    revision = item["meta"]["sync"]["revision"]
    assert item["meta"] == {
        "type": "contact",
        "sync": {
            "event_type": "created",
            "ack_key": f"Contact-1-{revision}",
            "revision": revision,
        },
    }
    assert item["data"]["id"] == 1


def test_empty_queue_answers_none() -> None:
    """Once everything is acknowledged, start() answers None (the 204)."""
    state = make_state(12)
    assert len(sync_all(state, "dev")) == 12
    assert state.start("dev") is None
    assert state.queued("dev") == 0


def test_exhausted_session_ends() -> None:
    """After the last page fetch() answers None, repeatedly, and the session is inactive."""
    state = make_state(6, page_size=5)
    session = state.start("dev")
    assert session is not None
    assert state.active_sessions("dev") == 1
    drain(state, session)
    assert state.active_sessions("dev") == 0
    assert state.session("dev", session.id) is None
    with pytest.raises(UnknownSessionError):
        state.session("other-device", session.id)


def test_queue_keeps_only_freshest_state() -> None:
    """Two updates before a fetch deliver one item with the latest data and revision."""
    state = make_state(10)
    sync_all(state, "dev")
    state.update("lead", 2, {"title": "first"})
    change = state.update("lead", 2, {"title": "second", "brand_new": True})
    items = sync_all(state, "dev")
    assert len(items) == 1
    assert items[0]["data"]["title"] == "second"
    assert items[0]["data"]["brand_new"] is True
    assert items[0]["meta"]["sync"] == {
        "event_type": "updated",
        "ack_key": f"Lead-2-{change.revision}",
        "revision": change.revision,
    }


def test_pages_serve_current_state_at_fetch_time() -> None:
    """A record changed after the session started is served in its current state."""
    state = make_state(10, page_size=100)
    session = state.start("dev")
    assert session is not None
    change = state.update("contact", 3, {"name": "Changed"})
    items = drain(state, session)
    contact3 = next(i for i in items if i["meta"]["type"] == "contact" and i["data"]["id"] == 3)
    assert contact3["data"]["name"] == "Changed"
    assert contact3["meta"]["sync"]["revision"] == change.revision


def test_revisions_are_global_and_increasing() -> None:
    """Every create and update takes the next value of one global counter."""
    state = make_state(10)
    first = state.update("contact", 1, {"name": "a"})
    second = state.create("deal", {"name": "new deal"})
    third = state.update("lead", 1, {"title": "b"})
    assert first.revision == REVISION_BASE + 11
    assert (second.revision, third.revision) == (first.revision + 1, first.revision + 2)
    assert second.id == type_counts(10)["deal"] + 1


def test_ack_removes_only_matching_revision() -> None:
    """An ack with a stale revision leaves the entry queued; unknown keys are ignored."""
    state = make_state(4, page_size=100)
    session = state.start("dev")
    assert session is not None
    items = drain(state, session)
    delivered = {i["meta"]["type"] + str(i["data"]["id"]): i for i in items}
    stale = delivered["contact1"]["meta"]["sync"]["ack_key"]
    state.update("contact", 1, {"name": "changed after delivery"})
    bogus = ["Contact-999-1", "Nope-1-1", "garbage", "Contact-1--5", "", "Contact-x-1"]
    removed = state.ack("dev", [*keys_of(items), *bogus])
    assert removed == 3
    assert state.queued("dev") == 1
    redelivered = sync_all(state, "dev")
    assert [i["data"]["id"] for i in redelivered] == [1]
    assert redelivered[0]["data"]["name"] == "changed after delivery"
    assert redelivered[0]["meta"]["sync"]["ack_key"] != stale


def test_unacknowledged_items_are_redelivered() -> None:
    """Items delivered but not acknowledged come back in the next session."""
    state = make_state(8, page_size=3)
    session = state.start("dev")
    assert session is not None
    first = drain(state, session)
    state.ack("dev", keys_of(first)[:5])
    second = sync_all(state, "dev")
    assert keys_of(second) == keys_of(first)[5:]
    assert state.start("dev") is None


def test_fetched_pages_are_consumed_without_ack() -> None:
    """The server advances past a page even if the client never acknowledges it."""
    state = make_state(10, page_size=4)
    session = state.start("dev")
    assert session is not None
    first, second = state.fetch(session), state.fetch(session)
    assert first is not None and second is not None
    assert set(keys_of(first.items)).isdisjoint(keys_of(second.items))
    assert (first.count_left, second.count_left) == (6, 2)


def test_deletes_are_id_only_with_revision_zero() -> None:
    """A delete replaces the queue entry with {"id"} data and revision 0, acked as <Type>-<id>-0."""
    state = make_state(10)
    sync_all(state, "dev")
    state.update("contact", 2, {"name": "soon gone"})
    change = state.delete("contact", 2)
    assert change.revision == 0
    session = state.start("dev")
    assert session is not None
    page = state.fetch(session)
    assert page is not None
    assert page.items == [
        {
            "data": {"id": 2},
            "meta": {
                "type": "contact",
                "sync": {"event_type": "deleted", "ack_key": "Contact-2-0", "revision": 0},
            },
        }
    ]
    assert state.ack("dev", ["Contact-2-0"]) == 1
    assert state.start("dev") is None


def test_new_device_queue_excludes_deleted_records() -> None:
    """A device seen for the first time gets live records only, including created ones."""
    state = make_state(10)
    state.delete("deal", 1)
    state.create("lead", {"first_name": "Nova"})
    items = sync_all(state, "fresh-device")
    keys = {(i["meta"]["type"], i["data"]["id"]) for i in items}
    assert ("deal", 1) not in keys
    assert ("lead", type_counts(10)["lead"] + 1) in keys
    assert len(items) == 10


def test_mutations_reach_every_device_queue() -> None:
    """A change is queued for every device that has a queue."""
    state = make_state(6)
    sync_all(state, "a")
    sync_all(state, "b")
    state.update("deal", 1, {"hot": True})
    assert state.queued("a") == state.queued("b") == 1


def test_failed_objects_are_left_out_and_redelivered_later() -> None:
    """Entries listed as failed_objects are not served now but arrive in a later session."""
    state = make_state(6, page_size=3)
    session = state.start("dev")
    assert session is not None
    page = state.fetch(session, leave_out=2)
    assert page is not None
    assert len(page.items) == 1
    assert page.failed_objects == [{"type": "lead", "id": 1}, {"type": "contact", "id": 2}]
    rest = drain(state, session)
    state.ack("dev", keys_of(page.items) + keys_of(rest))
    later = sync_all(state, "dev")
    assert [(i["meta"]["type"], i["data"]["id"]) for i in later] == [("lead", 1), ("contact", 2)]


def test_session_limit_and_ttl() -> None:
    """The 101st active session is refused with a retry delay; idle ones expire after the TTL."""
    clock = FakeClock()
    state = make_state(5, clock=clock, session_ttl=300.0)
    sessions = [state.start("dev") for _ in range(100)]
    assert all(s is not None for s in sessions)
    with pytest.raises(SessionLimitError) as refused:
        state.start("dev")
    assert refused.value.retry_after == 300
    assert state.start("other-device") is not None
    first = sessions[0]
    assert first is not None
    drain(state, first)
    assert state.start("dev") is not None
    clock.now += 301
    assert state.active_sessions("dev") == 0
    expired = sessions[1]
    assert expired is not None
    with pytest.raises(UnknownSessionError):
        state.session("dev", expired.id)


def test_ack_key_round_trip() -> None:
    """ack_key() and parse_ack_key() agree, and malformed keys parse to None."""
    assert ack_key("deal", 7, 1000123) == "Deal-7-1000123"
    assert parse_ack_key("Deal-7-1000123") == (("deal", 7), 1000123)
    for bad in ("Deal-7", "deal-7-1", "Deal-+7-1", "Deal-7-1-2", "Deal- 7-1", "Source-1-2"):
        assert parse_ack_key(bad) is None


def test_page_default_failed_objects_is_empty() -> None:
    """A normal page reports no failed objects."""
    assert Page(items=[], count_left=0).failed_objects == []


# -- mutations -----------------------------------------------------------------


def test_random_mutations_are_deterministic() -> None:
    """The same state and seed produce the same changes and the same records."""
    first, second = make_state(200), make_state(200)
    changes = random_mutations(first, 150, seed=5)
    assert changes == random_mutations(second, 150, seed=5)
    assert {c.op for c in changes} == {"create", "update", "delete"}
    for type_ in ("contact", "lead", "deal"):
        assert list(first.store.iter_records(type_)) == list(second.store.iter_records(type_))
        assert first.store.deleted_ids(type_) == second.store.deleted_ids(type_)
    added = {"nickname", "linkedin_url", "loyalty_points", "preferred_language"}
    assert any(
        added & data.keys()
        for t in ("contact", "lead", "deal")
        for _, data, _ in first.store.iter_records(t)
    )


def test_explicit_mutations_and_errors() -> None:
    """Ops create (id assigned or given), merge updates, delete, and reject bad requests."""
    state = make_state(4)
    changes = apply_mutations(
        state,
        {
            "ops": [
                {"op": "create", "type": "contact", "data": {"name": "Given", "id": 50}},
                {"op": "create", "type": "contact", "data": {"name": "Next"}},
                {"op": "update", "type": "contact", "id": 1, "data": {"extra": [1, 2]}},
                {"op": "delete", "type": "lead", "id": 1},
            ]
        },
    )
    assert [(c.op, c.id) for c in changes] == [
        ("create", 50),
        ("create", 51),
        ("update", 1),
        ("delete", 1),
    ]
    data, _, _ = state.store.current(("contact", 1))
    assert data is not None and data["extra"] == [1, 2] and "email" in data
    with pytest.raises(MutationError) as missing:
        apply_mutations(state, {"ops": [{"op": "update", "type": "lead", "id": 1, "data": {}}]})
    assert missing.value.status == 404
    with pytest.raises(MutationError) as bad_type:
        apply_mutations(state, {"ops": [{"op": "create", "type": "sqlite_master", "data": {}}]})
    assert bad_type.value.status == 422
    with pytest.raises(MutationError) as duplicate:
        apply_mutations(state, {"ops": [{"op": "create", "type": "contact", "data": {"id": 50}}]})
    assert duplicate.value.status == 409


def test_dataset_record_rejects_unknown_ids() -> None:
    """Asking for a record outside the dataset raises KeyError."""
    with pytest.raises(KeyError):
        Dataset(10, 1).record("deal", 99)
