"""The code stays mypy-strict and ruff clean (the checks run with the test suite)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def test_ruff_clean() -> None:
    """ruff check and ruff format --check report nothing."""
    for args in (["check", "."], ["format", "--check", "."]):
        done = subprocess.run([BIN / "ruff", *args], cwd=ROOT, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr


def test_mypy_strict_clean(tmp_path: Path) -> None:
    """mypy --strict (configured in pyproject.toml) reports nothing.

    The package is ``replicad`` (setuptools maps its three parts to the top-level
    folders), which mypy cannot follow through the editable install: it checks a tree
    of links named like the installed package instead.
    """
    package = tmp_path / "replicad"
    package.mkdir()
    for part in ("daemon", "store", "connectors"):
        (package / part).symlink_to(ROOT / part, target_is_directory=True)
    done = subprocess.run(
        [BIN / "mypy", "--config-file", ROOT / "pyproject.toml", "--cache-dir", tmp_path / "cache"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
