"""``replicad validate``: check the config, tokens and credentials; change nothing.

Like Census's ``validate_only``: the config was already parsed whole by the time this
runs; here each connection's token is read and, where the remote is reachable, tried
against a read-only endpoint. The replica is not opened for writing.
"""

from __future__ import annotations

import sys
import uuid
from dataclasses import replace

from replicad.connectors.errors import AuthRefused, ConnectorError
from replicad.connectors.retry import RetryPolicy
from replicad.daemon import exits
from replicad.daemon.config import Config
from replicad.daemon.engine import check_push_sources, connection_token, pull_client
from replicad.daemon.kinds import KINDS
from replicad.store.status import read_status


async def validate(config: Config) -> int:
    """Print one line per check; exit 3 on refused credentials, else 0."""
    print(
        f"config {config.path}: ok ({len(config.connections)} connections, "
        f"{len(config.syncs)} syncs)"
    )
    print(f"replica {config.replica_path}")
    if config.replica_path.exists():
        tables = {t["name"] for t in read_status(config.replica_path)["tables"]}
        check_push_sources(config, tables)
    code = exits.OK
    for conn in config.connections.values():
        if KINDS[conn.kind].pull_client is None:
            connection_token(conn)  # a missing or unreadable token is a config error
            print(f"connection {conn.name}: token found ({conn.kind}: not checked remotely)")
            continue
        # A quick answer matters more here than riding out an outage. The device UUID
        # is irrelevant to the read-only check; the replica stays closed.
        quick = replace(conn, timeout=min(conn.timeout, 10.0))
        device = conn.device_uuid or str(uuid.UUID(int=0))
        async with pull_client(
            quick, device, RetryPolicy(max_retries=1, base=0.2, cap=1.0)
        ) as client:
            try:
                await client.check_credentials()
            except AuthRefused as e:
                print(f"connection {conn.name}: {e}", file=sys.stderr)
                code = exits.AUTH
                continue
            except ConnectorError as e:
                print(f"connection {conn.name}: not reachable now, credentials unchecked ({e})")
                continue
        print(f"connection {conn.name}: credentials accepted")
    return code
