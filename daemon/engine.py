"""Wiring: config → replica + connector clients → pull and push cycles."""

from __future__ import annotations

import difflib
import json
import time
from collections.abc import AsyncIterator, Callable, Collection
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import anyio
import structlog

from replicad.connectors.ratelimit import TokenBucket, parse_rate
from replicad.connectors.retry import RetryPolicy
from replicad.daemon.alerts import Alerts
from replicad.daemon.config import Config, ConfigError, Connection, Sync, read_token
from replicad.daemon.kinds import KINDS
from replicad.daemon.logs import register_secret
from replicad.daemon.pull import (
    PullOutcome,
    PullProgress,
    StaleDevice,
    pull_cycle,
    pull_naming,
)
from replicad.daemon.push import PushReport, push_cycle, push_source
from replicad.store import Naming, Replica

if TYPE_CHECKING:
    from replicad.connectors.pull_model import PullConnector
    from replicad.connectors.push_model import PushConnector

log = structlog.get_logger("replicad.engine")


def _budget_key(connection: str) -> str:
    return f"rate_budget.{connection}"


def retry_policy(conn: Connection) -> RetryPolicy:
    """A connection's bounded retries, from its config."""
    return RetryPolicy(conn.max_retries, conn.retry_backoff, conn.retry_backoff_max)


def connection_token(conn: Connection) -> str:
    """A connection's token, read now and registered for redaction from the logs."""
    token = read_token(conn)
    register_secret(token)
    return token


def pull_client(
    conn: Connection, device_uuid: str, retry: RetryPolicy | None = None
) -> PullConnector:
    """The client a pull connection reads with (its kind's factory); reads the token now."""
    factory = KINDS[conn.kind].pull_client
    assert factory is not None  # config checks that pull syncs name a pull kind
    return factory(conn, device_uuid, connection_token(conn), retry or retry_policy(conn))


def push_connector(
    conn: Connection, sync: Sync, bucket: TokenBucket | None = None
) -> PushConnector:
    """The client a push sync sends with (settings are per sync); reads the token now.
    ``bucket``: the connection's budget, when several syncs share it."""
    factory = KINDS[conn.kind].push_client
    assert factory is not None  # config checks that push syncs name a push kind
    return factory(conn, sync, connection_token(conn), retry_policy(conn), bucket)


def connection_bucket(conn: Connection) -> TokenBucket | None:
    """A connection's own rate budget (None: it has no rate_limit)."""
    return TokenBucket(parse_rate(conn.rate_limit)) if conn.rate_limit else None


@dataclass(slots=True)
class Engine:
    """An open replica and the clients of its connections (each with its own bucket)."""

    config: Config
    replica: Replica
    clients: dict[str, PullConnector] = field(default_factory=dict)
    pushers: dict[str, PushConnector] = field(default_factory=dict)
    # Push budgets per connection: the remote counts requests per token, not per sync.
    push_buckets: dict[str, TokenBucket | None] = field(default_factory=dict)
    alerts: Alerts = field(init=False)

    def __post_init__(self) -> None:
        self.alerts = Alerts(self.replica)

    async def client(self, conn: Connection) -> PullConnector:
        """The (cached) client of a connection, its rate budget taken over from the
        previous client or process (see ``save_budget``)."""
        device = await self.replica.device_uuid(conn.name, conn.device_uuid)
        cached = self.clients.get(conn.name)
        if cached is not None and cached.identity != device:
            # `replicad resync` gave the connection a new identity while the daemon ran.
            await self.save_budget(conn.name)
            await cached.aclose()
            del self.clients[conn.name]
        if conn.name not in self.clients:
            client = pull_client(conn, device)
            saved = await self.replica.meta(_budget_key(conn.name))
            if saved is not None:
                try:
                    state = json.loads(saved)
                except ValueError:
                    state = None
                if not client.bucket.restore(state, time.time()):
                    log.warning("ratelimit.state_ignored", connection=conn.name)
            self.clients[conn.name] = client
        return self.clients[conn.name]

    async def save_budget(self, name: str) -> None:
        """Keep a connection's rate budget in the replica, so that a restart (or a
        reload) does not start from a full bucket and exceed the remote's budget."""
        client = self.clients.get(name)
        if client is None:
            return
        state = client.bucket.state(time.time())
        try:
            await self.replica.set_meta(_budget_key(name), json.dumps(state))
        except Exception as e:  # best effort: never hide the cycle's own outcome
            log.warning("ratelimit.state_not_saved", connection=name, error=str(e))

    def pull_syncs(self) -> list[Sync]:
        """The syncs a cycle runs: pull, not paused."""
        return [s for s in self.config.syncs.values() if s.direction == "pull" and not s.paused]

    async def pull(self, sync: Sync, progress: PullProgress | None = None) -> PullOutcome:
        """One pull cycle of a sync."""
        conn = self.config.connections[sync.connection]
        client = await self.client(conn)
        outcome = PullOutcome()
        try:
            async with self.alerts.run(sync) as run:
                try:
                    try:
                        await pull_cycle(self.replica, sync, conn, client, progress, outcome)
                    except StaleDevice:
                        # `replicad resync` took a new device since the client was made.
                        client = await self.client(conn)
                        await pull_cycle(self.replica, sync, conn, client, progress, outcome)
                finally:
                    c = run.counts
                    c.created, c.updated, c.deleted = (
                        outcome.created,
                        outcome.updated,
                        outcome.deleted,
                    )
                    c.quarantined, c.skipped = outcome.quarantined, outcome.skipped
        finally:
            log_repairs(self.replica)
            with anyio.CancelScope(shield=True):
                await self.save_budget(conn.name)
        log.info(
            "pull.done",
            sync=sync.label,
            sessions=outcome.sessions,
            pages=outcome.pages,
            items=outcome.items,
            applied=outcome.applied,
            requests=client.stats.total,
        )
        return outcome

    def push_syncs(self) -> list[Sync]:
        """The push syncs a cycle runs: not paused."""
        return [s for s in self.config.syncs.values() if s.direction == "push" and not s.paused]

    def pusher(self, sync: Sync) -> PushConnector:
        """The (cached) client of a push sync; the syncs of one connection share its
        rate budget."""
        if sync.label not in self.pushers:
            conn = self.config.connections[sync.connection]
            if conn.name not in self.push_buckets:
                self.push_buckets[conn.name] = connection_bucket(conn)
            self.pushers[sync.label] = push_connector(conn, sync, self.push_buckets[conn.name])
        return self.pushers[sync.label]

    async def push(self, sync: Sync, on_batch: Callable[[], None] | None = None) -> PushReport:
        """One push cycle of a sync."""
        pusher = self.pusher(sync)
        async with self.alerts.run(sync) as run:
            report = await push_cycle(self.replica, sync, pusher, on_batch, run.counts)
        if report.batches:
            log.info(
                "push.done", sync=sync.label, batches=report.batches, sent=report.sent,
                confirmed=report.confirmed, rejected=report.rejected,
            )  # fmt: skip
        return report

    async def reconfigure(self, config: Config) -> None:
        """Switch to a new config (same replica): fresh clients, syncs registered again."""
        await self.aclose()
        self.config = config
        await register(self.replica, config)

    async def aclose(self) -> None:
        """Close every client (their budgets were kept at the end of each pull cycle,
        the only place they send from)."""
        for client in self.clients.values():
            await client.aclose()
        for pusher in self.pushers.values():
            await pusher.aclose()
        self.clients.clear()
        self.pushers.clear()
        self.push_buckets.clear()


def _log_wait(what: str) -> None:
    log.warning("replica.busy", waiting=what)


def log_repairs(replica: Replica) -> None:
    """Log what the store put back of the schema an app had changed."""
    for what in replica.repairs:
        log.warning("replica.repaired", what=what)
    for what in replica.copy_notes:
        log.warning("replica.copy", what=what)
    replica.repairs.clear()
    replica.copy_notes.clear()


def check_push_sources(config: Config, tables: Collection[str], only: str | None = None) -> None:
    """A push ``source`` that names no table of the replica is most likely a typo (and
    the table meant would stay read-only). Refused, with the close names, unless it is
    the table a pull sync will make for a type its remote is known to send (that type
    has not arrived yet: logged). ``only``: check that sync alone."""
    coming = expected_tables(config)
    if coming is None:
        coming = {s.source for s in config.syncs.values()}  # cannot tell: trust them
    for s in config.syncs.values():
        if s.direction != "push" or s.diffed is not None or s.source in tables:
            continue
        if only is not None and s.label != only:
            continue
        if s.source in coming:
            log.warning("push.source_missing", sync=s.label, source=s.source,
                        tables=sorted(tables))  # fmt: skip
            continue
        names = sorted({*tables, *coming})
        close = difflib.get_close_matches(s.source, names, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}? " if close else ""
        shown = ", ".join(sorted(tables)) or "none yet"
        raise ConfigError(
            f"syncs.{s.label}.source: the replica has no table {s.source!r}, and no pull "
            f"sync makes one of that name; {hint}(tables: {shown})"
        )


def expected_tables(config: Config) -> set[str] | None:
    """The tables the pull syncs make for the types their remotes are known to send
    (None when a pull's remote does not say which types it sends)."""
    out: set[str] = set()
    for s in config.syncs.values():
        if s.direction != "pull":
            continue
        kind = KINDS[config.connections[s.connection].kind]
        if not (s.types or kind.known_types):
            return None
        for type_ in s.types or kind.known_types:
            name = f"{s.prefix}{type_}"
            out.add(f"{name}_history" if s.operation == "append" else name)
    return out


async def apply_pull_naming(replica: Replica, config: Config) -> None:
    """A pull's mappings (or field_normalization) that would move or drop stored
    columns apply only once the operator asked for a resync of it; until then the
    config is refused."""
    for sync in config.syncs.values():
        if sync.direction != "pull":
            continue
        # The default naming too: its style is what a later change is measured from.
        naming = pull_naming(sync) or Naming()
        changes = await replica.naming_changes(sync.label, naming)
        if not changes:
            await replica.naming_applied(sync.label, naming)
            added = await replica.add_mapped_columns(sync.label, naming)
            if added:
                log.info("schema.columns_added", sync=sync.label, columns=added)
            continue
        if await replica.resync_since(sync.connection) is None:
            raise ConfigError(
                f"syncs.{sync.label}.{changes[0].key}: {changes[0].describe()}"
                + (f" (and {len(changes) - 1} more)" if len(changes) > 1 else "")
                + f"; this changes what apps read: run `replicad resync {sync.label}` to "
                "apply it (the full pull then fills the columns)"
            )
        await replica.apply_naming(changes)
        await replica.naming_applied(sync.label, naming)
        await replica.add_mapped_columns(sync.label, naming)
        for c in changes:
            log.warning("schema.naming_applied", sync=sync.label, change=c.describe())


async def register(replica: Replica, config: Config) -> None:
    """Make the configured syncs visible in status, and their push tables writable."""
    check_push_sources(config, replica.catalog.tables.keys())
    await apply_pull_naming(replica, config)
    for sync in config.syncs.values():
        await replica.register_sync(sync.label, sync.direction, sync.connection)
    # Paused push syncs keep their tables writable: edits wait in the outbox.
    await replica.register_push(
        [push_source(s) for s in config.syncs.values() if s.direction == "push"]
    )


@asynccontextmanager
async def open_engine(
    config: Config, on_wait: Callable[[str], None] | None = None, *, daemon: bool = False
) -> AsyncIterator[Engine]:
    """Open (and lock) the replica, register the configured syncs, yield an Engine
    (``daemon``: for ``replicad run``, whose lock says so).

    While an app holds the replica's write lock, opening and registering wait (and
    ``on_wait`` hears why; by default it is logged) instead of failing.
    """
    replica = await Replica.open(config.replica_path, on_wait or _log_wait, daemon=daemon)
    log_repairs(replica)
    engine = Engine(config, replica)
    try:
        await register(replica, config)
        await engine.alerts.load()
        yield engine
    finally:
        try:
            await engine.aclose()
        finally:
            await replica.close()
