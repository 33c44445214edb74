"""The daemon: CLI, configuration, and the pull and push loops wiring store/ and connectors/."""

from __future__ import annotations

import sys


def _import_without_unused_extras() -> None:
    """Import httpx and structlog without the extras they load when installed.

    httpx imports its command-line client (click, pygments, rich) and structlog its
    rich traceback renderer whenever those packages can be imported. replicad uses
    neither, and loading them took about 100 ms of every command's start (a 10k-record
    sync takes under a second). Both libraries treat a failed import as "not
    installed". rich stays importable afterwards: the progress bar uses it.
    """
    blocked = [name for name in ("click", "rich") if name not in sys.modules]
    for name in blocked:
        sys.modules[name] = None  # type: ignore[assignment]  # import raises ImportError
    try:
        import httpx  # noqa: F401
        import structlog  # noqa: F401
    finally:
        for name in blocked:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]


_import_without_unused_extras()
