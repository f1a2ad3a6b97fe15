"""Shared test fixtures. Areas keep their own fixtures in their test modules; add here only what several areas use."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
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


# --- a real S3-compatible server (moto_server over HTTP on 127.0.0.1, a subprocess, not a patch) -----------------

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MotoServer:
    """moto's S3 server on a free port; the `s3` fixture points the process's standard AWS variables at it."""

    def __init__(self):
        self.port = _free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        moto = os.path.join(os.path.dirname(sys.executable), "moto_server")
        self.proc = subprocess.Popen([moto, "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(self.endpoint + "/moto-api/", timeout=1)
                break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    raise RuntimeError("moto_server did not start")
                time.sleep(0.1)

    def client(self):
        import boto3  # installed with moto[server]

        return boto3.client("s3", endpoint_url=self.endpoint, **{k.lower(): v for k, v in CREDENTIALS.items()
                                                                  if k != "AWS_DEFAULT_REGION"},
                            region_name="us-east-1")

    def keys(self, bucket: str) -> dict[str, int]:
        out = self.client().list_objects_v2(Bucket=bucket).get("Contents", [])
        return {o["Key"]: o["Size"] for o in out}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            self.proc.wait(10)


@pytest.fixture(scope="session")
def s3():
    """One moto S3 server for the session; the process's environment points s3fs at it (standard AWS variables)."""
    server = MotoServer()
    saved = {k: os.environ.get(k) for k in [*CREDENTIALS, "AWS_ENDPOINT_URL"]}
    os.environ.update(CREDENTIALS, AWS_ENDPOINT_URL=server.endpoint)
    try:
        yield server
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
        server.stop()


