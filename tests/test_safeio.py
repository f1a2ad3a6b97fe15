"""reprotrain.safeio: regular files only (checked on the open descriptor), reads capped, one line naming the file."""

from __future__ import annotations

import os
import socket
import threading

import pytest

from reprotrain import safeio
from reprotrain.errors import ReprotrainError


def test_regular_file_is_read(tmp_path):
    path = tmp_path / "a.json"
    path.write_bytes(b"{}")
    assert safeio.read_regular(path, limit=10, what="fingerprint") == b"{}"
    with safeio.open_regular(path, limit=10, what="fingerprint") as handle:
        assert handle.read() == b"{}"
        handle.seek(0)
        assert handle.read(1) == b"{"


def test_fifo_is_refused_without_hanging(tmp_path):
    fifo = tmp_path / "x.pth"
    os.mkfifo(fifo)
    # No writer: a blocking open would hang forever. A watchdog opens the write side after 20 s so that
    # a regression fails instead of hanging the suite.
    watchdog = threading.Timer(20, lambda: os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)))
    watchdog.start()
    try:
        with pytest.raises(ReprotrainError) as info:
            safeio.read_regular(fifo, limit=1 << 20, what="checkpoint")
    finally:
        watchdog.cancel()
    assert info.value.exit_code == 2
    assert "FIFO" in info.value.message and info.value.path == os.fspath(fifo)


def test_symlink_to_a_device_is_refused(tmp_path):
    link = tmp_path / "conda-lock.yml"
    link.symlink_to("/dev/zero")
    with pytest.raises(ReprotrainError) as info:
        safeio.read_regular(link, limit=16 << 20, what="lock file")  # refused for its type, not the cap
    assert info.value.exit_code == 2 and "character device" in info.value.message


def test_directory_and_socket_are_refused(tmp_path):
    with pytest.raises(ReprotrainError, match="directory"):
        safeio.read_regular(tmp_path, limit=10, what="lock file")
    sock_path = tmp_path / "s"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(os.fspath(sock_path))
        with pytest.raises(ReprotrainError) as info:
            safeio.read_regular(sock_path, limit=10, what="lock file")
    assert info.value.exit_code == 2


def test_missing_file_names_it(tmp_path):
    with pytest.raises(ReprotrainError) as info:
        safeio.read_regular(tmp_path / "nope", limit=10, what="lock file")
    assert info.value.exit_code == 2 and info.value.path.endswith("nope") and "No such file" in info.value.message
    assert isinstance(info.value, safeio.Missing)


def test_file_over_the_limit_is_refused_before_reading(tmp_path):
    path = tmp_path / "big"
    path.write_bytes(b"x" * 11)
    with pytest.raises(safeio.TooLarge) as info:
        safeio.read_regular(path, limit=10, what="policy file")
    assert info.value.exit_code == 2 and "limit" in info.value.message
    with pytest.raises(safeio.TooLarge, match="is 11 bytes, larger than"):
        safeio.open_regular(path, limit=10, what="policy file")  # refused at the open: nothing read
    path.write_bytes(b"x" * 10)
    assert safeio.read_regular(path, limit=10, what="policy file") == b"x" * 10


def test_a_file_that_grows_after_the_open_cannot_pass_the_cap(tmp_path):
    path = tmp_path / "growing"
    path.write_bytes(b"x" * 5)
    with safeio.open_regular(path, limit=10, what="metrics") as handle:
        with open(path, "ab") as writer:
            writer.write(b"y" * 100)
        with pytest.raises(safeio.TooLarge):
            handle.read()


def test_text_that_is_not_utf8_names_the_file(tmp_path):
    path = tmp_path / "env.yml"
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(ReprotrainError, match="not UTF-8"):
        safeio.read_text(path, limit=10, what="environment file")


def test_every_documented_kind_has_a_limit():
    # docs/reliability.md lists these limits; the table and LIMITS must agree.
    text = open(os.path.join(os.path.dirname(__file__), "..", "docs", "reliability.md"), encoding="utf-8").read()
    for kind, limit in safeio.LIMITS.items():
        row = f"| `{kind}` | {safeio._human(limit)} |"
        assert row in text, f"docs/reliability.md does not list the {kind} read limit as {row}"
