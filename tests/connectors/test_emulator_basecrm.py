"""The emulator over a real socket: the real basecrm client, truncation, and the CLI server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import basecrm
import httpx
import pytest

from replicad.connectors.emulator import DEFAULT_TOKEN, create_app
from replicad.connectors.emulator.server import run_in_thread

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def basecrm_sync(url: str, device: str) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Run the real basecrm high-level sync flow, acknowledging every item."""
    client = basecrm.Client(access_token=DEFAULT_TOKEN, base_url=url)
    received: list[tuple[dict[str, Any], dict[str, Any]]] = []

    def callback(meta: dict[str, Any], data: dict[str, Any]) -> bool:
        received.append((meta, data))
        return bool(basecrm.Sync.ACK)

    basecrm.Sync(client=client, device_uuid=device).fetch(callback)
    return received


def test_default_token_fits_basecrm() -> None:
    """DEFAULT_TOKEN is the 64 characters the basecrm client insists on."""
    assert len(DEFAULT_TOKEN) == 64
    basecrm.Client(access_token=DEFAULT_TOKEN, base_url="http://127.0.0.1:1")


def test_real_basecrm_client_syncs_everything() -> None:
    """basecrm.Sync receives every record of the account, and a second sync gets nothing."""
    with run_in_thread(records=250, seed=4, page_size=40) as url:
        mutated = httpx.post(f"{url}/_emulator/mutate", json={"random": {"count": 30, "seed": 2}})
        assert mutated.status_code == 200
        device = str(uuid.uuid4())
        received = basecrm_sync(url, device)
        state = httpx.get(f"{url}/_emulator/state").json()

        got = {(meta["type"], data["id"]): (meta, data) for meta, data in received}
        assert len(got) == len(received)
        expected = {
            (type_, int(id_)): data
            for type_, records in state["records"].items()
            for id_, data in records.items()
        }
        assert got.keys() == expected.keys()
        for key, (meta, data) in got.items():
            assert data == expected[key]
            assert meta["sync"]["revision"] == state["revisions"][key[0]][str(key[1])]

        assert basecrm_sync(url, device) == []
        stats = httpx.get(f"{url}/_emulator/stats").json()
        assert stats["devices"][device]["queued"] == 0
        assert stats["acked_keys"] == len(received)


def test_basecrm_client_receives_changes_and_deletes() -> None:
    """After a first sync, basecrm gets exactly the changed records and id-only deletes."""
    with run_in_thread(records=60) as url:
        device = str(uuid.uuid4())
        basecrm_sync(url, device)
        ops = [
            {"op": "update", "type": "deal", "id": 3, "data": {"hot": True}},
            {"op": "delete", "type": "contact", "id": 4},
        ]
        httpx.post(f"{url}/_emulator/mutate", json={"ops": ops}).raise_for_status()
        received = basecrm_sync(url, device)
        by_type = {meta["type"]: (meta, data) for meta, data in received}
        assert len(received) == 2
        assert by_type["deal"][1]["hot"] is True
        assert by_type["contact"] == (
            {
                "type": "contact",
                "sync": {"event_type": "deleted", "ack_key": "Contact-4-0", "revision": 0},
            },
            {"id": 4},
        )


def test_truncate_over_socket_gives_incomplete_body() -> None:
    """Over TCP a truncated page ends the connection before its declared Content-Length."""
    app = create_app(records=50, page_size=20)
    with run_in_thread(app) as url:
        device = str(uuid.uuid4())
        headers = {"Authorization": f"Bearer {DEFAULT_TOKEN}", "X-Basecrm-Device-UUID": device}
        with httpx.Client(base_url=url, headers=headers) as client:
            sid = client.post("/v2/sync/start").json()["data"]["id"]
            rule = {"endpoint": "fetch", "action": "truncate"}
            client.post("/_emulator/faults", json={"rules": [rule]}).raise_for_status()
            with pytest.raises(httpx.RemoteProtocolError):
                client.get(f"/v2/sync/{sid}/queues/main")
            after = client.get(f"/v2/sync/{sid}/queues/main").json()
            assert after["meta"]["count_left"] == 10


def test_cli_server_prints_listening_line_and_stops_on_sigterm() -> None:
    """python -m replicad.connectors.emulator prints one listening line and stops on SIGTERM."""
    process = subprocess.Popen(
        [sys.executable, "-m", "replicad.connectors.emulator", "--records", "10"],
        cwd=PROJECT_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().rstrip("\n")
        prefix = "replicad emulator listening on http://127.0.0.1:"
        assert line.startswith(prefix), line
        port = int(line.removeprefix(prefix))
        stats = httpx.get(f"http://127.0.0.1:{port}/_emulator/stats", timeout=5)
        assert stats.status_code == 200
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=10)
        assert stdout == ""
        assert process.returncode in (0, -signal.SIGTERM), stderr
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
