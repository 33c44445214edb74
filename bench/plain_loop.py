"""The reference the pull is measured against: a plain sequential Sync API loop.

Keep-alive httpx, stdlib sqlite3, per page one transaction and one ack — what a
careful hand-written client does. Run by bench/pull.py as its own process.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import uuid

import httpx


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("token")
    parser.add_argument("db")
    args = parser.parse_args()
    db = sqlite3.connect(args.db, isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = FULL")
    headers = {
        "Authorization": f"Bearer {args.token}",
        "X-Basecrm-Device-UUID": str(uuid.uuid4()),
        "Accept": "application/json",
    }
    tables: set[str] = set()
    with httpx.Client(base_url=args.url + "/v2", headers=headers, timeout=60) as http:
        start = http.post("/sync/start")
        if start.status_code == 204:
            return
        session = start.json()["data"]["id"]
        while True:
            resp = http.get(f"/sync/{session}/queues/main")
            if resp.status_code == 204:
                break
            items = resp.json()["items"]
            db.execute("BEGIN")
            for item in items:
                type_ = item["meta"]["type"]
                if type_ not in tables:
                    db.execute(
                        f'CREATE TABLE IF NOT EXISTS "{type_}" '
                        "(id INTEGER PRIMARY KEY, revision INTEGER, data TEXT)"
                    )
                    tables.add(type_)
                sync = item["meta"]["sync"]
                if sync["event_type"] == "deleted":
                    db.execute(f'DELETE FROM "{type_}" WHERE id = ?', (item["data"]["id"],))
                else:
                    db.execute(
                        f'INSERT OR REPLACE INTO "{type_}" VALUES (?, ?, ?)',
                        (item["data"]["id"], sync["revision"], json.dumps(item["data"])),
                    )
            db.execute("COMMIT")
            keys = [i["meta"]["sync"]["ack_key"] for i in items]
            if keys:
                http.post("/sync/ack", json={"data": {"ack_keys": keys}})


if __name__ == "__main__":
    main()
