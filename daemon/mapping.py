"""Census mappings applied to what a push sends (pure functions over plain data).

The outbox keeps values under their source column names; what goes over the wire
is renamed here, at send time: mapped columns under their ``to`` name, constants
added, and, with ``field_behavior = "sync_all_properties"``, every other column under
its name written in ``field_normalization``'s style.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from replicad.connectors.push_model import PushItem
from replicad.daemon.config import Sync
from replicad.store.normalize import normalize


def wire_data(data: Mapping[str, Any], sync: Sync) -> dict[str, Any]:
    """A row's (or an update's changed) columns as the destination's fields."""
    if not sync.mappings and sync.field_normalization == "match_source_names":
        return dict(data)
    out: dict[str, Any] = {}
    mapped = {m.column for m in sync.mappings if m.column is not None}
    for m in sync.mappings:
        if m.column is not None and m.column in data:
            out[m.to] = data[m.column]
    if sync.field_behavior == "sync_all_properties":
        for column, value in data.items():
            if column not in mapped:
                # A mapping's explicit name wins over an automatic one.
                out.setdefault(normalize(column, sync.field_normalization), value)
    return out


def constants(sync: Sync) -> dict[str, Any]:
    """The ``constant_value`` mappings: sent with every create and update."""
    return {m.to: m.constant for m in sync.mappings if m.column is None}


def mapped_columns(sync: Sync) -> tuple[str, ...] | None:
    """The source columns a diffed sync compares and sends (None: all of them)."""
    if sync.field_behavior == "sync_all_properties":
        return None
    return tuple(dict.fromkeys(m.column for m in sync.mappings if m.column is not None))


def map_item(item: PushItem, sync: Sync) -> PushItem | None:
    """The item as the destination takes it; None for an update that carries no field
    the destination is sent (only unmapped columns changed): nothing to send."""
    data = wire_data(item.data, sync)
    if item.op == "delete":
        return replace(item, data=data)  # only the identifier, to find the record by
    key = sync.key_field
    if item.op == "update" and not (set(data) - ({key} if key else set())):
        return None
    data.update(constants(sync))
    return replace(item, data=data)
