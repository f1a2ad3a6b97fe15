"""Hypothesis fuzzing of the readers of untrusted input that tests/test_fuzz_readers.py does not cover: conda-meta
records and pip dist-info RECORD / INSTALLER files (as `reprotrain env verify --deep` reads them), metrics.jsonl
(as `reprotrain report` reads it), training config files (`reprotrain train --config`) and signing / public key
files. Random bytes and mutated real-shaped documents give a result or one clear one-line ReprotrainError, never
another exception; where the format defines what is valid, the test states which inputs must be read and which
refused (an oracle), like test_fuzz_readers.py."""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import example, given, settings, strategies as st
from test_fuzz_readers import JSON, SETTINGS, _reads_cleanly

from reprotrain import safeio
from reprotrain.checkpoint import signing
from reprotrain.checkpoint.storage.base import METRICS_FILE
from reprotrain.envlock.prefix import read_conda_record, read_prefix
from reprotrain.envlock.verify import verify_environment
from reprotrain.errors import InvalidDocumentError, ReprotrainError
from reprotrain.fingerprint.packages import conda_packages
from reprotrain.integrations import report
from reprotrain.training import config

MORE = settings(SETTINGS, max_examples=120)
LOCK = "konstantinjdobler__nlp-research-template__conda-lock.yml"
DELETE = object()


def _one_line(exc: ReprotrainError, *names: str) -> ReprotrainError:
    assert exc.message and "\n" not in exc.message.strip(), exc.message
    assert any(name in str(exc) for name in names), str(exc)
    return exc


def _edited(data: bytes, edits, truncate) -> bytes:
    """DATA with byte runs overwritten at (fractional) offsets, then cut to a fraction of its length."""
    out = bytearray(data)
    for where, chunk in edits:
        at = int(where * len(out))
        out[at:at + len(chunk)] = chunk
    return bytes(out if truncate is None else out[:int(truncate * len(out))])


EDITS = st.lists(st.tuples(st.floats(0, 1), st.binary(min_size=1, max_size=6)), max_size=3)
TRUNCATE = st.none() | st.floats(0, 1)


# --- conda-meta records (env verify, env export, fingerprint collect) -----------------------------------------------

INSTALLED = b"print('installed')\n"
RECORD_DOC = {
    "build": "pyhd8ed1ab_0", "build_number": 0, "channel": "https://conda.anaconda.org/conda-forge/noarch",
    "constrains": [], "depends": ["python >=3.8"], "extracted_package_dir": "/opt/conda/pkgs/x-1.0-pyhd8ed1ab_0",
    "files": ["lib/x.py"], "fn": "x-1.0-pyhd8ed1ab_0.conda", "license": "MIT", "md5": "0" * 32, "name": "x",
    "package_tarball_full_path": "/opt/conda/pkgs/x-1.0-pyhd8ed1ab_0.conda",
    "paths_data": {"paths": [{"_path": "lib/x.py", "path_type": "hardlink", "sha256": hashlib.sha256(INSTALLED)
                              .hexdigest(), "size_in_bytes": len(INSTALLED)}], "paths_version": 1},
    "requested_spec": "x", "sha256": "1" * 64, "size": 1234, "subdir": "noarch", "timestamp": 1700000000000,
    "url": "https://conda.anaconda.org/conda-forge/noarch/x-1.0-pyhd8ed1ab_0.conda", "version": "1.0",
}
# conda and rattler write records with a two-space indent: the fast path of read_conda_record reads that layout.
RECORD_BYTES = json.dumps(RECORD_DOC, indent=2).encode()
CONDA_FIELDS = sorted(RECORD_DOC) + ["paths_data.paths", "paths_data.paths.0", "paths_data.paths.0._path",
                                     "paths_data.paths.0.sha256", "paths_data.paths.0.sha256_in_prefix",
                                     "paths_data.paths.0.path_type"]
# Paths a hostile record names: outside the prefix, a NUL byte, a name too long, a directory.
HOSTILE_PATHS = st.sampled_from(["../../../etc/hostname", "/etc/hostname", "a\x00b", "a" * 5000, "/".join(["d" * 200] * 30),
                                 "lib", "", ".", "lib/x.py/.."])


@pytest.fixture(scope="module")
def lock(realworld, tmp_path_factory) -> Path:
    """A real lock cut to a few linux-64 packages (conda and pip): verify reads it on every example."""
    doc = yaml.safe_load((realworld / "conda-lock" / LOCK).read_text())
    linux = [p for p in doc["package"] if p["platform"] == "linux-64"]
    doc["package"] = [p for p in linux if p["manager"] == "conda"][:3] + [p for p in linux if p["manager"] == "pip"][:1]
    path = tmp_path_factory.mktemp("lock") / "conda-lock.yml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _prefix(tmp: Path) -> Path:
    prefix = tmp / "env"
    (prefix / "conda-meta").mkdir(parents=True)
    (prefix / "lib").mkdir()
    (prefix / "lib" / "x.py").write_bytes(INSTALLED)
    return prefix


def _with(doc: dict, field: str, value) -> dict:
    """A deep copy of DOC with the dotted FIELD set to VALUE (DELETE: removed)."""
    doc = json.loads(json.dumps(doc))
    *parents, last = field.split(".")
    target = doc
    for part in parents:
        target = target[int(part)] if isinstance(target, list) else target[part]
    if isinstance(target, list):
        target[int(last)] = None if value is DELETE else value
    elif value is DELETE:
        target.pop(last, None)
    else:
        target[last] = value
    return doc


def _conda_record_valid(doc) -> bool:
    """The conda-meta record rules (docs: a record is input, each field checked for its type)."""
    def optional_str(value):
        return value is None or isinstance(value, str)

    if not isinstance(doc, dict) or "name" not in doc or "version" not in doc:
        return False
    if not isinstance(doc["name"], str) or not doc["name"]:
        return False
    if isinstance(doc["version"], bool) or not isinstance(doc["version"], (str, int, float)):
        return False
    if not all(optional_str(doc.get(key)) for key in ("build", "subdir", "url", "md5", "sha256")):
        return False
    files = doc.get("files")
    if files is not None and not (isinstance(files, list) and all(isinstance(f, str) for f in files)):
        return False
    paths_data = doc.get("paths_data")
    if paths_data is not None and not isinstance(paths_data, dict):
        return False
    paths = (paths_data or {}).get("paths") or []
    if not isinstance(paths, list):
        return False
    return all(isinstance(e, dict) and isinstance(e.get("_path"), str) and e["_path"]
               and all(optional_str(e.get(k)) for k in ("sha256", "sha256_in_prefix", "path_type")) for e in paths)


def _read_every_way(prefix: Path, lock: Path, record_file: Path):
    """The record through every reader: read_prefix (env verify/export), verify --deep, read_conda_record and the
    fingerprint collector. Returns read_prefix's outcome (PrefixContents or the ReprotrainError)."""
    try:
        contents = read_prefix(prefix)
    except ReprotrainError as exc:
        contents = _one_line(exc, record_file.name)
    else:
        verified = verify_environment(lock, prefix, platform="linux-64", deep=True)
        assert verified.checked > 0 and verified.differences
    try:
        fast = read_conda_record(str(record_file))
    except ValueError:  # its documented error; the collector turns it into one line
        fast = None
    else:
        assert isinstance(fast["name"], str) and isinstance(fast["version"], str) and isinstance(fast["build"], str)
    try:
        listed = conda_packages(str(prefix))
    except InvalidDocumentError as exc:
        _one_line(exc, record_file.name)
        assert fast is None
    else:
        assert fast is not None and listed == [fast]
    return contents, fast


@MORE
@example(field="paths_data.paths", value=[1, "lib/x.py", None], layout=2)
@example(field="paths_data.paths.0._path", value="a\x00b", layout=2)
@example(field="files", value="lib/x.py", layout=None)
@example(field="version", value=1.5, layout=2)
@given(field=st.sampled_from(CONDA_FIELDS), value=JSON | HOSTILE_PATHS | st.just(DELETE),
       layout=st.sampled_from([2, None]))
def test_conda_meta_record_with_any_field_replaced_is_read_exactly_when_valid(lock, field, value, layout):
    doc = _with(RECORD_DOC, field, value)
    with tempfile.TemporaryDirectory() as tmp:
        prefix = _prefix(Path(tmp))
        record_file = prefix / "conda-meta" / "x-1.0-pyhd8ed1ab_0.json"
        record_file.write_text(json.dumps(doc, indent=layout))
        contents, fast = _read_every_way(prefix, lock, record_file)
    if _conda_record_valid(doc):
        assert not isinstance(contents, ReprotrainError), contents.message
        record = contents.conda[doc["name"]]
        assert (record.name, record.version, record.build) == (doc["name"], str(doc["version"]), doc.get("build") or "")
    else:
        assert isinstance(contents, ReprotrainError), f"an invalid conda-meta record was read ({field}={value!r})"
        assert contents.message.startswith("conda-meta record"), contents.message
    if isinstance(doc.get("name"), str) and doc["name"] and isinstance(doc.get("version"), str) and doc["version"]:
        assert fast is not None and (fast["name"], fast["version"]) == (doc["name"], doc["version"])


@MORE
@example(data=b'{\n  "name": ' + b"[" * 100_000)
@example(data=b"[" * 100_000)
@example(data=RECORD_BYTES.replace(b'"1.0"', b'"1.\\u0030"', 1))
@given(data=st.binary(max_size=300) | st.builds(_edited, st.just(RECORD_BYTES), EDITS, TRUNCATE))
def test_conda_meta_record_of_any_bytes_is_read_or_refused_in_one_line(lock, data):
    with tempfile.TemporaryDirectory() as tmp:
        prefix = _prefix(Path(tmp))
        record_file = prefix / "conda-meta" / "x-1.0-pyhd8ed1ab_0.json"
        record_file.write_bytes(data)
        contents, _ = _read_every_way(prefix, lock, record_file)
    try:
        doc = json.loads(data.decode("utf-8"))  # the reader takes UTF-8 only (json.loads(bytes) would guess)
    except (ValueError, RecursionError):
        assert isinstance(contents, ReprotrainError), "a record that is not JSON was read"
        return
    assert isinstance(contents, ReprotrainError) != _conda_record_valid(doc), data[:80]


# --- pip dist-info RECORD and INSTALLER (env verify --deep) ---------------------------------------------------------

GOOD_REL = "evil/__init__.py"
GOOD_HASH = "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(INSTALLED).digest()).decode().rstrip("=")
# Fields that stay one CSV line (the oracle counts the rows it wrote), with the shapes a RECORD holds.
_FIELD_TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r\x0b\x0c\x1c\x1d\x1e"
                                    "\x85\u2028\u2029"), max_size=12)
RECORD_FIELD = (_FIELD_TEXT | HOSTILE_PATHS | st.just(GOOD_HASH) | st.builds(lambda s: "sha256=" + s, _FIELD_TEXT)
                | st.builds(lambda b: "sha256=" + base64.urlsafe_b64encode(b).decode().rstrip("="), st.binary(max_size=40))
                | st.sampled_from(["sha256=", "md5=abc", "12", "", "sha256=é", "sha256=A"]))


def _dist_info_prefix(tmp: Path, installer: bytes | None, record: bytes | None) -> Path:
    prefix = _prefix(tmp)
    site = prefix / "lib" / "python3.11" / "site-packages"
    (site / "evil").mkdir(parents=True)
    (site / GOOD_REL).write_bytes(INSTALLED)
    dist = site / "evil-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: evil\nVersion: 1.0\n\n")
    for name, data in (("INSTALLER", installer), ("RECORD", record)):
        if data is not None:
            (dist / name).write_bytes(data)
    return prefix


def _checked_rows(rows: list[list[str]]) -> int:
    """Rows a RECORD check re-hashes: three fields, a urlsafe-base64 sha256 (PEP 376 / PEP 627)."""
    count = 0
    for row in rows:
        if len(row) == 3 and row[1].startswith("sha256="):
            b64 = row[1][len("sha256="):]
            try:
                base64.urlsafe_b64decode(b64 + "=" * (-len(b64) % 4))
            except ValueError:
                continue
            count += 1
    return count


def _verify_pip(lock, installer, record) -> object:
    with tempfile.TemporaryDirectory() as tmp:
        prefix = _dist_info_prefix(Path(tmp), installer, record)
        try:
            return verify_environment(lock, prefix, platform="linux-64", deep=True)
        except ReprotrainError as exc:
            return _one_line(exc, "dist-info", "RECORD", "INSTALLER")


@MORE
@example(installer=b"pip\n", rows=[[], ["a"], ["b", GOOD_HASH]])
@example(installer=b"pip\n", rows=[["a\x00b", GOOD_HASH, "1"], ["a" * 5000, GOOD_HASH, "1"]])
@given(installer=st.sampled_from([b"pip\n", b"conda\n", b" conda ", b"uv", b""]) | st.binary(max_size=12),
       rows=st.lists(st.lists(RECORD_FIELD, max_size=4), max_size=5))
def test_pip_record_rows_are_checked_exactly_when_they_carry_a_sha256(lock, installer, rows):
    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerows([[GOOD_REL, GOOD_HASH, str(len(INSTALLED))], *rows])
    outcome = _verify_pip(lock, installer, text.getvalue().encode())
    assert not isinstance(outcome, ReprotrainError), outcome.message
    pip = [d for d in outcome.differences if d.manager == "pip" and d.name == "evil"]
    if installer.decode("utf-8", errors="replace").strip() == "conda":  # a conda package's own dist-info
        assert not pip and outcome.files_checked == 0
        return
    assert ("extra", "evil") in {(d.kind, d.name) for d in pip}
    assert outcome.files_checked == 1 + _checked_rows(rows)
    if all(row[:1] != [GOOD_REL] for row in rows):
        assert not any((d.detail or "").startswith(GOOD_REL) for d in pip), pip  # the intact file matches


@MORE
@example(installer=b"pip\n", record=b"x" * 200_000 + b",sha256=AAAA,1\n")
@given(installer=st.binary(max_size=40),
       record=st.binary(max_size=300) | st.builds(_edited, st.just(f"{GOOD_REL},{GOOD_HASH},19\nevil-1.0.dist-info/"
                                                                    "RECORD,,\n".encode()), EDITS, TRUNCATE))
def test_pip_record_and_installer_of_any_bytes_are_read_or_reported(lock, installer, record):
    outcome = _verify_pip(lock, installer, record)
    assert not isinstance(outcome, ReprotrainError), outcome.message  # a bad RECORD is a difference, not an error


# --- metrics.jsonl (report) -----------------------------------------------------------------------------------------

REAL_LINES = [
    {"kind": "start", "time": 1700000000.0, "run_id": "r1", "world_size": 1},
    {"kind": "step", "time": 1700000001.5, "epoch": 0, "step": 10, "batch": 10, "loss": 0.75, "lr": 0.002,
     "samples_per_s": 812.5},
    {"kind": "epoch", "time": 1700000010.0, "epoch": 0, "step": 40, "val_accuracy": 0.9, "val_loss": 0.3},
    {"kind": "resume", "time": 1700000020.0, "step": 40, "segment": 2},
]
METRIC_LINE = (st.binary(max_size=40) | st.just(b"") | st.just(b"  ")
               | st.builds(lambda v: json.dumps(v).encode(), JSON)
               | st.builds(lambda i, k, v: json.dumps(_with(REAL_LINES[i], k, v)).encode(), st.integers(0, 3),
                           st.sampled_from(["kind", "step", "loss", "val_accuracy", "epoch", "time"]),
                           JSON | st.sampled_from([2**63, -1, 10**400, True, "step", "epoch", float("nan")]))
               | st.sampled_from([json.dumps(line).encode() for line in REAL_LINES]))


def _metrics_expected(data: bytes):
    """(the training-loss curve a report of DATA shows, or the number of the line that must be refused)."""
    lines = data.split(b"\n")
    while lines and not lines[-1].strip():
        lines.pop()
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line.decode("utf-8"))
        except (ValueError, RecursionError):
            record = None
        if not isinstance(record, dict):
            if number == len(lines):
                continue  # a line cut by a crash mid-write
            return None, number
        records.append(record)
    steps = {}
    for record in records:
        step, loss = record.get("step"), record.get("loss")
        if record.get("kind") != "step" or type(step) is not int or not 0 <= step < 2**63:
            continue
        if isinstance(loss, bool) or not isinstance(loss, (int, float)):
            continue
        try:
            loss = float(loss)
        except OverflowError:
            continue
        if math.isfinite(loss):
            steps[step] = loss
    return steps, None


@MORE
@example(lines=[b"[1, 2]", b'{"kind": "step", "step": 1, "loss": 1.0}'], end=b"\n")
@example(lines=[b'{"kind": "step", "step": 1, "loss": 1.0}', b"\xff"], end=b"")
@given(lines=st.lists(METRIC_LINE, max_size=6), end=st.sampled_from([b"", b"\n", b"\n\n"]))
def test_metrics_jsonl_is_reported_exactly_when_its_lines_are_json_objects(lines, end):
    data = b"\n".join(lines) + end
    steps, bad_line = _metrics_expected(data)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / METRICS_FILE).write_bytes(data)
        try:
            history = report.collect(tmp)
        except ReprotrainError as exc:
            _one_line(exc, tmp)
            assert bad_line is not None, f"a readable {METRICS_FILE} was refused: {exc}"
            assert exc.message.startswith(f"{METRICS_FILE} line {bad_line} "), exc.message
            return
        assert bad_line is None, f"line {bad_line} of {data!r} is no JSON object but was read"
        assert history.steps == steps
        report.render_html(history)


# --- training config files (train --config) -------------------------------------------------------------------------

FIELDS = {f: getattr(config.TrainConfig(), f) for f in config.TrainConfig().to_dict()}
CONFIG_KEYS = st.sampled_from(sorted(FIELDS) + [f.replace("_", "-") for f in FIELDS if "_" in f]
                              + ["learning_rate", "Epochs", "extra_", "1"])
CONFIG_VALUES = (JSON | st.integers(-2**65, 2**65) | st.sampled_from([10**400, 2**63, -1, 0, 1, 0.5, 3.0, 1e300, "ddp",
                                                                      "fsdp", "cpu", "12", "1e-3", {"a": [1]}]))
# YAML scalars that are not what they look like (a date that is none, a float too large, a tag, an alias).
YAML_SCALARS = st.sampled_from(["2020-13-45", "2001-02-30", "2001-12-14t21:59:43.10-25:00", "1e400", "9" * 400,
                                "0x10", "~", "[]", "{}", "yes", ".nan", "-.inf", "!!binary AAAA", "!!binary ###",
                                "!!float x", "!!int 1.5", "&a [*a]", "!!timestamp 2020-13-45", "'", "@", "*x"])


def _config_expected(doc):
    """{field: value} a config file whose YAML document is DOC must give, False when it must be refused, None
    where the rules leave it to coercion (a string where a number goes)."""
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        return False
    out, open_ = {}, False
    for key, value in doc.items():
        name = str(key).replace("-", "_")
        if name not in FIELDS:
            return False
        default = FIELDS[name]
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if value is None:
            if name not in ("data_dir", "keep_every"):
                return False
        elif isinstance(default, bool):
            if not isinstance(value, bool):
                return False
        elif isinstance(default, int) or name == "keep_every":
            if isinstance(value, (str, bytes)):
                open_ = True
                continue
            if not number or (isinstance(value, float) and not value.is_integer()):
                return False
            value = int(value)
        elif isinstance(default, float):
            if isinstance(value, (str, bytes)):
                open_ = True
                continue
            if not number:
                return False
            try:
                value = float(value)
            except OverflowError:
                return False
        elif isinstance(default, dict):
            if not isinstance(value, dict):
                return False
        elif not isinstance(value, str):
            if isinstance(value, (dict, list, bool)):
                return False
            open_ = True  # a number where a string goes: written as its string
            continue
        out[name] = value
    if open_:
        return None
    merged = {**FIELDS, **out}
    for name, (low, high) in config._INT_LIMITS.items():
        if merged[name] is not None and not low <= merged[name] <= high:
            return False
    if merged["strategy"] not in ("ddp", "fsdp") or not (math.isfinite(merged["lr"]) and merged["lr"] > 0):
        return False
    return out


def _parsed(payload: str):
    try:
        return safeio.load_yaml(payload)
    except yaml.YAMLError:
        return DELETE


@MORE
@example(doc={"epochs": True}, text="")
@example(doc={"lr": 10**400}, text="epochs: 2020-13-45\n")
@example(doc={"keep-every": None, "extra": {"a": [1.5]}, "strategy": "fsdp"}, text="lr: 1e400\n")
@given(doc=st.dictionaries(CONFIG_KEYS, CONFIG_VALUES, max_size=4) | JSON,
       text=st.text(max_size=60) | st.builds(lambda k, v: f"{k}: {v}\n", CONFIG_KEYS, YAML_SCALARS))
def test_config_file_is_accepted_exactly_when_its_keys_and_types_are_valid(doc, text):
    for payload in (json.dumps(doc), text):
        outcome = _reads_cleanly(lambda p: config.resolve(file=p), payload.encode(), ".yml")
        parsed = _parsed(payload)
        expected = False if parsed is DELETE else _config_expected(parsed)
        if expected is False:
            assert isinstance(outcome, ReprotrainError), f"config {payload!r} was accepted"
        elif expected is not None:
            assert isinstance(outcome, config.TrainConfig), f"config {payload!r} was refused: {outcome}"
            for name, value in expected.items():
                assert getattr(outcome, name) == value, (name, payload)


@MORE
@given(data=st.binary(max_size=200))
def test_config_file_of_any_bytes_is_read_or_refused_in_one_line(data):
    _reads_cleanly(lambda p: config.resolve(file=p), data, ".yml")


# --- signing key files and trusted public key files -----------------------------------------------------------------

def _keys():
    from cryptography.hazmat.primitives import serialization as s
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    ed = signing.SigningKey.generate()
    others = [rsa.generate_private_key(public_exponent=65537, key_size=1024), ec.generate_private_key(ec.SECP256R1())]
    pkcs8, openssh, none = s.PrivateFormat.PKCS8, s.PrivateFormat.OpenSSH, s.NoEncryption()
    private = [ed.private_pem(), ed._key.private_bytes(s.Encoding.PEM, openssh, none),
               ed._key.private_bytes(s.Encoding.PEM, pkcs8, s.BestAvailableEncryption(b"secret"))]
    private += [k.private_bytes(s.Encoding.PEM, pkcs8, none) for k in others]
    public = [ed.public_pem(), ed._key.public_key().public_bytes(s.Encoding.OpenSSH, s.PublicFormat.OpenSSH)
              + b" user@host\n", ed.private_pem()]
    public += [k.public_key().public_bytes(s.Encoding.PEM, s.PublicFormat.SubjectPublicKeyInfo) for k in others]
    public += [k.public_key().public_bytes(s.Encoding.OpenSSH, s.PublicFormat.OpenSSH) for k in others]
    return ed.key_id, private, public


KEY_ID, PRIVATE_KEYS, PUBLIC_KEYS = _keys()


def _expected_key(data: bytes, *, private: bool):
    """The key id cryptography itself reads from DATA as an unencrypted Ed25519 key (PEM, or OpenSSH where the
    file says so), else None."""
    from cryptography.hazmat.primitives import serialization as s
    from cryptography.hazmat.primitives.asymmetric import ed25519

    try:
        if private:
            load = s.load_ssh_private_key if b"OPENSSH PRIVATE KEY" in data else s.load_pem_private_key
            key = load(data, password=None).public_key()
        elif b"PRIVATE KEY" in data:
            return None
        else:
            key = (s.load_ssh_public_key(data.strip()) if data.lstrip().startswith(b"ssh-")
                   else s.load_pem_public_key(data))
    except Exception:
        return None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        return None
    return signing.key_id(key.public_bytes(s.Encoding.Raw, s.PublicFormat.Raw))


def _load_private(mode: int):
    def load(path):
        os.chmod(path, mode)
        return signing.SigningKey.load(path)
    return load


@MORE
@example(index=0, edits=[], truncate=None, mode=0o640)
@example(index=1, edits=[], truncate=None, mode=0o600)
@given(index=st.integers(0, len(PRIVATE_KEYS) - 1), edits=EDITS, truncate=TRUNCATE,
       mode=st.sampled_from([0o600, 0o400, 0o700, 0o640, 0o604, 0o644, 0o660, 0o610, 0o601]))
def test_private_key_file_is_loaded_exactly_when_it_is_a_private_ed25519_key_only_its_owner_can_read(
        index, edits, truncate, mode):
    data = _edited(PRIVATE_KEYS[index], edits, truncate)
    outcome = _reads_cleanly(_load_private(mode), data, ".pem")
    expected = _expected_key(data, private=True)
    if mode & 0o077:
        assert isinstance(outcome, signing.KeyFileError), f"a private key file with mode {mode:o} was loaded"
        assert "too open" in outcome.message, outcome.message
    elif expected is None:
        assert isinstance(outcome, signing.KeyFileError), "a file that is no Ed25519 private key was loaded"
    else:
        assert isinstance(outcome, signing.SigningKey), outcome.message
        assert outcome.key_id == expected


@MORE
@given(data=st.binary(max_size=200), private=st.booleans())
def test_key_file_of_any_bytes_is_refused_in_one_line(data, private):
    outcome = _reads_cleanly(_load_private(0o600) if private else signing.load_public_key, data, ".pem")
    assert isinstance(outcome, signing.KeyFileError)


@MORE
@example(index=3, edits=[], truncate=None)
@example(index=5, edits=[], truncate=None)
@given(index=st.integers(0, len(PUBLIC_KEYS) - 1), edits=EDITS, truncate=TRUNCATE)
def test_public_key_file_is_trusted_exactly_when_it_is_a_public_ed25519_key(index, edits, truncate):
    data = _edited(PUBLIC_KEYS[index], edits, truncate)
    outcome = _reads_cleanly(signing.load_public_key, data, ".pub")
    expected = _expected_key(data, private=False)
    if expected is None:
        assert isinstance(outcome, signing.KeyFileError), "a file that is no Ed25519 public key was trusted"
    else:
        assert isinstance(outcome, signing.TrustedKey), outcome.message
        assert outcome.key_id == expected
