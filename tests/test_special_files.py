"""Special files and unbounded inputs at every reader (issue 11, class 4): a FIFO, a symlink to a device or a
directory where a file is expected is refused in one line (exit 2) and never read; a FIFO never hangs a command
(each runs in a real subprocess under a timeout); `env verify --deep` never leaves the prefix."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from tests.conftest import run_cli

LOCK = "konstantinjdobler__nlp-research-template__conda-lock.yml"


def _one_line_exit_2(result, name: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("reprotrain: error:") and name in lines[0], result.stderr


@pytest.fixture
def specials(tmp_path):
    fifo = tmp_path / "fifo.pth"
    os.mkfifo(fifo)
    zero = tmp_path / "zero.pth"
    zero.symlink_to("/dev/zero")
    (tmp_path / "conda-meta").mkdir()  # an (empty) environment prefix for env verify
    return {"fifo": fifo, "zero": zero, "dir": tmp_path}


def test_verify_refuses_special_files_without_reading_them(specials):
    result = run_cli("verify", "--json", str(specials["fifo"]), str(specials["zero"]), timeout=120)
    assert result.returncode == 2, result.stderr
    rows = {os.path.basename(r["path"]): r for r in json.loads(result.stdout)["results"]}
    assert rows["fifo.pth"]["exit_code"] == 2 and "FIFO" in rows["fifo.pth"]["reason"]
    assert rows["zero.pth"]["exit_code"] == 2 and "character device" in rows["zero.pth"]["reason"]


@pytest.mark.parametrize("command", [["inspect"], ["diff", "{other}"]])
def test_inspect_and_diff_refuse_a_fifo(specials, command):
    args = [a.replace("{other}", str(specials["zero"])) for a in command]
    result = run_cli(*args[:1], str(specials["fifo"]), *args[1:], timeout=120)
    _one_line_exit_2(result, "fifo.pth")


def test_ls_lists_a_fifo_in_a_run_directory_as_invalid(specials):
    result = run_cli("ls", "--json", str(specials["dir"]), timeout=120)
    assert result.returncode == 0, result.stderr
    rows = {r["name"]: r for r in json.loads(result.stdout)["checkpoints"]}
    assert not rows["fifo.pth"]["valid"] and "FIFO" in rows["fifo.pth"]["problem"]
    assert not rows["zero.pth"]["valid"] and "device" in rows["zero.pth"]["problem"]
    assert json.loads(result.stdout)["resume"] is None


@pytest.mark.parametrize("args", [["lock", "show", "{lock}"], ["lock", "--check", "--lockfile", "{lock}"],
                                  ["env", "verify", "{lock}", "--prefix", "{dir}"],
                                  ["env", "create", "{lock}", "--prefix", "{dir}/new"],
                                  ["fingerprint", "--compare", "{lock}"]])
@pytest.mark.parametrize("kind", ["fifo", "zero"])
def test_lock_and_fingerprint_readers_refuse_special_files(specials, args, kind):
    lock = specials["dir"] / f"{kind}.yml"
    lock.symlink_to(specials[kind])
    result = run_cli(*[a.replace("{lock}", str(lock)).replace("{dir}", str(specials["dir"])) for a in args],
                     timeout=120)
    _one_line_exit_2(result, f"{kind}.yml")


def test_env_verify_refuses_a_fifo_conda_meta_record(tmp_path, realworld):
    prefix = tmp_path / "env"
    (prefix / "conda-meta").mkdir(parents=True)
    os.mkfifo(prefix / "conda-meta" / "x-1.0-0.json")
    result = run_cli("env", "verify", str(realworld / "conda-lock" / LOCK), "--prefix", str(prefix),
                     "--platform", "linux-64", timeout=120)
    _one_line_exit_2(result, "x-1.0-0.json")


def test_env_verify_deep_never_reads_outside_the_prefix(tmp_path, realworld):
    """A pip RECORD (and a conda paths_data entry) naming files outside the prefix, with their real hashes:
    reported as leaving the prefix, never hashed, their hashes never printed."""
    import base64
    import hashlib

    secret = tmp_path / "secret.txt"
    secret.write_text("do not read me")
    digest = hashlib.sha256(secret.read_bytes()).digest()
    prefix = tmp_path / "env"
    site = prefix / "lib" / "python3.11" / "site-packages"
    dist = site / "evil-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Name: evil\nVersion: 1.0\n\n")
    (dist / "INSTALLER").write_text("pip\n")
    rel = os.path.relpath(secret, site)
    b64 = base64.urlsafe_b64encode(digest).decode().rstrip("=")
    (dist / "RECORD").write_text(f"{rel},sha256={b64},14\n")
    (site / "link").symlink_to("/dev/zero")
    meta = prefix / "conda-meta"
    meta.mkdir()
    (meta / "x-1.0-0.json").write_text(json.dumps({
        "name": "x", "version": "1.0", "build": "0", "md5": "0" * 32, "files": [],
        "paths_data": {"paths": [{"_path": str(secret), "path_type": "hardlink", "sha256": digest.hex()},
                                 {"_path": "lib/python3.11/site-packages/link", "path_type": "hardlink",
                                  "sha256": "0" * 64}]}}))
    result = run_cli("env", "verify", str(realworld / "conda-lock" / LOCK), "--prefix", str(prefix),
                     "--platform", "linux-64", "--deep", "--json", timeout=120)
    assert result.returncode == 1, result.stderr
    assert digest.hex() not in result.stdout + result.stderr
    details = [d.get("detail") or "" for d in json.loads(result.stdout)["differences"]]
    assert sum("leaves the prefix" in d for d in details) == 3, details
    shutil.rmtree(prefix)
