"""A small client of the emulator's control endpoints (``/_emulator/...``).

Used by ``replicad demo``, the tests and the benchmarks to change the remote account,
read its full state and inject faults.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any

import httpx


class EmulatorControl:
    """Synchronous control client for a running emulator."""

    def __init__(self, base_url: str, timeout: float = 60.0) -> None:
        self._http = httpx.Client(base_url=base_url.rstrip("/") + "/_emulator", timeout=timeout)

    def __enter__(self) -> EmulatorControl:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection."""
        self._http.close()

    def _json(self, method: str, path: str, body: Any = None) -> Any:
        resp = self._http.request(method, path, json=body)
        resp.raise_for_status()
        return resp.json() if resp.content else None

    def state(self) -> dict[str, Any]:
        """Every live record, revisions and deleted ids."""
        result: dict[str, Any] = self._json("GET", "/state")
        return result

    def mutate(
        self, ops: list[dict[str, Any]] | None = None, *, random: int = 0, seed: int = 1
    ) -> list[dict[str, Any]]:
        """Apply explicit ops and/or ``random`` deterministic creates/updates/deletes."""
        body: dict[str, Any] = {"ops": ops or []}
        if random:
            body["random"] = {"count": random, "seed": seed}
        result: list[dict[str, Any]] = self._json("POST", "/mutate", body)["results"]
        return result

    def faults(self, *rules: dict[str, Any]) -> None:
        """Add fault rules."""
        self._json("POST", "/faults", {"rules": list(rules)})

    def clear_faults(self) -> None:
        """Remove every fault rule."""
        self._json("DELETE", "/faults")

    def stats(self) -> dict[str, Any]:
        """Request counters and per-device queue sizes."""
        result: dict[str, Any] = self._json("GET", "/stats")
        return result

    def pushes(self) -> list[dict[str, Any]]:
        """Every push request received (Endgrate and CDM), oldest first."""
        result: list[dict[str, Any]] = self._json("GET", "/pushes")["requests"]
        return result

    def reset_stats(self) -> None:
        """Zero the request counters."""
        self._json("POST", "/stats/reset")
