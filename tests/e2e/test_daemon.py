"""`replicad run` as a service: notify protocol, event-driven push, outages, reload, logs."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.e2e.harness import (
    REPLICAD,
    TOKEN,
    app_write,
    cli_env,
    emulator,
    query,
    replicad,
    wait_for,
    write_config,
)

PUSH = {"source": "contact", "object": "crm-contact"}


@contextmanager
def daemon(cfg: Path, **env: str) -> Iterator[subprocess.Popen[str]]:
    """`replicad run` with JSON logs to a file; SIGTERM on exit must give 0."""
    log = cfg.parent / "daemon.log"
    with log.open("w") as err:
        proc = subprocess.Popen(
            [REPLICAD, "run", "--config", str(cfg)], stdout=subprocess.DEVNULL, stderr=err,
            text=True, env={**cli_env(), **env},
        )  # fmt: skip
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            code = proc.wait(30)
    assert code == 0, log.read_text()[-2000:]


def events(cfg: Path) -> list[dict[str, Any]]:
    """The daemon's JSON log lines so far."""
    out = []
    for line in (cfg.parent / "daemon.log").read_text().splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


def synced(cfg: Path) -> bool:
    """The pull sync has succeeded once."""
    return any(e.get("event") == "pull.done" for e in events(cfg))


def contacts_with_email(state: dict[str, Any], email: str) -> int:
    """How many remote contacts carry this email."""
    return sum(1 for d in state["records"]["contact"].values() if d.get("email") == email)


def test_notify_ready_watchdog_stopping(tmp_path: Path) -> None:
    """READY=1, STATUS=, WATCHDOG=1 and STOPPING=1 arrive on the notify socket."""
    for abstract in (False, True):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            name = f"replicad-test-{os.getpid()}-{time.monotonic_ns()}"
            sock.bind("\0" + name)
            address = "@" + name
        else:
            address = str(tmp_path / f"notify-{int(abstract)}")
            sock.bind(address)
        sock.settimeout(20)
        got: list[str] = []
        folder = tmp_path / str(abstract)
        folder.mkdir()
        with emulator(records=50) as emu:
            cfg = write_config(folder, emu.url)
            with daemon(cfg, NOTIFY_SOCKET=address, WATCHDOG_USEC="1000000") as proc:
                while sum("WATCHDOG=1" in m for m in got) < 2 or not any(
                    m.startswith("STATUS=") and "idle" in m for m in got
                ):
                    got.append(sock.recv(4096).decode())
                proc.send_signal(signal.SIGTERM)
                while not any("STOPPING=1" in m for m in got):
                    got.append(sock.recv(4096).decode())
                proc.wait(30)
        sock.close()
        assert got[0].startswith("READY=1\nSTATUS=")
        assert any(m.startswith("STATUS=") for m in got)


def test_a_notify_socket_nobody_reads_never_blocks_the_daemon(tmp_path: Path) -> None:
    """A notify socket whose receive buffer is full (nobody reads it): the daemon
    still syncs, pushes an edit, and stops cleanly on SIGTERM."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    address = str(tmp_path / "notify-full")
    sock.bind(address)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    sock.setblocking(False)
    filler = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    filler.setblocking(False)
    try:
        while True:  # fill the buffer before the daemon starts
            filler.sendto(b"x" * 200, address)
    except BlockingIOError:
        pass
    db = tmp_path / "replica.db"
    with emulator(records=50) as emu:
        cfg = write_config(tmp_path, emu.url, push={**PUSH, "interval": "1h"})
        with daemon(cfg, NOTIFY_SOCKET=address, WATCHDOG_USEC="200000") as proc:
            wait_for(lambda: synced(cfg))
            app_write(db, "INSERT INTO contact (first_name, email) VALUES ('N', 'n@full.org')")
            wait_for(lambda: contacts_with_email(emu.control.state(), "n@full.org") == 1)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0
    filler.close()
    sock.close()


def test_local_insert_reaches_remote_within_a_second(tmp_path: Path) -> None:
    """A commit from another process wakes the push (no polling): upstream within 1 s."""
    db = tmp_path / "replica.db"
    with emulator(records=50) as emu:
        cfg = write_config(tmp_path, emu.url, push={**PUSH, "interval": "1h"})
        with daemon(cfg):
            wait_for(lambda: synced(cfg))
            time.sleep(0.3)  # let the start-up push cycle settle
            for i in range(3):
                email = f"fast{i}@example.org"
                app_write(db, f"INSERT INTO contact (first_name, email) VALUES ('F', '{email}')")
                wait_for(
                    lambda e=email: contacts_with_email(emu.control.state(), e) == 1,
                    timeout=1.0,
                    step=0.02,
                )

            # The daemon's own commits (pulls, outcomes) do not start push cycles.
            def batches() -> int:
                return sum(e.get("event") == "push.batch" for e in events(cfg))

            wait_for(lambda: batches() == 3)
            time.sleep(0.5)
            assert batches() == 3


def test_outage_keeps_daemon_up_and_edits_arrive_after(tmp_path: Path) -> None:
    """A 30 s outage (500/503 everywhere): the daemon stays up, its request count stays
    bounded, and edits made during the outage arrive after recovery."""
    db = tmp_path / "replica.db"
    with emulator(records=50) as emu:
        cfg = write_config(
            tmp_path, emu.url, push=PUSH, max_retries=2, retry_backoff="200ms",
            retry_backoff_max="1s",
        )  # fmt: skip
        with daemon(cfg) as proc:
            wait_for(lambda: synced(cfg))
            emu.control.faults(
                {"endpoint": "any", "action": "status", "status": 503, "times": 0},
                {"endpoint": "push", "action": "status", "status": 500, "times": 0},
            )
            emu.control.reset_stats()
            for i in range(5):
                app_write(db, f"INSERT INTO contact (first_name, email) VALUES ('O', 'o{i}@x.org')")
                time.sleep(6)
            assert proc.poll() is None
            requests = sum(emu.control.stats()["requests"].values())
            # Interval 1 s, retries and backoff capped: dozens of requests, not a hot loop.
            assert 5 < requests < 300, requests
            emu.control.clear_faults()
            wait_for(
                lambda: all(
                    contacts_with_email(emu.control.state(), f"o{i}@x.org") == 1 for i in range(5)
                ),
                timeout=60,
            )
            wait_for(lambda: query(db, "SELECT count(*) FROM contact WHERE _pending = 1") == [(0,)])
        assert any(e.get("event") == "push.failed" for e in events(cfg))


def test_broken_config_is_rejected_and_old_keeps_running(tmp_path: Path) -> None:
    """A broken config edit is logged and ignored; a valid one is applied without restart."""
    db = tmp_path / "replica.db"
    with emulator(records=50) as emu:
        cfg = write_config(tmp_path, emu.url, push=PUSH)
        good = cfg.read_text()
        with daemon(cfg) as proc:
            wait_for(lambda: synced(cfg))
            cfg.write_text(good + "\n[syncs.bad]\ndirection = 'sideways'\n")
            wait_for(lambda: any(e.get("event") == "config.rejected" for e in events(cfg)))
            app_write(db, "INSERT INTO contact (first_name, email) VALUES ('R', 'r@x.org')")
            wait_for(lambda: contacts_with_email(emu.control.state(), "r@x.org") == 1)
            cfg.write_text(good.replace('interval = "1s"', 'interval = "2s"'))
            wait_for(lambda: any(e.get("event") == "config.reloaded" for e in events(cfg)))
            proc.send_signal(signal.SIGHUP)
            wait_for(lambda: sum(e.get("event") == "config.reloaded" for e in events(cfg)) >= 2)
            assert proc.poll() is None


def test_json_logs_carry_no_token(tmp_path: Path) -> None:
    """Off a terminal the daemon logs JSON lines named noun.verb, and never the token."""
    db = tmp_path / "replica.db"
    with emulator(records=50) as emu:
        cfg = write_config(tmp_path, emu.url, push=PUSH)
        with daemon(cfg):
            wait_for(lambda: synced(cfg))
            app_write(db, "INSERT INTO contact (first_name, email) VALUES ('L', 'l@x.org')")
            wait_for(lambda: contacts_with_email(emu.control.state(), "l@x.org") == 1)
        text = (tmp_path / "daemon.log").read_text()
        assert TOKEN not in text
        names = {e["event"] for e in events(cfg)}
        assert {"daemon.started", "pull.done", "push.batch", "daemon.stopped"} <= names
        assert all("." in n for n in names)
        status = replicad("status", "--config", str(cfg))
        assert status.returncode == 0 and TOKEN not in status.stdout + status.stderr


def test_sigterm_while_starting_is_a_clean_stop(tmp_path: Path) -> None:
    """A SIGTERM while the daemon still waits to open the replica (an app holds its
    write lock) stops it with exit 0, as once running, not by the signal's default."""
    db = tmp_path / "replica.db"
    with emulator(records=20) as emu:
        cfg = write_config(tmp_path, emu.url)
        assert replicad("sync", "--config", str(cfg)).returncode == 0
        app = sqlite3.connect(db, isolation_level=None)
        try:
            app.execute("BEGIN IMMEDIATE")
            with daemon(cfg) as proc:
                wait_for(lambda: any(e.get("event") == "replica.busy" for e in events(cfg)))
                proc.send_signal(signal.SIGTERM)
                assert proc.wait(20) == 0
        finally:
            app.close()
        names = [e["event"] for e in events(cfg)]
        assert "daemon.stopping" in names and "daemon.started" not in names
