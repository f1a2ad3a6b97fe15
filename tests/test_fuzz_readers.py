"""Hypothesis-driven fuzzing of every reader of untrusted input: a clear ReprotrainError or a result, never a
traceback. Readers: checkpoint container + manifest, fingerprint, resume policy, environment file, lock file."""

from __future__ import annotations

import io
import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings, strategies as st

from audit_checkpoints import manifest_for, small_state
from reprotrain import fingerprint as fp
from reprotrain.checkpoint import format as ckformat, reader
from reprotrain.envlock.lockfile import read_lockfile
from reprotrain.envlock.solve import validate_environment_file
from reprotrain.errors import ReprotrainError

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                                 max_size=4), max_leaves=20)
FINGERPRINT = fp.collect()
STATE = small_state()
MANIFEST = manifest_for(STATE, FINGERPRINT)


def _checkpoint_bytes(manifest: dict) -> bytes:
    buf = io.BytesIO()
    ckformat.write(buf, manifest, STATE)
    return buf.getvalue()


GOOD = _checkpoint_bytes(MANIFEST)


def _in_file(data: bytes, suffix: str):
    handle = tempfile.NamedTemporaryFile(suffix=suffix, delete=False)
    handle.write(data)
    handle.close()
    return Path(handle.name)


def _reads_cleanly(func, data: bytes, suffix: str):
    path = _in_file(data, suffix)
    try:
        return func(path)
    except ReprotrainError as exc:
        assert exc.message and "\n" not in exc.message.strip().splitlines()[0]
        assert str(path) in str(exc) or exc.path is not None
        return exc
    finally:
        path.unlink()


@SETTINGS
@given(edits=st.lists(st.tuples(st.integers(0, len(GOOD) - 1), st.binary(min_size=1, max_size=8)), min_size=1,
                      max_size=4), cut=st.integers(0, len(GOOD)))
def test_damaged_checkpoint_bytes_are_always_detected(edits, cut):
    data = bytearray(GOOD)
    for offset, chunk in edits:
        data[offset:offset + len(chunk)] = chunk
    data = bytes(data[:max(cut, 1)] if cut < len(GOOD) // 2 else data)
    assume(data != GOOD)
    outcome = _reads_cleanly(lambda p: reader.read_info(p, check_integrity=True), data, ".pth")
    assert isinstance(outcome, ReprotrainError), "a damaged checkpoint passed the integrity check"


@SETTINGS
@given(field=st.sampled_from(sorted(MANIFEST)), value=JSON)
def test_manifest_with_any_field_replaced_is_read_or_refused_in_one_line(field, value):
    manifest = {**MANIFEST, field: value}
    try:
        data = _checkpoint_bytes(manifest)
    except (TypeError, ValueError):
        return  # not writable as JSON (e.g. a NaN the writer refuses): nothing to read
    outcome = _reads_cleanly(reader.read_info, data, ".pth")
    if isinstance(outcome, ReprotrainError):
        assert outcome.message.startswith("manifest is invalid at"), outcome.message


@SETTINGS
@given(doc=JSON | st.fixed_dictionaries({}, optional={k: JSON for k in list(FINGERPRINT)[:6]}))
def test_fingerprint_reader_never_raises_anything_else(doc):
    outcome = _reads_cleanly(fp.load, json.dumps(doc).encode(), ".json")
    assert isinstance(outcome, (ReprotrainError, dict))


@SETTINGS
@given(data=st.binary(max_size=200))
def test_fingerprint_reader_on_arbitrary_bytes(data):
    outcome = _reads_cleanly(fp.load, data, ".json")
    assert isinstance(outcome, ReprotrainError)


@SETTINGS
@given(doc=JSON, text=st.text(max_size=80))
def test_policy_reader_never_raises_anything_else(doc, text):
    for payload in (json.dumps(doc), text):
        outcome = _reads_cleanly(fp.Policy.load, payload.encode(), ".yml")
        assert isinstance(outcome, (ReprotrainError, fp.Policy))


@SETTINGS
@given(doc=JSON, text=st.text(max_size=120))
def test_environment_file_reader_never_raises_anything_else(doc, text):
    for payload in (json.dumps(doc), text, "name: x\ndependencies:\n" + text):
        outcome = _reads_cleanly(validate_environment_file, payload.encode(), ".yml")
        assert isinstance(outcome, (ReprotrainError, dict))


@SETTINGS
@given(doc=JSON, cut=st.floats(0, 1), junk=st.binary(max_size=16))
def test_lock_file_reader_never_raises_anything_else(realworld, doc, cut, junk):
    lock = (realworld / "conda-lock" / "01-ai__Yi__conda-lock.yml").read_bytes()
    payloads = [json.dumps(doc).encode(), lock[:int(len(lock) * cut)] + junk,
                lock.replace(b"version: 1", json.dumps(doc).encode(), 1)]
    for payload in payloads:
        outcome = _reads_cleanly(read_lockfile, payload, ".yml")
        assert outcome is not None


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
