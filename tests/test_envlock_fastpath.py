"""The read-and-compare path without conda-lock: `load_lock()` against conda-lock's own models on every real
lock, version 2 lock files, hash-format checks, pip RECORD parsed as CSV, and `env verify` as a process that
never imports conda-lock's package."""

from __future__ import annotations

import base64
import hashlib
import io
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml
from conftest import REALWORLD, run_cli
from local_channel import PLATFORMS, local_channel_fixture, write_environment_file

from reprotrain.envlock.create import create_environment
from reprotrain.envlock.lockfile import _from_model, load_lock, read_lockfile
from reprotrain.envlock.solve import lock
from reprotrain.envlock.verify import verify_environment
from reprotrain.errors import InvalidDocumentError

channel = local_channel_fixture()


@pytest.fixture(scope="module")
def lockfile(channel, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lock")
    env = write_environment_file(root / "environment.yml", channel, ["pytorch", "click"])
    lock([env], platforms=list(PLATFORMS), lockfile=root / "conda-lock.yml", solver="rattler")
    return root / "conda-lock.yml"


@pytest.fixture(scope="module")
def prefix(lockfile, tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("prefix") / "env"
    assert create_environment(lockfile, target, platform="linux-64", use_conda=False).verify.matches
    return target


def _lock_files() -> list[Path]:
    if not REALWORLD.is_dir():
        return []
    return sorted(p for d in ("conda-lock", "conda-lock-fixtures") for p in (REALWORLD / d).iterdir() if p.is_file())


@pytest.mark.parametrize("path", _lock_files(), ids=lambda p: p.name)
def test_light_reader_agrees_with_conda_locks_models(realworld, path):
    try:
        expected = _from_model(read_lockfile(path))
    except InvalidDocumentError as exc:
        with pytest.raises(InvalidDocumentError) as light:
            load_lock(path)
        assert str(light.value) == str(exc)
        return
    got = load_lock(path)
    key = lambda e: (e.manager, e.name, e.platform)  # noqa: E731
    assert got.metadata == expected.metadata
    assert sorted(got.package, key=key) == sorted(expected.package, key=key)


def test_env_verify_process_never_imports_conda_lock(lockfile, prefix):
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "reprotrain", "env", "verify",
                             "--lockfile", str(lockfile), "--prefix", str(prefix)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    modules = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    assert "reprotrain.envlock.verify" in modules  # the probe sees the imports
    assert not {m for m in modules if m.split(".")[0] in ("conda_lock", "pydantic", "torch")}


def test_version_2_lock_files_are_read(lockfile, prefix, tmp_path):
    from conda_lock.lockfile import parse_conda_lock_file

    # conda-lock's own version-2 model, written out: `categories:` lists instead of category/optional.
    model = parse_conda_lock_file(lockfile)
    doc = {"version": 2, **model.model_dump(mode="json", exclude_none=True)}
    v2 = tmp_path / "conda-lock-v2.yml"
    v2.write_text(yaml.safe_dump(doc, sort_keys=False))
    assert "categories" in v2.read_text() and "optional:" not in v2.read_text()
    assert load_lock(v2).metadata == load_lock(lockfile).metadata
    assert _from_model(read_lockfile(v2)).metadata == load_lock(v2).metadata
    assert verify_environment(v2, prefix).matches
    doc["package"] = [p for p in doc["package"] if p["name"] != "click"]
    v2.write_text(yaml.safe_dump(doc, sort_keys=False))
    assert {(d.kind, d.name) for d in verify_environment(v2, prefix).differences} == {("extra", "click")}


@pytest.mark.parametrize("algorithm, value", [("md5", "not-hex"), ("md5", "ab" * 15), ("sha256", "AB" * 31),
                                              ("sha256", "12345")])
def test_hash_fields_are_checked_for_their_format(lockfile, prefix, tmp_path, algorithm, value):
    doc = yaml.safe_load(lockfile.read_text())
    doc["package"][0]["hash"][algorithm] = value
    bad = tmp_path / "conda-lock.yml"
    bad.write_text(yaml.safe_dump(doc, sort_keys=False))
    digits = 32 if algorithm == "md5" else 64
    with pytest.raises(InvalidDocumentError, match=f"hash.{algorithm} is not {digits} hex digits"):
        load_lock(bad)
    with pytest.raises(InvalidDocumentError, match=f"hash.{algorithm} is not {digits} hex digits"):
        read_lockfile(bad)
    result = run_cli("env", "verify", "--lockfile", str(bad), "--prefix", str(prefix))
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def _wheel_with_comma_path(dist_dir: Path) -> Path:
    """A real wheel whose RECORD quotes a path containing a comma (as pip and every wheel builder write it)."""
    files = {"commapkg/__init__.py": "VALUE = 1\n", "commapkg/a,b.txt": "data with a comma in its name\n",
             "commapkg-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: commapkg\nVersion: 1.0\n",
             "commapkg-1.0.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\n"
                                              "Tag: py3-none-any\n"}
    record = io.StringIO()
    import csv

    writer = csv.writer(record, lineterminator="\n")
    for rel, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        writer.writerow([rel, f"sha256={digest}", len(text.encode())])
    writer.writerow(["commapkg-1.0.dist-info/RECORD", "", ""])
    files["commapkg-1.0.dist-info/RECORD"] = record.getvalue()
    assert '"commapkg/a,b.txt",sha256=' in record.getvalue()
    dist_dir.mkdir(parents=True, exist_ok=True)
    wheel = dist_dir / "commapkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for rel, text in files.items():
            archive.writestr(zipfile.ZipInfo(rel, date_time=(2024, 1, 2, 3, 4, 5)), text)
    return wheel


def test_record_path_with_a_comma_is_parsed_as_csv(lockfile, tmp_path):
    with_pip = tmp_path / "conda-lock.yml"
    shutil.copyfile(lockfile, with_pip)
    wheel = _wheel_with_comma_path(tmp_path / "wheels")
    doc = yaml.safe_load(with_pip.read_text())
    doc["package"].append({"name": "commapkg", "version": "1.0", "manager": "pip", "platform": "linux-64",
                           "dependencies": {}, "url": wheel.resolve().as_uri(),
                           "hash": {"sha256": hashlib.sha256(wheel.read_bytes()).hexdigest()},
                           "category": "main", "optional": False})
    with_pip.write_text(yaml.safe_dump(doc, sort_keys=False))
    target = tmp_path / "env"
    assert create_environment(with_pip, target, platform="linux-64", use_conda=False).verify.matches
    site = target / "lib/python3.11/site-packages"
    assert '"commapkg/a,b.txt"' in (site / "commapkg-1.0.dist-info" / "RECORD").read_text()
    deep = verify_environment(with_pip, target, deep=True)
    assert deep.matches, deep.differences  # the quoted path is found, not reported missing
    (site / "commapkg" / "a,b.txt").write_text("edited\n")
    diffs = verify_environment(with_pip, target, deep=True).differences
    assert [(d.kind, d.name, d.detail) for d in diffs] == [("file-modified", "commapkg", "commapkg/a,b.txt")]


def _yaml_files() -> list[Path]:
    if not REALWORLD.is_dir():
        return []
    return sorted(p for d in ("conda-lock", "conda-lock-fixtures", "environment-yml")
                  for p in (REALWORLD / d).iterdir() if p.is_file())


@pytest.mark.parametrize("path", _yaml_files(), ids=lambda p: p.name)
def test_fast_yaml_reads_exactly_what_pyyaml_reads_or_declines(realworld, path):
    from reprotrain.envlock import fastyaml

    text = path.read_text(encoding="utf-8", errors="replace")
    got = fastyaml.parse(text)
    if path.parent.name == "conda-lock":
        assert got is not None  # conda-lock's own layout: the fast path takes it
    if got is not None:
        assert got == yaml.safe_load(text)


@pytest.mark.parametrize("text", [
    "version: 1\nmetadata:\n  platforms:\n  - linux-64\npackage: []\n",
    "a: 1.0\n", "a: 0x10\n", "a: 2024-01-02\n", "a: yes\n", "a: 'it''s'\n", "a: null\n", "a: ~\n", "a: &x 1\n",
    "a: [1]\n", "a: {b: 1}\n", "a: |\n  text\n", "a: b: c\n", "a: x # comment\n", "- a\n- b\n", "a:\n\tb: 1\n",
    "a: 1\na: 2\n", "a:\n  - b: 1\n    c: 2\n  - d\n", "a:\nb: 2\n", "a: \"q\\\"x\"\n", "'a b': 1\n", "true: 1\n",
    "a:\n  b:\n    c: '>=1,<2'\n  d: {}\n", "a: 1:2\n", "a: -1\n", "a: +1\n", "a: 1_000\n", "a: 012\n", "a: .inf\n",
])
def test_fast_yaml_edge_cases(text):
    from reprotrain.envlock import fastyaml

    got = fastyaml.parse(text)
    try:
        expected = yaml.safe_load(text)
    except yaml.YAMLError:
        assert got is None
        return
    assert got is None or got == expected, (got, expected)


def test_fast_yaml_takes_the_locks_reprotrain_writes(lockfile):
    from reprotrain.envlock import fastyaml

    text = lockfile.read_text()
    assert fastyaml.parse(text) == yaml.safe_load(text)


@pytest.mark.skipif(not hasattr(__import__("os"), "mkfifo"), reason="no FIFOs on this system")
def test_lock_file_that_is_a_fifo_is_refused_without_hanging(tmp_path, prefix):
    import os

    fifo = tmp_path / "conda-lock.yml"
    os.mkfifo(fifo)  # nobody writes to it: a plain open() would block forever
    with pytest.raises(InvalidDocumentError, match="not a regular file"):
        load_lock(fifo)
    result = run_cli("env", "verify", str(fifo), "-p", str(prefix), timeout=60)
    assert result.returncode == 2 and "not a regular file" in result.stderr


@pytest.mark.parametrize("text", ["1", "1.0", "1.26.4", "0.1", "012", "0x1F", "0b101", "1_000", "1:30", "1:30.5", "-1", "+1",
                                  ".5", "1e+5", "1.0e+5", "1e5", ".inf", "-.Inf", ".NaN", "yes", "No", "ON", "off", "y", "n",
                                  "true", "False", "null", "Null", "~", "", "<<", "=", "2024-01-02", "2024-1-2 3:04:05",
                                  "2024-01-02T03:04:05Z", "2.14.1+cu124", "cuda124_py311h0_1", "linux-64", "sha256", "1e",
                                  "1.2.3a0", "v1", "0", "00", "08", "1__0", "1.", "1._5", "--1"])
def test_fast_yaml_resolves_plain_scalars_as_pyyaml(text):
    from reprotrain.envlock.fastyaml import _resolve

    expected = yaml.resolver.Resolver().resolve(yaml.ScalarNode, text, (True, False)).rsplit(":", 1)[-1]
    assert _resolve(text) == expected
