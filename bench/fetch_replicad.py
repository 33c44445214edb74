"""replicad's own network client with nothing stored: what storing costs on top.

Drains the Sync API queue through the project's Sell connector, as `replicad sync`
does (async httpx behind the one retrying exchange, the rate budget, acknowledgements
in batches of 1,000 keys), and decodes every page as the pull does, but applies
nothing. `replicad sync --once` less this is the store's share: applying pages,
commits, the hand-off to the writer thread. Run by bench/pull.py as its own process.
"""

from __future__ import annotations

import argparse
import uuid

import anyio

from replicad.connectors.sell import SellClient, SellSettings


async def drain(url: str, token: str) -> None:
    """One session, drained and acknowledged; pages decoded, then dropped."""
    client = SellClient(SellSettings(base_url=url, token=token, device_uuid=str(uuid.uuid4())))
    try:
        session = await client.start()
        if session is None:
            return
        keys: list[str] = []
        while True:
            raw, _ = await client.fetch(session.id)
            if raw is None:
                break
            page = client.decode(raw)
            keys += [c.ack_key for c in page.batch.changes]
            if len(keys) >= client.confirm_batch:
                await client.confirm(keys)
                keys = []
        if keys:
            await client.confirm(keys)
    finally:
        await client.aclose()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("token")
    parser.add_argument("db", help="ignored (nothing is stored)")
    args = parser.parse_args()
    anyio.run(drain, args.url, args.token)


if __name__ == "__main__":
    main()
