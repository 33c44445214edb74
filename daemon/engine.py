"""Wiring: config → replica + connector clients → pull cycles."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import structlog

from connectors.retry import RetryPolicy
from connectors.sell import SellClient, SellSettings
from daemon.config import Config, Connection, Sync, read_token
from daemon.logs import register_secret
from daemon.pull import PullOutcome, PullProgress, pull_cycle
from store import Replica

log = structlog.get_logger("replicad.engine")


def sell_settings(conn: Connection, device_uuid: str) -> SellSettings:
    """A Sell client's settings from a connection's config; reads the token now."""
    token = read_token(conn)
    register_secret(token)
    return SellSettings(
        base_url=conn.base_url,
        token=token,
        device_uuid=device_uuid,
        rate_limit=conn.rate_limit,
        timeout=conn.timeout,
        retry=RetryPolicy(conn.max_retries, conn.retry_backoff, conn.retry_backoff_max),
    )


@dataclass(slots=True)
class Engine:
    """An open replica and the clients of its connections (each with its own bucket)."""

    config: Config
    replica: Replica
    clients: dict[str, SellClient] = field(default_factory=dict)

    async def client(self, conn: Connection) -> SellClient:
        """The (cached) client of a connection."""
        if conn.name not in self.clients:
            device = await self.replica.device_uuid(conn.name, conn.device_uuid)
            self.clients[conn.name] = SellClient(sell_settings(conn, device))
        return self.clients[conn.name]

    def pull_syncs(self) -> list[Sync]:
        """The syncs a cycle runs: pull, not paused."""
        return [s for s in self.config.syncs.values() if s.direction == "pull" and not s.paused]

    async def pull(self, sync: Sync, progress: PullProgress | None = None) -> PullOutcome:
        """One pull cycle of a sync."""
        conn = self.config.connections[sync.connection]
        client = await self.client(conn)
        outcome = await pull_cycle(self.replica, sync, conn, client, progress)
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

    async def aclose(self) -> None:
        """Close every client."""
        for client in self.clients.values():
            await client.aclose()
        self.clients.clear()


@asynccontextmanager
async def open_engine(config: Config) -> AsyncIterator[Engine]:
    """Open (and lock) the replica, register the configured syncs, yield an Engine."""
    replica = await Replica.open(config.replica_path)
    engine = Engine(config, replica)
    try:
        for sync in config.syncs.values():
            await replica.register_sync(sync.label, sync.direction, sync.connection)
        yield engine
    finally:
        try:
            await engine.aclose()
        finally:
            await replica.close()
