"""Hypothesis fuzzing of the readers issue 11 hardened (tests/hostile has the fixed hostile inputs):

* the static pickle scanner: any bytes give a PickleScan (never an exception), a payload pickle embedded
  anywhere in a pickle-shaped stream is always found, and its in-buffer decoding agrees with its exact reads;
* the foreign-file classifier: any bytes, any zip of any members, give a Classification, never exit 0;
* the checkpoint reader: a genuine checkpoint with any record replaced or added (integrity recomputed, as an
  attacker would) is either read or refused in one line; one carrying a payload anywhere is always refused;
* safeio: any size against any limit, the cap holds; escape_control: no control character survives.
"""

from __future__ import annotations

import io
import os
import pickle
import tempfile
import zipfile

from hypothesis import HealthCheck, example, given, settings, strategies as st

from reprotrain import safeio
from reprotrain.audit import classify
from reprotrain.checkpoint import pickle_scan, reader
from reprotrain.checkpoint.manifest import UnsafeCheckpoint
from reprotrain.errors import ReprotrainError, escape_control
from tests.audit_checkpoints import write_checkpoint
from tests.hostile import forge

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                            HealthCheck.function_scoped_fixture])
_DIR = tempfile.mkdtemp(prefix="fuzz-hostile-")
GENUINE = write_checkpoint(__import__("pathlib").Path(_DIR) / "genuine.pth").read_bytes()
CANARY = os.path.join(_DIR, "CANARY")
PAYLOADS = [forge.payload_pickle(CANARY, via=via, protocol=protocol)
            for via in ("system", "eval") for protocol in (0, 1, 2, 4)]


@SETTINGS
@given(data=st.binary(max_size=4096))
def test_scanner_never_raises_on_any_bytes(data):
    scan = pickle_scan.scan_pickle(data)
    assert isinstance(scan, pickle_scan.PickleScan)
    assert len(scan.imports) <= pickle_scan.MAX_NAMES + 1


@SETTINGS
@given(prefix=st.text(max_size=40).map(lambda t: t.encode("utf-8")[:64]), payload=st.sampled_from(PAYLOADS))
def test_scanner_finds_a_payload_after_any_safe_prefix_of_opcodes(prefix, payload):
    # A pickle that first pushes and pops arbitrary strings (kept as text or not) and then runs the payload.
    prefix = prefix.decode("utf-8", "ignore").encode("ascii", "ignore")
    safe = b"".join(b"\x8c" + bytes([len(chunk)]) + chunk + b"0" for chunk in [prefix[i:i + 16]
                                                                            for i in range(0, len(prefix), 16)])
    body = payload[2:] if payload[:1] == b"\x80" else payload
    scan = pickle_scan.scan_pickle(b"\x80\x04" + safe + body)
    assert scan.unsafe(), scan



class _Trickle(io.BytesIO):
    """A file object that returns at most 3 bytes a read: the scanner then decodes nearly every opcode through its
    exact reads, not from its buffer."""

    def read(self, n=-1):
        return super().read(3 if n is None or n < 0 else min(n, 3))


_SCAN_SAMPLES = (
    [dict(forge.read_records(GENUINE))["archive/data.pkl"]] + PAYLOADS
    + [pickle.dumps({"ключ": ["值", 2.5, -7, 1 << 70, b"\xff" * 300, bytearray(b"q" * 20), (None, True)],
                     "long": "x" * 70_000, "set": {1, 2}, "frozen": frozenset([3])}, protocol=protocol)
       for protocol in range(6)]
    # A STACK_GLOBAL of non-ASCII names: the decoded text is what the import names.
    + [b"\x80\x04" + b"".join(b"\x8c" + bytes([len(name)]) + name for name in ("模块".encode(), "函数".encode()))
       + b"\x93)R."])


def _every_sample_whole(test):
    """Every sample, whole and under no limit, as an explicit example (random draws may miss one, such as the
    non-ASCII STACK_GLOBAL)."""
    for base in _SCAN_SAMPLES:
        test = example(base=base, cut=80_000, edits=[], limit=pickle_scan.MAX_PICKLE)(test)
    return test


@SETTINGS
@given(base=st.sampled_from(_SCAN_SAMPLES), cut=st.integers(0, 80_000),
       edits=st.lists(st.tuples(st.integers(0, 80_000), st.integers(0, 255)), max_size=3),
       limit=st.sampled_from([pickle_scan.MAX_PICKLE, 10, 60, 1000, 70_000]))
@_every_sample_whole
def test_scanner_reads_the_same_from_its_buffer_as_byte_by_byte(base, cut, edits, limit):
    # The scanner decodes most opcodes straight from its buffer and falls back to exact reads at a buffer's or the
    # limit's edge; both must see the same pickle, whatever it is cut or altered into, whatever the limit.
    data = bytearray(base[:cut] if cut < len(base) else base)
    for at, value in edits:
        if data:
            data[at % len(data)] = value
    whole = pickle_scan.scan_pickle(bytes(data), limit=limit)
    trickled = pickle_scan.scan_pickle(_Trickle(bytes(data)), limit=limit)
    assert (whole.imports, whole.calls, whole.end, whole.error, whole.first_value, whole.opcodes) == \
        (trickled.imports, trickled.calls, trickled.end, trickled.error, trickled.first_value, trickled.opcodes)

@SETTINGS
@given(data=st.binary(max_size=4096))
def test_classifier_never_raises_and_never_says_ok(data):
    verdict = classify.classify_bytes(data, confirm=False)
    assert verdict.exit_code in (2, 3)


@SETTINGS
@given(members=st.lists(st.tuples(st.text(min_size=1, max_size=12).map(lambda t: f"m/{t}"),
                                  st.binary(max_size=512) | st.sampled_from(PAYLOADS)), min_size=1, max_size=5),
       deflate=st.booleans())
def test_any_zip_is_classified_and_a_payload_member_is_unsafe(members, deflate):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, body in members:
            archive.writestr(name, body, compress_type=zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED)
    verdict = classify.classify_bytes(buffer.getvalue(), confirm=False)
    assert verdict.exit_code in (2, 3)
    if any(body in PAYLOADS for _, body in members):
        assert verdict.category == "unsafe-pickle", verdict
    assert not os.path.exists(CANARY)


@SETTINGS
@given(name=st.sampled_from(["archive/data.pkl", "archive/byteorder", "archive/version", "archive/.format_version"])
       | st.text(alphabet="abcdefghij./_", min_size=1, max_size=12).map(lambda t: f"archive/{t}"),
       body=st.binary(max_size=256) | st.sampled_from(PAYLOADS))
def test_a_resealed_checkpoint_with_any_record_is_read_or_refused_and_payloads_always_refused(name, body):
    existing = dict(forge.read_records(GENUINE))
    if name in existing:
        data = forge.replace_records(GENUINE, {name: body})
    elif name.startswith("archive/data/") or name == forge.MANIFEST:
        return
    else:
        data = forge.replace_records(GENUINE, {}, extra=[(name, body)])
    with tempfile.NamedTemporaryFile(suffix=".pth", dir=_DIR, delete=False) as handle:
        handle.write(data)
    try:
        for integrity in (False, True):
            try:
                reader.read_info(handle.name, check_integrity=integrity)
                assert body not in PAYLOADS, f"a payload in {name} was accepted"
            except ReprotrainError as exc:
                assert exc.exit_code == 2 and "\n" not in exc.message
                if body in PAYLOADS:
                    assert isinstance(exc, UnsafeCheckpoint), exc.message
    finally:
        os.unlink(handle.name)
    assert not os.path.exists(CANARY)


@SETTINGS
@given(size=st.integers(0, 5000), limit=st.integers(0, 5000))
def test_safeio_cap_holds_for_any_size(size, limit):
    path = os.path.join(_DIR, "cap")
    with open(path, "wb") as handle:
        handle.write(b"x" * size)
    try:
        assert safeio.read_regular(path, limit=limit, what="input") == b"x" * size
        assert size <= limit
    except safeio.TooLarge:
        assert size > limit


@SETTINGS
@given(text=st.text())
def test_escape_control_leaves_no_control_character(text):
    shown = escape_control(text)
    assert shown.isprintable() or all(c.isprintable() or c == " " for c in shown)
    assert "\n" not in shown and "\x1b" not in shown and "\r" not in shown


def test_payloads_are_real():
    # Sanity: the payloads are what an attacker would write (they import what they claim); never loaded here.
    assert all(any(n in ("posix.system", "builtins.eval") for n in pickle_scan.scan_pickle(p).imports)
               for p in PAYLOADS)
    assert pickle.HIGHEST_PROTOCOL >= 4
