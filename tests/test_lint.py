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


def test_mypy_strict_clean() -> None:
    """mypy --strict (configured in pyproject.toml) reports nothing."""
    done = subprocess.run([BIN / "mypy"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
