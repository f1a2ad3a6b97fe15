"""Hypothesis-driven fuzzing of every reader of untrusted input: a clear one-line ReprotrainError or a result, never
a traceback, and the RIGHT one of the two: each test states which inputs must be read and which refused (an oracle
from the format's own definition: the manifest schema, the fingerprint validator, the policy and environment-file
rules). Readers: checkpoint container + manifest, fingerprint, resume policy, environment file, lock file."""

from __future__ import annotations

import io
import json
import tempfile
from pathlib import Path

import jsonschema
import pytest
import yaml
from hypothesis import HealthCheck, assume, example, given, settings, strategies as st

from audit_checkpoints import manifest_for, small_state
from reprotrain import fingerprint as fp, safeio
from reprotrain.checkpoint import container, format as ckformat, reader
from reprotrain.checkpoint.manifest import check_digests
from reprotrain.envlock.lockfile import read_lockfile
from reprotrain.envlock.solve import validate_environment_file
from reprotrain.errors import ReprotrainError

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Finite floats only: JSON has no NaN or infinity, and the checkpoint writer rightly refuses them.
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
                    | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                                 max_size=4), max_leaves=20)
FINGERPRINT = fp.collect()
STATE = small_state()
MANIFEST = manifest_for(STATE, FINGERPRINT)
MANIFEST_SCHEMA = jsonschema.Draft202012Validator(json.loads(
    (Path(reader.__file__).parent / "schemas" / "manifest.schema.json").read_text()))


def _checkpoint_bytes(manifest: dict) -> bytes:
    buf = io.BytesIO()
    ckformat.write(buf, manifest, STATE)
    return buf.getvalue()


GOOD = _checkpoint_bytes(MANIFEST)
_RECORDS = container.read_directory(io.BytesIO(GOOD)).records
TENSOR_BYTE = min(r.data_offset for r in _RECORDS.values() if r.name.startswith(container.DATA_PREFIX))
PICKLE_BYTE = _RECORDS[f"{container.ARCHIVE}/data.pkl"].data_offset + 20


def _in_file(data: bytes, suffix: str):
    handle = tempfile.NamedTemporaryFile(suffix=suffix, delete=False)
    handle.write(data)
    handle.close()
    return Path(handle.name)


def _reads_cleanly(func, data: bytes, suffix: str):
    """FUNC(a file holding DATA): its result, or the ReprotrainError it raised (one line, naming the file)."""
    path = _in_file(data, suffix)
    try:
        return func(path)
    except ReprotrainError as exc:
        assert exc.message and "\n" not in exc.message.strip(), exc.message
        assert str(path) in str(exc), str(exc)
        return exc
    finally:
        path.unlink()


def _acceptable(manifest: dict) -> bool:
    doc = json.loads(json.dumps(manifest))
    if not MANIFEST_SCHEMA.is_valid(doc):
        return False
    try:
        check_digests(doc)
    except ReprotrainError:
        return False
    return True


# The integrity check must catch edits the manifest cannot see: explicit examples inside tensor data and inside the
# pickle always run (a random draw alone passed in 1 of 7 runs with the check switched off).
@SETTINGS
@example(edits=[(TENSOR_BYTE, b"\x01")], truncate_to=None)
@example(edits=[(PICKLE_BYTE, b"\xff\xfe")], truncate_to=None)
@example(edits=[(TENSOR_BYTE + 3, b"\x00\x00\x00\x00")], truncate_to=len(GOOD) - 1)
@given(edits=st.lists(st.tuples(st.integers(0, len(GOOD) - 1), st.binary(min_size=1, max_size=8)), max_size=4),
       truncate_to=st.none() | st.integers(0, len(GOOD) - 1))
def test_random_edits_and_truncations_of_a_checkpoint_are_detected(edits, truncate_to):
    data = bytearray(GOOD)
    for offset, chunk in edits:
        data[offset:offset + len(chunk)] = chunk
    data = bytes(data if truncate_to is None else data[:truncate_to])
    assume(data != GOOD)
    outcome = _reads_cleanly(lambda p: reader.read_info(p, check_integrity=True), data, ".pth")
    assert isinstance(outcome, ReprotrainError), "a damaged checkpoint passed the integrity check"


@SETTINGS
@example(field="step", value="nine")
@example(field="kind", value="latest")
@given(field=st.sampled_from(sorted(MANIFEST)), value=JSON)
def test_manifest_with_any_field_replaced_is_read_exactly_when_the_schema_accepts_it(field, value):
    """Read exactly when the schema accepts the manifest and its fingerprint digests are consistent."""
    manifest = {**MANIFEST, field: value}
    data = _checkpoint_bytes(manifest)  # any JSON value is writable: a writer error fails the test
    outcome = _reads_cleanly(reader.read_info, data, ".pth")
    if _acceptable(manifest):
        assert not isinstance(outcome, ReprotrainError), outcome.message
        assert outcome.manifest == json.loads(json.dumps(manifest))
    else:
        assert isinstance(outcome, ReprotrainError), f"a manifest the schema refuses was read ({field}={value!r})"
        assert outcome.message.startswith("manifest is invalid at"), outcome.message


def _valid_fingerprint(doc) -> bool:
    try:
        fp.validate(json.loads(json.dumps(doc)))
    except ReprotrainError:
        return False
    return True


@SETTINGS
@example(doc=FINGERPRINT)
@given(doc=JSON | st.fixed_dictionaries({}, optional={k: JSON for k in list(FINGERPRINT)[:6]}))
def test_fingerprint_reader_returns_valid_documents_and_refuses_the_rest(doc):
    outcome = _reads_cleanly(fp.load, json.dumps(doc).encode(), ".json")
    if _valid_fingerprint(doc):
        assert outcome == json.loads(json.dumps(doc))
    else:
        assert isinstance(outcome, ReprotrainError), "an invalid fingerprint was read"


@SETTINGS
@given(data=st.binary(max_size=200))
def test_fingerprint_reader_on_arbitrary_bytes(data):
    outcome = _reads_cleanly(fp.load, data, ".json")
    assert isinstance(outcome, ReprotrainError)


def _parse_yaml(payload: str):
    """The oracle parses with the loader the readers use: PyYAML's C and pure-Python safe loaders differ on
    some odd inputs (a lone tag "!" is '' in one and None in the other); the oracle checks our reading, not
    PyYAML's agreement with itself."""
    return safeio.load_yaml(payload)


def _policy_expected(payload: str):
    """The overrides a policy file holding PAYLOAD must give, or None when it must be refused."""
    try:
        doc = _parse_yaml(payload)
    except yaml.YAMLError:
        return None
    doc = {} if doc is None else doc
    if not isinstance(doc, dict) or not all(isinstance(k, str) and k and v in fp.policy.FILE_ACTIONS
                                            for k, v in doc.items()):
        return None
    return doc


@SETTINGS
@example(doc={"torch.version": "warn", "host.*": "ignore"}, text="python.version: refuse\nlibraries.*: info\n")
@example(doc=None, text="!")
@given(doc=JSON, text=st.text(max_size=80))
def test_policy_reader_loads_exactly_the_valid_mappings(doc, text):
    for payload in (json.dumps(doc), text):
        outcome = _reads_cleanly(fp.Policy.load, payload.encode(), ".yml")
        expected = _policy_expected(payload)
        if expected is None:
            assert isinstance(outcome, ReprotrainError), f"policy {payload!r} was accepted"
        else:
            assert isinstance(outcome, fp.Policy) and outcome.overrides == expected, payload


def _environment_expected(payload: str):
    """The document an environment file holding PAYLOAD must give, or None when it must be refused."""
    try:
        doc = _parse_yaml(payload)
    except yaml.YAMLError:
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("dependencies"), list):
        return None
    channels, platforms = doc.get("channels") or [], doc.get("platforms", [])
    for names in (channels, platforms):
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            return None
    return doc


@SETTINGS
@example(doc={"dependencies": ["python 3.11.*"], "channels": ["conda-forge"]}, text="  - numpy\n")
@given(doc=JSON, text=st.text(max_size=120))
def test_environment_file_reader_accepts_exactly_the_valid_files(doc, text):
    for payload in (json.dumps(doc), text, "name: x\ndependencies:\n" + text):
        outcome = _reads_cleanly(validate_environment_file, payload.encode(), ".yml")
        expected = _environment_expected(payload)
        if expected is None:
            assert isinstance(outcome, ReprotrainError), f"environment file {payload!r} was accepted"
        else:
            assert outcome == expected, payload


@SETTINGS
@example(doc=None, cut=1.0, junk=b"")
@given(doc=JSON, cut=st.floats(0, 1), junk=st.binary(max_size=16))
def test_lock_file_reader_refuses_what_is_not_a_lock(realworld, doc, cut, junk):
    lock = (realworld / "conda-lock" / "01-ai__Yi__conda-lock.yml").read_bytes()
    # Random JSON, and the real lock with its version line replaced by JSON, are never a lock.
    for payload in (json.dumps(doc).encode(), lock.replace(b"version: 1", json.dumps(doc).encode(), 1)):
        assert isinstance(_reads_cleanly(read_lockfile, payload, ".yml"), ReprotrainError), payload[:80]
    # A cut lock plus junk is refused or, when the cut left a whole lock, read (packages from the real lock).
    whole = read_lockfile(realworld / "conda-lock" / "01-ai__Yi__conda-lock.yml")
    outcome = _reads_cleanly(read_lockfile, lock[:int(len(lock) * cut)] + junk, ".yml")
    if not isinstance(outcome, ReprotrainError):
        assert {(p.name, p.version, p.platform) for p in outcome.package} <= \
            {(p.name, p.version, p.platform) for p in whole.package}
    if cut == 1.0 and not junk:
        assert outcome.package == whole.package


def test_random_flips_and_truncations_of_a_large_checkpoint_are_all_detected(tmp_path):
    """A 32 MiB checkpoint: 40 single-bit flips at random offsets (tensor bytes, mostly) and 10 truncations,
    each checked by the full integrity check of the real reader; every one is detected."""
    import random

    import torch

    state = {"model": {"weight": torch.randn(8 << 20)}}
    path = tmp_path / "large.pth"
    with open(path, "wb") as handle:
        ckformat.write(handle, manifest_for(state, FINGERPRINT), state)
    size = path.stat().st_size
    rng = random.Random(11)
    reader.read_valid(path)  # intact: accepted
    with open(path, "r+b") as handle:
        for _ in range(40):
            offset, bit = rng.randrange(size), 1 << rng.randrange(8)
            handle.seek(offset)
            original = handle.read(1)[0]
            handle.seek(offset)
            handle.write(bytes([original ^ bit]))
            handle.flush()
            with pytest.raises(ReprotrainError):
                reader.read_valid(path)
            handle.seek(offset)
            handle.write(bytes([original]))
            handle.flush()
    reader.read_valid(path)  # every flip was undone: accepted again
    data = path.read_bytes()
    for _ in range(10):
        truncated = tmp_path / "truncated.pth"
        truncated.write_bytes(data[:rng.randrange(size)])
        with pytest.raises(ReprotrainError):
            reader.read_valid(truncated)
