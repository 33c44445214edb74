"""Built-in emulator of the Zendesk Sell Sync API, for tests, demos and benchmarks.

It also serves the push destinations of docs/push-wire.md (Endgrate push API and
CDM writes), which write into the same emulated account.

``create_app()`` builds the ASGI app; :mod:`connectors.emulator.server` serves it
(``python -m replicad.connectors.emulator --records 2000 --port 8765``).
"""

from replicad.connectors.emulator.app import create_app
from replicad.connectors.emulator.runtime import DEFAULT_TOKEN

__all__ = ["DEFAULT_TOKEN", "create_app"]
