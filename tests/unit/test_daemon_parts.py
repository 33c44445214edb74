"""Small daemon parts: notify addresses, journald priorities, backoff, loop health."""

from __future__ import annotations

import json
import os
import random
import socket
import time
from pathlib import Path

import pytest

from replicad.daemon.cli import build_parser
from replicad.daemon.heartbeat import LoopState, Supervision
from replicad.daemon.logs import JournalRenderer, under_journald
from replicad.daemon.notify import Notifier
from replicad.daemon.run import BACKOFF_CAP, backoff


def test_notifier_reaches_a_path_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """NOTIFY_SOCKET as a path gets READY=1 with a STATUS line; WATCHDOG_USEC halves."""
    path = str(tmp_path / "n")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(path)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "4000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    n = Notifier.from_env()
    assert n.watchdog_interval == 2.0
    n.ready("idle")
    n.status("idle")  # unchanged: not sent again
    n.watchdog()
    assert server.recv(100) == b"READY=1\nSTATUS=idle"
    assert server.recv(100) == b"WATCHDOG=1"
    n.close()
    server.close()


def test_a_receiver_that_never_reads_cannot_block(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a socket nobody reads, sends return at once: STATUS lines are dropped, a
    WATCHDOG=1 that could not go says so (retried next tick), and a held STOPPING=1
    goes out first once the receiver reads again."""
    path = str(tmp_path / "n")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    server.bind(path)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    n = Notifier.from_env()
    started = time.monotonic()
    sent = [n.watchdog() for _ in range(5000)]
    for i in range(2000):
        n.status(f"busy {i}")
    n.stopping()
    assert time.monotonic() - started < 5  # a blocking socket would never return
    assert sent[0] and not sent[-1]
    server.setblocking(False)
    drained = 0
    while True:
        try:
            server.recv(100)
            drained += 1
        except BlockingIOError:
            break
    assert drained == sent.count(True)
    assert n.watchdog()
    assert server.recv(100) == b"STOPPING=1"
    assert server.recv(100) == b"WATCHDOG=1"
    n.close()
    server.close()


def test_watchdog_for_another_pid_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    """A WATCHDOG_PID that is not ours disables the pings; no socket means no-op."""
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.setenv("WATCHDOG_USEC", "4000000")
    monkeypatch.setenv("WATCHDOG_PID", "1")
    n = Notifier.from_env()
    assert n.watchdog_interval is None and not n.enabled
    n.ready("x")  # does nothing, raises nothing


def test_journal_renderer_prefixes_priority() -> None:
    """Under journald each JSON line starts with its syslog priority."""
    line = JournalRenderer()(None, "info", {"event": "pull.done", "level": "warning"})
    assert line.startswith("<4>") and json.loads(line[3:])["event"] == "pull.done"


def test_journald_detected_only_for_matching_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    """JOURNAL_STREAM must name stderr's own device and inode."""
    monkeypatch.setenv("JOURNAL_STREAM", "1:2")
    assert not under_journald()


def test_backoff_is_jittered_and_capped() -> None:
    """Backoff doubles per failure, with jitter, and never exceeds the cap."""
    rng = random.Random(1)
    assert 0.5 <= backoff(1.0, 1, rng) <= 1.0
    assert 4.0 <= backoff(1.0, 4, rng) <= 8.0
    assert backoff(30.0, 50, rng) <= BACKOFF_CAP


def test_waiting_is_healthy_and_stuck_is_not() -> None:
    """A loop waiting out a backoff is healthy; one busy without progress is not."""
    s = Supervision(pid=1, syncs={"a": LoopState("pull"), "b": LoopState("push")})
    s.syncs["a"].failed("down", 300)
    s.syncs["b"].busy()
    now = s.syncs["b"].touched
    assert s.healthy(now + 60)
    assert not s.healthy(now + 3600)
    assert "backing off" in s.summary()


async def test_a_failure_is_recorded_even_while_an_app_holds_the_write_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cycle failing while an app holds the write lock still leaves "failing" and
    its error in replicad_syncs (the record is retried), never "syncing"."""
    import sqlite3 as sqlite

    import anyio

    from replicad.daemon import cycle_status
    from replicad.store import Replica

    monkeypatch.setattr(cycle_status, "RECORD_PAUSE", 0.2)
    replica = await Replica.open(tmp_path / "r.db")
    try:
        await replica.register_sync("mirror", "pull", "crm")
        await replica.sync_started("mirror", None)
        await replica.db.execute("PRAGMA busy_timeout = 100")
        app = sqlite.connect(tmp_path / "r.db", isolation_level=None, check_same_thread=False)
        app.execute("BEGIN IMMEDIATE")

        async def release() -> None:
            await anyio.sleep(0.6)
            app.execute("COMMIT")

        async with anyio.create_task_group() as tg:
            tg.start_soon(release)
            with pytest.raises(RuntimeError):
                async with cycle_status.recorded_cycle(replica, "mirror"):
                    raise RuntimeError("remote broke")
        rows = await replica.db.execute_fetchall(
            "SELECT state, last_error FROM replicad_syncs WHERE sync = 'mirror'"
        )
        assert list(rows) == [("failing", "remote broke")]
        app.close()
    finally:
        await replica.close()


def test_a_heartbeat_that_cannot_be_written_leaves_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk fails the heartbeat write cleanly: no .tmp file is left behind."""
    import errno

    from replicad.daemon import heartbeat

    def full(*_: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(heartbeat.os, "replace", full)
    with pytest.raises(OSError):
        heartbeat.write_heartbeat(tmp_path / "r.db", heartbeat.Supervision(pid=1))
    assert list(tmp_path.iterdir()) == []


def test_backoff_starts_over_after_a_cycle_that_made_progress() -> None:
    """Sustained partial faults: a failed cycle that got pages or batches through
    backs off from the start, one that got nothing through doubles its wait."""
    from replicad.daemon.run import failures_after

    assert failures_after(5, progressed=True) == 1
    assert failures_after(5, progressed=False) == 6


async def test_a_batch_without_outcomes_is_not_progress(tmp_path: Path) -> None:
    """A push batch that fails without any outcome does not count as progress (or the
    cycle backoff would start over every time: a hot loop on a stuck batch)."""
    import sqlite3 as sqlite

    from replicad.connectors.errors import RemoteUnreachable
    from replicad.connectors.push_model import PushBatch, PushResult
    from replicad.daemon.config import Sync
    from replicad.daemon.push import push_cycle
    from replicad.store import PageBatch, PullTarget, PushSource, RecordChange, Replica

    replica = await Replica.open(tmp_path / "r.db")
    try:
        await replica.register_sync("mirror", "pull", "crm")
        await replica.register_sync("up", "push", "out")
        change = RecordChange("contact", 1, 1, "k1", False, {"id": 1, "name": "a"})
        await replica.apply_page(PullTarget("mirror", "crm"), PageBatch([change]))
        await replica.register_push([PushSource("up", "contact")])
        app = sqlite.connect(tmp_path / "r.db", isolation_level=None)
        app.execute("UPDATE contact SET name = 'b' WHERE id = 1")
        app.close()

        class Failing:
            async def push(self, batch: PushBatch) -> PushResult:
                return PushResult(error=RemoteUnreachable("down"))

            async def check_credentials(self, object: str) -> None:
                pass

            async def aclose(self) -> None:
                pass

        progress: list[int] = []
        sync = Sync("up", "push", "out", operation="upsert", source="contact", object="c")
        with pytest.raises(RemoteUnreachable):
            await push_cycle(replica, sync, Failing(), lambda: progress.append(1))
        assert progress == []
    finally:
        await replica.close()


def test_push_syncs_of_one_connection_share_its_rate_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The remote counts requests per token: two push syncs on one connection draw
    from one bucket, a sync on another connection from its own."""
    from replicad.daemon.config import Config, Connection, Sync
    from replicad.daemon.engine import Engine

    monkeypatch.setenv("OUT_TOKEN", "t" * 40)
    conns = {
        n: Connection(n, "cdm", "https://cdm.test", token_env="OUT_TOKEN", rate_limit="60/m")
        for n in ("a", "b")
    }
    syncs = {
        label: Sync(label, "push", conn, operation="upsert", source=label, object=label)
        for label, conn in (("one", "a"), ("two", "a"), ("three", "b"))
    }
    engine = Engine(Config(tmp_path / "c.toml", tmp_path / "r.db", conns, syncs), None)  # type: ignore[arg-type]
    one, two, three = (engine.pusher(s).bucket for s in syncs.values())  # type: ignore[attr-defined]
    assert one is not None and one is two and three is not one


async def test_a_failing_batch_lets_the_batches_out_finish(tmp_path: Path) -> None:
    """Batches overlap: when one fails, the others already out are not cancelled
    mid-send; their outcomes are recorded, then the cycle raises the failure."""
    import sqlite3 as sqlite

    import anyio

    from replicad.connectors.errors import RemoteUnreachable
    from replicad.connectors.push_model import PushBatch, PushOutcome, PushResult
    from replicad.daemon.config import Sync
    from replicad.daemon.push import push_cycle
    from replicad.store import PageBatch, PullTarget, PushSource, RecordChange, Replica

    replica = await Replica.open(tmp_path / "r.db")
    try:
        await replica.register_sync("mirror", "pull", "crm")
        await replica.register_sync("up", "push", "out")
        changes = [RecordChange("contact", i, 1, f"k{i}", False, {"id": i, "name": "a"})
                   for i in (1, 2)]  # fmt: skip
        await replica.apply_page(PullTarget("mirror", "crm"), PageBatch(changes))
        await replica.register_push([PushSource("up", "contact")])
        app = sqlite.connect(tmp_path / "r.db", isolation_level=None)
        app.execute("UPDATE contact SET name = 'b'")
        app.close()
        calls: list[int] = []

        class OneFails:
            async def push(self, batch: PushBatch) -> PushResult:
                calls.append(len(calls))
                if len(calls) == 1:
                    await anyio.sleep(0.01)
                    return PushResult(error=RemoteUnreachable("down"))
                await anyio.sleep(0.3)  # still out when the other fails
                return PushResult([PushOutcome(i.entry, id=i.id) for i in batch.items])

            async def check_credentials(self, object: str) -> None:
                pass

            async def aclose(self) -> None:
                pass

        sync = Sync("up", "push", "out", operation="upsert", source="contact", object="c",
                    batch_size=1)  # fmt: skip
        with pytest.raises(RemoteUnreachable):
            await push_cycle(replica, sync, OneFails())
        states = await replica.db.execute_fetchall(
            "SELECT state FROM _replicad_outbox ORDER BY seq"
        )
        assert len(calls) == 2 and sorted(s for (s,) in states) == ["confirmed", "in_flight"]
    finally:
        await replica.close()


@pytest.mark.parametrize(
    "argv",
    [
        ["conflicts", "--config", "mine.toml", "resolve", "1", "--keep", "local"],
        ["conflicts", "resolve", "1", "--keep", "local", "--config", "mine.toml"],
    ],
)
def test_the_config_given_before_or_after_a_nested_action_is_the_one_used(
    argv: list[str],
) -> None:
    """`conflicts --config F resolve …` acts on F's replica, not on the default one."""
    assert build_parser().parse_args(argv).config == Path("mine.toml")


def test_no_config_given_to_a_nested_action_leaves_the_default_search() -> None:
    """Without --config the command still looks where the README says (None here)."""
    args = build_parser().parse_args(["conflicts", "resolve", "1", "--keep", "remote"])
    assert args.config is None


@pytest.mark.parametrize(("recorded", "code"), [(True, 0), (False, 1)])
def test_a_daemon_that_stops_is_judged_by_what_it_recorded(
    monkeypatch: pytest.MonkeyPatch, recorded: bool, code: int
) -> None:
    """`sync`/`resync` following the daemon: a cycle it recorded just before stopping
    is done (exit 0); one it had not finished is a failure (exit 1), not a 15-minute
    wait."""
    import anyio

    from replicad.daemon import oneshot

    monkeypatch.setattr(oneshot, "is_held", lambda _path: None)  # the daemon is gone
    success = "2030-01-01T00:00:00.000Z" if recorded else None
    report = {"syncs": [{"sync": "mirror", "direction": "pull", "last_success": success}]}
    monkeypatch.setattr(oneshot, "status_report", lambda _config: report)

    class Config:
        replica_path = Path("/nonexistent/replica.db")

    def done(s: dict[str, str | None]) -> bool:
        return (s["last_success"] or "") > "2026"

    got = anyio.run(
        oneshot.watch_daemon, Config(), 123, ["mirror"], "2026-01-01T00:00:00.000Z", done, "done"
    )
    assert got == code
