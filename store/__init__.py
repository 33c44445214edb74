"""Everything that touches SQLite: the replica's schema, per-type tables, applying pages."""

from replicad.store.lock import ReplicaBusy
from replicad.store.model import (
    ApplyResult,
    Association,
    BadItem,
    FailedObject,
    OutboxBatch,
    PageBatch,
    PullTarget,
    PushSource,
    RecordChange,
)
from replicad.store.replica import Replica, ReplicaCorrupt, ReplicaRefused, as_corruption

__all__ = [
    "ApplyResult",
    "Association",
    "BadItem",
    "FailedObject",
    "OutboxBatch",
    "PageBatch",
    "PullTarget",
    "PushSource",
    "RecordChange",
    "Replica",
    "ReplicaBusy",
    "ReplicaCorrupt",
    "ReplicaRefused",
    "as_corruption",
]
