"""``replicad retry [--all|ID]``: requeue rejected local edits, or one create in doubt."""

from __future__ import annotations

import sys

from replicad.daemon import exits
from replicad.daemon.config import Config
from replicad.store.operate import entry_state, in_doubt_entries
from replicad.store.outbox import requeue_at


def retry_rejected(config: Config, entry: int | None) -> int:
    """Move rejected outbox entries back to pending, or the create in doubt named by
    its entry (posted again unchecked: it may exist upstream, so never by ``--all``);
    exit 1 if the entry is neither.

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
    print(f"requeued {n} local edit{'' if n == 1 else 's'}; the next push sends them")
    doubts = in_doubt_entries(config.replica_path) if entry is None else []
    if doubts:
        listed = ", ".join(str(d) for d in doubts[:10]) + (", …" if len(doubts) > 10 else "")
        print(
            f"left {len(doubts)} create{'' if len(doubts) == 1 else 's'} in doubt (entries "
            f"{listed}): each may already exist at the destination; check there, then "
            "`replicad retry ENTRY` posts it again"
        )
    return exits.OK
