"""`env create` streams archives over a real HTTP server: hashes checked while streaming, transient failures
retried, permanent ones reported in one line, nothing installed unless every archive is the locked one."""

from __future__ import annotations

import http.server
import threading
from collections import Counter
from pathlib import Path

import pytest
import yaml
from local_channel import local_channel_fixture, write_environment_file

from reprotrain.envlock import create
from reprotrain.envlock.create import ArchiveHashMismatch, create_environment
from reprotrain.envlock.solve import lock
from reprotrain.errors import ReprotrainError

channel = local_channel_fixture()


class _Server:
    """Serves the channel directory; the first FAIL_FIRST requests of each path answer 503."""

    def __init__(self, root: Path, fail_first: int):
        self.requests: Counter = Counter()
        outer = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=str(root), **kwargs)

            def do_GET(self):  # noqa: N802 - http.server's naming
                outer.requests[self.path] += 1
                if outer.requests[self.path] <= fail_first:
                    self.send_error(503, "try again")
                    return
                super().do_GET()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def file_lock(channel, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lock")
    env = write_environment_file(root / "environment.yml", channel, ["pytorch", "click"])
    lock([env], platforms=["linux-64"], lockfile=root / "conda-lock.yml", solver="rattler")
    return root / "conda-lock.yml"


def _http_lock(file_lock: Path, channel, server: _Server, target: Path) -> Path:
    text = file_lock.read_text().replace(channel.url, server.url)
    target.write_text(text)
    assert server.url in text
    return target


@pytest.fixture
def fast_backoff(monkeypatch):
    monkeypatch.setattr(create, "FETCH_BACKOFF_S", 0.01)


def test_transient_http_failures_are_retried(channel, file_lock, tmp_path, fast_backoff):
    server = _Server(channel.path, fail_first=2)
    try:
        locked = _http_lock(file_lock, channel, server, tmp_path / "conda-lock.yml")
        report = create_environment(locked, tmp_path / "env", platform="linux-64", use_conda=False)
    finally:
        server.close()
    assert report.verify.matches
    archives = [p for p in server.requests if p.endswith(".conda")]
    assert len(archives) == report.conda_packages and all(server.requests[p] == 3 for p in archives)
    # conda-meta names the locked (HTTP) URL
    urls = {yaml.safe_load(p.read_text())["url"] for p in (tmp_path / "env" / "conda-meta").glob("*.json")}
    assert all(url.startswith(server.url) for url in urls)


def test_persistent_failure_is_one_line_after_every_attempt(channel, file_lock, tmp_path, fast_backoff):
    server = _Server(channel.path, fail_first=create.FETCH_ATTEMPTS)
    try:
        locked = _http_lock(file_lock, channel, server, tmp_path / "conda-lock.yml")
        with pytest.raises(ReprotrainError) as excinfo:
            create_environment(locked, tmp_path / "env", platform="linux-64", use_conda=False)
    finally:
        server.close()
    message = str(excinfo.value)
    assert f"after {create.FETCH_ATTEMPTS} attempts" in message and "\n" not in message
    assert excinfo.value.exit_code == 2
    assert not (tmp_path / "env" / "conda-meta").exists()


def test_hash_checked_while_streaming_over_http(channel, file_lock, tmp_path):
    served = tmp_path / "served"
    import shutil

    shutil.copytree(channel.path, served)
    archive = next(served.glob("linux-64/numpy-*.conda"))
    archive.write_bytes(archive.read_bytes()[:-1] + b"X")  # same size, one byte changed
    server = _Server(served, fail_first=0)
    try:
        text = file_lock.read_text().replace(channel.url, server.url)
        (tmp_path / "conda-lock.yml").write_text(text)
        with pytest.raises(ArchiveHashMismatch, match="numpy 1.26.4 does not match the lock's md5"):
            create_environment(tmp_path / "conda-lock.yml", tmp_path / "env", platform="linux-64", use_conda=False)
    finally:
        server.close()
    assert server.requests[f"/linux-64/{archive.name}"] == 1  # a mismatch is never retried
    assert not (tmp_path / "env" / "conda-meta").exists()
