"""``replicad status``: the replica's status merged with the config, as data or text."""

from __future__ import annotations

from typing import Any

from replicad.daemon.config import Config
from replicad.daemon.heartbeat import read_heartbeat
from replicad.store.status import read_status


def status_report(config: Config) -> dict[str, Any]:
    """Status of every configured sync (syncs never run are listed too)."""
    report = read_status(config.replica_path)
    known = {s["sync"]: s for s in report["syncs"]}
    syncs = []
    for sync in config.syncs.values():
        entry = known.get(sync.label, {"sync": sync.label, "state": "never run"})
        entry.update(
            direction=sync.direction,
            connection=sync.connection,
            paused=sync.paused,
            interval_s=sync.interval,
        )
        entry.setdefault("pending_local_edits", 0)
        entry.setdefault("failed_local_edits", 0)
        entry.setdefault("conflicts", 0)
        syncs.append(entry)
    report["syncs"] = syncs
    if report["daemon"]["running"]:
        beat = read_heartbeat(config.replica_path)
        if beat is not None and beat.get("pid") == report["daemon"]["pid"]:
            report["daemon"].update(
                heartbeat=beat.get("heartbeat"), healthy=beat.get("healthy"),
                started=beat.get("started"),
            )  # fmt: skip
            for entry in syncs:
                live = beat.get("syncs", {}).get(entry["sync"])
                if live:
                    entry["daemon"] = live
    return report


def render_status(report: dict[str, Any]) -> str:
    """A human-readable status."""
    daemon = report["daemon"]
    lines = [f"replica  {report['replica']}" + ("" if report["exists"] else "  (not created yet)")]
    if daemon["running"]:
        beat = f", heartbeat {daemon['heartbeat']}" if daemon.get("heartbeat") else ""
        health = "" if daemon.get("healthy", True) else ", a loop looks stuck"
        lines.append(f"daemon   running (pid {daemon['pid']}{beat}{health})")
    else:
        lines.append("daemon   not running")
    for s in report["syncs"]:
        state = "paused" if s.get("paused") else s.get("state", "never run")
        lines.append("")
        lines.append(f"sync {s['sync']}  ({s['direction']} via {s['connection']})  {state}")
        live = s.get("daemon")
        if live:
            now = live["activity"]
            if live.get("progress"):
                done, total = live["progress"]
                now += f" {done}/{total}"
            if live.get("next_run"):
                now += f", next run {live['next_run']}"
            elif live["direction"] == "push" and live["activity"] == "idle":
                now += ", waiting for local edits"
            lines.append(f"  now            {now}")
        if s.get("waiting_for_budget_until"):
            lines.append(
                "  rate budget    pacing this pull: the connection's rate_limit, not the "
                "network, sets its speed"
            )
        lines.append(f"  last success   {s.get('last_success') or '-'}")
        if s.get("last_error"):
            lines.append(f"  last error     {s['last_error']}  at {s.get('last_error_at')}")
        run = s.get("last_run")
        if run:
            counts = ", ".join(
                f"{run[k]} {k.replace('_', ' ')}"
                for k in ("created", "updated", "deleted", "rejected", "not_found")
                if run.get(k)
            )
            lines.append(
                f"  last run       {run['status']} at {run['finished_at']}: "
                f"{run['processed']} processed" + (f" ({counts})" if counts else "")
            )
        for alert in s.get("alerts") or []:
            lines.append(
                f"  ALERT          {alert['type']}: {alert['message']} (since {alert['raised_at']})"
            )
        if s.get("resync_since"):
            lines.append(
                f"  full pull      running since {s['resync_since']} (a copy, or resync): "
                "rows it does not bring are removed once it has drained"
            )
        if s.get("items_total") is not None:
            lines.append(f"  last session   {s.get('items_done', 0)}/{s['items_total']} items")
        if s["direction"] == "push":
            lines.append(
                f"  local edits    {s['pending_local_edits']} pending "
                f"({s.get('in_flight_local_edits', 0)} in flight), "
                f"{s['failed_local_edits']} rejected"
                + (
                    f" ({s['in_doubt_local_edits']} in doubt)"
                    if s.get("in_doubt_local_edits")
                    else ""
                )
                + f", conflicts {s['conflicts']}"
                + _retry_hint(s)
            )
        else:
            lines.append(
                f"  pending acks {s.get('pending_acks', 0)}, failed objects "
                f"{s.get('failed_objects', 0)}, quarantined {s.get('quarantined', 0)}"
            )
    if report["tables"]:
        lines.append("")
        lines.append("tables")
        for t in report["tables"]:
            lines.append(f"  {t['name']:<24} {t['rows']:>9} rows  (sync {t['sync']})")
    return "\n".join(lines) + "\n"


def _retry_hint(sync: dict[str, Any]) -> str:
    """What to run for a push sync's failed edits: `retry --all` requeues rejections;
    a create in doubt may exist upstream, so it is posted again only by its entry."""
    doubt = sync.get("in_doubt_local_edits", 0)
    if not sync["failed_local_edits"]:
        return ""
    if not doubt:
        return "  (see replicad_outbox; `replicad retry --all`)"
    return (
        "  (see replicad_outbox; `replicad retry --all` requeues the rejected ones; for a "
        "create in doubt, check the destination, then `replicad retry ENTRY`)"
    )
