"""Everything that touches SQLite: the replica's schema, per-type tables, applying pages."""

from store.lock import ReplicaBusy
from store.model import ApplyResult, BadItem, FailedObject, PageBatch, PullTarget, RecordChange
from store.replica import Replica, ReplicaRefused

__all__ = [
    "ApplyResult",
    "BadItem",
    "FailedObject",
    "PageBatch",
    "PullTarget",
    "RecordChange",
    "Replica",
    "ReplicaBusy",
    "ReplicaRefused",
]
