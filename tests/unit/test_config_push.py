"""Push sync configuration: what is accepted, and errors that name the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from replicad.daemon.config import ConfigError, parse_config

BASE: dict[str, Any] = {
    "replica": {"path": "r.db"},
    "connections": {
        "crm": {"kind": "sell", "base_url": "https://api.example.com", "token_env": "T"},
        "out": {
            "kind": "endgrate", "base_url": "https://endgrate.example.com", "token_env": "E",
            "session_id": "s1",
        },
        "cdm": {"kind": "cdm", "base_url": "https://cdm.example.com", "token_env": "C"},
    },
}  # fmt: skip


def config(**syncs: dict[str, Any]) -> Any:
    """Parse BASE with these syncs."""
    return parse_config({**BASE, "syncs": syncs}, Path("/etc/replicad/config.toml"))


def test_push_sync_defaults_and_associations() -> None:
    """A push sync needs source and object; the rest has sane defaults."""
    cfg = config(
        up={
            "direction": "push", "connection": "out", "source": "contact",
            "object": "crm-contact",
            "associations": {"company_id": {"source": "company", "object": "crm-company"}},
        }
    )  # fmt: skip
    s = cfg.syncs["up"]
    assert (s.operation, s.batch_size, s.conflict, s.interval) == ("upsert", 100, "merge", 5.0)
    assert s.associations[0].column == "company_id" and s.associations[0].object == "crm-company"


@pytest.mark.parametrize(
    ("sync", "message"),
    [
        ({"connection": "out", "object": "x"}, "syncs.up.source: required"),
        ({"connection": "crm", "source": "c", "object": "x"}, "push syncs need an endgrate or cdm"),
        ({"connection": "out", "source": "c", "object": "x", "conflict": "local"}, "conflict"),
        ({"connection": "out", "source": "c", "object": "x", "natural_key": "e"}, "natural_key"),
        ({"connection": "cdm", "source": "c", "object": "x", "sample_data": True}, "sample_data"),
        ({"connection": "out", "source": "c", "object": "x", "operation": "mirror"}, "operation"),
        ({"connection": "out", "source": "c; drop", "object": "x"}, "not a table name"),
        (
            {"connection": "out", "source": "c", "object": "x", "prefix": "p"},
            "syncs.up.prefix: only pull syncs take this key; this sync pushes",
        ),
        (
            {"connection": "out", "source": "c", "object": "x", "max_sessions": 2},
            "syncs.up.max_sessions: only pull syncs",
        ),
        ({"connection": "out", "source": "c", "object": "x", "colour": 2}, "unknown key"),
    ],
)
def test_push_sync_errors_name_the_key(sync: dict[str, Any], message: str) -> None:
    """Wrong push settings are config errors naming the key."""
    with pytest.raises(ConfigError, match=message):
        config(up={"direction": "push", **sync})


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("source", "contact", "syncs.down.source: only push syncs take this key; this sync pulls"),
        ("conflict", "remote", "syncs.down.conflict: only push syncs"),
        ("batch_size", 10, "syncs.down.batch_size: only push syncs"),
        ("colour", "red", "syncs.down.colour: unknown key"),
    ],
)
def test_a_push_key_on_a_pull_sync_says_it_is_for_push_syncs(
    key: str, value: Any, message: str
) -> None:
    """A key of the other direction is named as such, not as unknown."""
    with pytest.raises(ConfigError, match=message):
        config(down={"direction": "pull", "connection": "crm", key: value})


def test_one_push_sync_per_table() -> None:
    """Two push syncs of the same table are refused."""
    push = {"direction": "push", "connection": "out", "source": "contact", "object": "x"}
    with pytest.raises(ConfigError, match="already pushed by sync"):
        config(a=push, b=push)


def test_endgrate_connection_needs_session_id() -> None:
    """An endgrate connection without session_id is refused."""
    raw = {**BASE, "connections": {"out": {**BASE["connections"]["out"]}}}
    del raw["connections"]["out"]["session_id"]
    with pytest.raises(ConfigError, match="session_id: required"):
        parse_config(raw, Path("/x/config.toml"))


@pytest.mark.parametrize(
    ("conn", "key", "value"),
    [("cdm", "session_id", "s"), ("out", "device_uuid", "d"), ("cdm", "ack_batch", 5)],
)
def test_connection_keys_of_another_kind_are_refused(conn: str, key: str, value: Any) -> None:
    """A connection key that only another kind takes is an error naming it and the kind."""
    raw = {**BASE, "connections": {**BASE["connections"]}}
    raw["connections"][conn] = {**BASE["connections"][conn], key: value}
    with pytest.raises(ConfigError, match=rf"connections\.{conn}\.{key}: not used by"):
        parse_config({**raw, "syncs": {}}, Path("/c.toml"))


def test_registry_decides_directions_and_batching() -> None:
    """The kinds registry says which kinds pull or push and which send batches."""
    from replicad.daemon.kinds import KINDS, kinds_for

    assert kinds_for("pull") == ["sell"] and kinds_for("push") == ["endgrate", "cdm"]
    assert KINDS["endgrate"].batches and not KINDS["cdm"].batches
    cfg = config(
        a={"direction": "push", "connection": "cdm", "source": "contact", "object": "contact"}
    )
    assert cfg.syncs["a"].batch_size == 1
    with pytest.raises(ConfigError, match="pull syncs need a 'sell' connection"):
        config(p={"direction": "pull", "connection": "cdm"})
