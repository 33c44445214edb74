"""Command line: ``python -m replicad.connectors.emulator [--records N] [--port P] ...``."""

from __future__ import annotations

import argparse

from replicad.connectors.emulator.runtime import DEFAULT_TOKEN, PROFILES
from replicad.connectors.emulator.server import serve
from replicad.connectors.emulator.state import DEFAULT_PAGE_SIZE, DEFAULT_SESSION_TTL


def main(argv: list[str] | None = None) -> None:
    """Parse arguments and serve until SIGINT or SIGTERM."""
    parser = argparse.ArgumentParser(
        prog="python -m replicad.connectors.emulator", description="Emulated Zendesk Sell Sync API."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (default)")
    parser.add_argument("--records", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--token", default=DEFAULT_TOKEN, help="bearer token to accept")
    parser.add_argument("--page-size", type=int, default=DEFAULT_PAGE_SIZE)
    parser.add_argument("--session-ttl", type=float, default=DEFAULT_SESSION_TTL)
    parser.add_argument("--profile", choices=PROFILES, default="standard")
    args = parser.parse_args(argv)
    serve(
        host=args.host,
        port=args.port,
        records=args.records,
        seed=args.seed,
        token=args.token,
        page_size=args.page_size,
        session_ttl=args.session_ttl,
        profile=args.profile,
    )


if __name__ == "__main__":
    main()
