"""Shared test fixtures. Areas keep their own fixtures in their test modules; add here only what several areas use."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
REALWORLD = PROJECT_ROOT.parent / "shared" / "realworld"


@pytest.fixture(scope="session")
def realworld() -> Path:
    """The shared real-world material (../shared/realworld beside the project root)."""
    if not REALWORLD.is_dir():
        pytest.skip(f"real-world material not found at {REALWORLD} (shared/ is laid beside the project root in CI)")
    return REALWORLD


def run_cli(*args: str, env: dict | None = None, cwd: str | os.PathLike | None = None, timeout: float = 300,
            input: str | None = None) -> subprocess.CompletedProcess:
    """Run `python -m reprotrain ARGS` as a real subprocess and capture its output."""
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    return subprocess.run([sys.executable, "-m", "reprotrain", *args], capture_output=True, text=True,
                          env=full_env, cwd=cwd, timeout=timeout, input=input)
