"""Pure in-memory state machine of the Sell Sync API: queues, sessions and acks.

No HTTP here.  Each device has one queue, created holding every live record the
first time the device starts a session.  A queue is an insertion-ordered set of
record keys: it never stores data, because an entry always means "the freshest
state of this record", which is looked up when a page is built.  A mutation
therefore only has to (re)insert its key into every queue, and a delete turns
the entry into a delete entry simply because the record is now deleted.

A session snapshots the queue's keys when it starts and serves them in pages.
Each page consumes its keys from the session whether or not the client ever
receives it; keys stay in the device queue until acknowledged with the ack key
of the entry's current revision, so anything not acknowledged comes back in the
next session.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final

from replicad.connectors.emulator.records import Change, Key, RecordStore

DEFAULT_PAGE_SIZE: Final = 100
DEFAULT_SESSION_TTL: Final = 300.0
MAX_ACTIVE_SESSIONS: Final = 100
# Ended sessions are remembered so that repeating the final fetch (say after a
# lost response) answers 204 again instead of 404; bounded to cap memory.
_ENDED_SESSIONS_KEPT: Final = 10_000

_ACK_PREFIX: Final = {"contact": "Contact", "lead": "Lead", "deal": "Deal"}
_ACK_TYPE: Final = {prefix: type_ for type_, prefix in _ACK_PREFIX.items()}


class UnknownSessionError(Exception):
    """The session id is not known for this device (never started, or expired)."""


class SessionLimitError(Exception):
    """The device already has the maximum number of active sessions."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"too many active sync sessions; retry after {retry_after} s")
        self.retry_after = retry_after


@dataclass(slots=True)
class Session:
    """One synchronization session of one device."""

    id: str
    device: str
    keys: list[Key]
    last_used: float
    cursor: int = 0

    @property
    def total(self) -> int:
        """Number of queue entries snapshotted when the session started."""
        return len(self.keys)

    @property
    def remaining(self) -> int:
        """Snapshotted keys not consumed yet (some may since have been acknowledged)."""
        return len(self.keys) - self.cursor


@dataclass(frozen=True, slots=True)
class Page:
    """Items of one fetch plus the page meta fields."""

    items: list[dict[str, Any]]
    count_left: int
    failed_objects: list[dict[str, Any]] = field(default_factory=list)


def ack_key(type_: str, id_: int, revision: int) -> str:
    """The ack key of an entry: ``"<Type>-<id>-<revision>"``, revision 0 for deletes."""
    return f"{_ACK_PREFIX[type_]}-{id_}-{revision}"


def parse_ack_key(raw: str) -> tuple[Key, int] | None:
    """``((type, id), revision)`` of an ack key, or None if it is not one of ours."""
    parts = raw.split("-")
    if len(parts) != 3 or parts[0] not in _ACK_TYPE:
        return None
    id_text, revision_text = parts[1], parts[2]
    # isdecimal() rejects signs, spaces and underscores that int() would accept.
    if not (id_text.isdecimal() and revision_text.isdecimal()):
        return None
    return (_ACK_TYPE[parts[0]], int(id_text)), int(revision_text)


class SyncState:
    """Records, device queues and sync sessions of one emulated account."""

    def __init__(
        self,
        store: RecordStore,
        *,
        page_size: int = DEFAULT_PAGE_SIZE,
        session_ttl: float = DEFAULT_SESSION_TTL,
        max_sessions: int = MAX_ACTIVE_SESSIONS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if page_size < 1:
            raise ValueError("page_size must be >= 1")
        self.store = store
        self.page_size = page_size
        self.session_ttl = session_ttl
        self.max_sessions = max_sessions
        self._clock = clock
        self._queues: dict[str, dict[Key, None]] = {}
        self._sessions: dict[str, dict[str, Session]] = {}
        self._ended: dict[str, str] = {}

    # -- mutations -------------------------------------------------------------

    def _enqueue(self, key: Key) -> None:
        # Re-inserting an existing key keeps its position: the entry is the same,
        # only the state it stands for is fresher.
        for queue in self._queues.values():
            queue[key] = None

    def create(self, type_: str, data: dict[str, Any]) -> Change:
        """Create a record and queue it for every known device."""
        change = self.store.create(type_, data)
        self._enqueue((change.type, change.id))
        return change

    def update(self, type_: str, id_: int, data: dict[str, Any]) -> Change:
        """Update a record and queue its new state for every known device."""
        change = self.store.update(type_, id_, data)
        self._enqueue((type_, id_))
        return change

    def delete(self, type_: str, id_: int) -> Change:
        """Delete a record and queue a delete entry for every known device."""
        change = self.store.delete(type_, id_)
        self._enqueue((type_, id_))
        return change

    # -- sessions --------------------------------------------------------------

    def _expire(self, device: str, now: float) -> dict[str, Session]:
        sessions = self._sessions.get(device)
        if sessions is None:
            return {}
        for sid in [s.id for s in sessions.values() if now - s.last_used > self.session_ttl]:
            del sessions[sid]
        return sessions

    def start(self, device: str) -> Session | None:
        """Start a session; None when the device's queue is empty (the 204 answer).

        Raises :class:`SessionLimitError` when the device already has
        ``max_sessions`` active sessions.
        """
        now = self._clock()
        sessions = self._expire(device, now)
        self._sessions[device] = sessions
        if len(sessions) >= self.max_sessions:
            oldest = min(s.last_used for s in sessions.values())
            raise SessionLimitError(max(1, math.ceil(oldest + self.session_ttl - now)))
        queue = self._queues.get(device)
        if queue is None:
            queue = self._queues[device] = dict.fromkeys(self.store.live_keys())
        if not queue:
            return None
        session = Session(id=str(uuid.uuid4()), device=device, keys=list(queue), last_used=now)
        sessions[session.id] = session
        return session

    def pages(self, session: Session) -> int:
        """Number of pages ``session`` was announced with."""
        return math.ceil(session.total / self.page_size)

    def session(self, device: str, session_id: str) -> Session | None:
        """The active session ``session_id`` of ``device``; None if it already ended.

        Raises :class:`UnknownSessionError` if it never existed for this device
        or expired.
        """
        session = self._expire(device, self._clock()).get(session_id)
        if session is not None:
            return session
        if self._ended.get(session_id) == device:
            return None
        raise UnknownSessionError(session_id)

    def _end(self, session: Session) -> None:
        self._sessions[session.device].pop(session.id, None)
        self._ended[session.id] = session.device
        if len(self._ended) > _ENDED_SESSIONS_KEPT:
            del self._ended[next(iter(self._ended))]

    def has_page(self, session: Session) -> bool:
        """Whether the next fetch of ``session`` would serve a page rather than 204."""
        queue = self._queues[session.device]
        keys = session.keys
        # Skipping keys that left the queue now is what the next fetch would do anyway.
        while session.cursor < len(keys) and keys[session.cursor] not in queue:
            session.cursor += 1
        return session.cursor < len(keys)

    def fetch(self, session: Session, *, leave_out: int = 0) -> Page | None:
        """Serve and consume the next page of ``session``; None (the 204) once exhausted.

        ``leave_out`` drops that many entries from the end of the page and lists
        them in ``failed_objects``; they are consumed from the session but stay
        queued, so a later session delivers them.
        """
        queue = self._queues[session.device]
        keys = session.keys
        cursor = session.cursor
        picked: list[Key] = []
        page_size = self.page_size
        while cursor < len(keys) and len(picked) < page_size:
            key = keys[cursor]
            cursor += 1
            if key in queue:
                picked.append(key)
        session.cursor = cursor
        if not picked:
            self._end(session)
            return None
        session.last_used = self._clock()
        served = picked[: max(0, len(picked) - leave_out)]
        failed = picked[len(served) :]
        return Page(
            items=[self._item(key) for key in served],
            count_left=session.remaining,
            failed_objects=[{"type": type_, "id": id_} for type_, id_ in failed],
        )

    def _item(self, key: Key) -> dict[str, Any]:
        type_, id_ = key
        data, revision, event = self.store.current(key)
        return {
            "data": {"id": id_} if data is None else data,
            "meta": {
                "type": type_,
                "sync": {
                    "event_type": event,
                    "ack_key": ack_key(type_, id_, revision),
                    "revision": revision,
                },
            },
        }

    # -- acknowledgements ------------------------------------------------------

    def ack(self, device: str, keys: Iterable[str]) -> int:
        """Acknowledge ack keys; returns how many queue entries they removed.

        An entry is removed only if the key carries its current revision: a
        record changed since delivery stays queued.  Unknown keys are ignored.
        """
        queue = self._queues.get(device)
        if queue is None:
            return 0
        removed = 0
        for raw in keys:
            parsed = parse_ack_key(raw)
            if parsed is None:
                continue
            key, revision = parsed
            if key in queue and self.store.revision(key) == revision:
                del queue[key]
                removed += 1
        return removed

    # -- introspection ---------------------------------------------------------

    def queued(self, device: str) -> int | None:
        """Number of entries in ``device``'s queue, None if it has none yet."""
        queue = self._queues.get(device)
        return None if queue is None else len(queue)

    def active_sessions(self, device: str) -> int:
        """Number of active (not ended, not expired) sessions of ``device``."""
        return len(self._expire(device, self._clock()))

    def devices(self) -> list[str]:
        """Every device that has a queue, in order of first session."""
        return list(self._queues)
