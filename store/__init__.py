"""Everything that touches SQLite: the replica's schema, per-type tables, applying pages."""

from replicad.store.diff import DiffCounts, DiffSpec, SourceError, outbox_name
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
from replicad.store.naming import Naming
from replicad.store.replica import Replica, ReplicaCorrupt, ReplicaRefused, as_corruption
from replicad.store.runs import Run, RunCounts

__all__ = [
    "ApplyResult",
    "Association",
    "BadItem",
    "DiffCounts",
    "DiffSpec",
    "FailedObject",
    "Naming",
    "OutboxBatch",
    "PageBatch",
    "PullTarget",
    "PushSource",
    "RecordChange",
    "Replica",
    "ReplicaBusy",
    "ReplicaCorrupt",
    "ReplicaRefused",
    "Run",
    "RunCounts",
    "SourceError",
    "as_corruption",
    "outbox_name",
]
