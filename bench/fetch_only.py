"""The floor the pull is measured against: drain the Sync API queue, store nothing.

Keep-alive httpx and stdlib json, one ack per page (the queue only drains when its
items are acknowledged). What is left between this and a real client is the cost of
storing. Run by bench/pull.py as its own process.
"""

from __future__ import annotations

import argparse
import json
import uuid

import httpx


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("token")
    parser.add_argument("db", help="ignored (nothing is stored)")
    args = parser.parse_args()
    headers = {
        "Authorization": f"Bearer {args.token}",
        "X-Basecrm-Device-UUID": str(uuid.uuid4()),
        "Accept": "application/json",
    }
    with httpx.Client(base_url=args.url + "/v2", headers=headers, timeout=60) as http:
        start = http.post("/sync/start")
        if start.status_code == 204:
            return
        session = start.json()["data"]["id"]
        while True:
            resp = http.get(f"/sync/{session}/queues/main")
            if resp.status_code == 204:
                break
            keys = [i["meta"]["sync"]["ack_key"] for i in json.loads(resp.content)["items"]]
            if keys:
                http.post("/sync/ack", json={"data": {"ack_keys": keys}})


if __name__ == "__main__":
    main()
