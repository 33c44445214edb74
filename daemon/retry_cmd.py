"""``replicad retry [--all|ID]``: requeue rejected local edits and creates in doubt."""

from __future__ import annotations

import sys

from replicad.daemon import exits
from replicad.daemon.config import Config
from replicad.store.operate import entry_state
from replicad.store.outbox import requeue_at


def retry_rejected(config: Config, entry: int | None) -> int:
    """Move rejected outbox entries (and creates in doubt, posted again unchecked) back
    to pending; exit 1 if the entry is neither.

    Works while the daemon runs (one short transaction on the outbox, which the daemon
    reads under its own transactions); its next push sends them.
    """
    n = requeue_at(config.replica_path, entry)
    if entry is not None and n == 0:
        state = entry_state(config.replica_path, entry)
        why = "does not exist" if state is None else f"is {state}, not rejected or in doubt"
        print(
            f"replicad: outbox entry {entry} {why}; see replicad_outbox (or `replicad status`)",
            file=sys.stderr,
        )
        return exits.FAILURE
    print(f"requeued {n} rejected local edit{'' if n == 1 else 's'}; the next push sends them")
    return exits.OK
