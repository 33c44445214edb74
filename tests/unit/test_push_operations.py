"""The sans-IO rules of the sync operations: which requests a CDM item needs, and what
an Endgrate transfer sends for each operation (docs/push-wire.md)."""

from __future__ import annotations

import pytest

from replicad.connectors.cdm_protocol import (
    Plan,
    match_key,
    no_match,
    parse_deleted,
    plan,
    record_path,
)
from replicad.connectors.endgrate_protocol import transfer_body, unsupported
from replicad.connectors.push_model import Op, Operation, PushBatch, PushItem

ANY_OPERATION: tuple[Operation, ...] = ("mirror", "upsert", "insert", "update", "append")
UPDATE = Plan("match", on_match="update", on_none="not_found")
UPSERT = Plan("match", on_match="update", on_none="create")
INSERT = Plan("match", on_match="confirm", on_none="create")
WRITE = Plan("write")


def one(op: Op, rid: str | None = None, **data: object) -> PushItem:
    return PushItem(1, "int-1", op, data, id=rid)


def batch(
    *items: PushItem, operation: Operation = "upsert", key_field: str | None = "email"
) -> PushBatch:
    return PushBatch("trk", "contact", items, operation=operation, key_field=key_field)


@pytest.mark.parametrize(
    ("op", "rid", "operation", "key_field", "want"),
    [
        # Deletes are deletes, whatever else.
        ("delete", "7", "mirror", "email", Plan("delete")),
        ("delete", "7", "upsert", None, Plan("delete")),
        # A captured table (no key_field) keeps the plain write, whatever the operation.
        *[("insert", None, o, None, WRITE) for o in ANY_OPERATION],
        ("update", None, "upsert", None, WRITE),
        ("update", "7", "update", None, WRITE),
        # An item with an id is written by id.
        ("update", "7", "upsert", "email", WRITE),
        ("update", "7", "update", "email", WRITE),
        # An update without an id is matched by key, and never creates.
        *[("update", None, o, "email", UPDATE) for o in ANY_OPERATION],
        # Inserts of a diffed sync, by operation.
        ("insert", None, "upsert", "email", UPSERT),
        ("insert", None, "mirror", "email", UPSERT),
        ("insert", None, "insert", "email", INSERT),
        ("insert", None, "append", "email", WRITE),
        ("insert", None, "update", "email", UPDATE),
    ],
)
def test_plan(
    op: Op, rid: str | None, operation: Operation, key_field: str | None, want: Plan
) -> None:
    """CDM: the requests an item needs follow from its op, the operation and key_field."""
    assert plan(batch(operation=operation, key_field=key_field), one(op, rid)) == want


@pytest.mark.parametrize("value", [None, "", 1.5, True, {"a": 1}, [1]])
def test_match_key_needs_text_or_an_integer(value: object) -> None:
    """CDM: only text and integers compare reliably as query strings."""
    assert isinstance(match_key(one("update", email=value), "email"), str)


def test_match_key_and_reason() -> None:
    key = match_key(one("update", code=42), "code")
    assert not isinstance(key, str) and (key.field, key.value) == ("code", "42")
    assert no_match("deal", key) == "no deal with code = '42' at the destination"


def test_record_path_quotes_both_segments() -> None:
    assert record_path("contact", "12") == "/api/contact/12"
    assert record_path("a/b", "../x") == "/api/a%2Fb/..%2Fx"


@pytest.mark.parametrize("status", [200, 202, 204])
def test_any_2xx_delete_confirms_with_its_id(status: int) -> None:
    """CDM: any 2xx to a delete confirms it with the id it named, whatever the body."""
    done = parse_deleted(
        status, None, entry=3, rid="9", tracking_id="t.3", echoed=None, sync_id=None
    )
    assert (done.outcome.entry, done.outcome.id, done.outcome.confirmed) == (3, "9", True)
    assert not done.echoed


@pytest.mark.parametrize(
    ("operation", "setting", "sent"),
    [
        ("upsert", False, False),
        ("upsert", True, True),
        ("insert", False, True),
        ("append", False, True),
        ("insert", True, True),
    ],
)
def test_insert_and_append_disable_upsert(operation: Operation, setting: bool, sent: bool) -> None:
    """Endgrate: an insert or append sync sends disable_upsert whatever the setting."""
    body = transfer_body(
        batch(one("insert", first_name="A"), operation=operation),
        session_id="s",
        synchronous=True,
        disable_upsert=setting,
        sample_data=False,
    )
    assert body["disable_upsert"] is sent


@pytest.mark.parametrize("operation", ["upsert", "insert", "append"])
def test_endgrate_carries_upsert_insert_append(operation: Operation) -> None:
    assert unsupported(batch(one("insert"), one("update", "7"), operation=operation)) is None


@pytest.mark.parametrize(
    ("b", "reason"),
    [
        (batch(one("insert"), operation="update"), "endgrate cannot push the 'update' operation"),
        (batch(one("insert"), operation="mirror"), "endgrate cannot push the 'mirror' operation"),
        (batch(one("delete", "7")), "endgrate cannot delete records"),
    ],
)
def test_endgrate_refuses_what_it_cannot_do(b: PushBatch, reason: str) -> None:
    """Endgrate: update and mirror syncs, and deletes, never reach a transfer."""
    assert unsupported(b) == reason
