"""Hostile inputs for every kind of file a reprotrain command reads, built from the documentation alone.

Checkpoints are forged from docs/checkpoint-format.md (``forge.py``: records rewritten, CRC-32s and the
integrity trailer recomputed); payloads would create a file in ``<root>/canary`` if anything ever unpickled
them. Besides forgeries: special files (FIFO, symlink to /dev/zero, directory, socket), bombs (deep
nesting, a zip of a deflated pickle, huge declared lengths, sparse files larger than every read limit),
malformed conda-meta records, metrics.jsonl lines, locks, environment files, fingerprints, policies,
configs and keys.

``generate(root, size)`` writes them under ROOT and returns ``{kind: [Input, ...]}``; ``size`` is "ci" (a
representative subset, seconds) or "full" (everything).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import pickle
import socket
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tests.hostile import forge


@dataclass(frozen=True)
class Input:
    kind: str  # file | run-dir | lock | env-file | fingerprint | policy | prefix | config | key
    name: str
    path: str
    ci: bool = True  # part of the CI-sized run
    benign_for: tuple = ()  # commands for which this input is not hostile (exit 0 is right there)


class _Maker:
    def __init__(self, root: Path):
        self.root = root
        self.canary = root / "canary"
        self.canary.mkdir(parents=True, exist_ok=True)
        self.inputs: dict[str, list[Input]] = {}
        self._sockets = []

    def add(self, kind: str, name: str, path: Path, ci: bool = True, benign_for: tuple = ()) -> Path:
        self.inputs.setdefault(kind, []).append(Input(kind, name, os.fspath(path), ci, benign_for))
        return path

    def dir(self, kind: str) -> Path:
        d = self.root / kind
        d.mkdir(exist_ok=True)
        return d

    def payload(self, name: str, **kw) -> bytes:
        return forge.payload_pickle(os.fspath(self.canary / name), **kw)

    def specials(self, kind: str, suffix: str, ci_all: bool = True) -> None:
        """FIFO, symlink to /dev/zero, symlink to /dev/urandom, directory, socket, dangling symlink, sparse
        file larger than every limit, empty file: for any file input."""
        d = self.dir(kind)
        fifo = d / f"fifo{suffix}"
        os.mkfifo(fifo)
        self.add(kind, "fifo", fifo)
        zero = d / f"zero{suffix}"
        zero.symlink_to("/dev/zero")
        self.add(kind, "symlink-dev-zero", zero)
        rand = d / f"urandom{suffix}"
        rand.symlink_to("/dev/urandom")
        self.add(kind, "symlink-dev-urandom", rand, ci=False)
        directory = d / f"directory{suffix}"
        directory.mkdir()
        self.add(kind, "directory", directory, ci=ci_all)
        dangling = d / f"dangling{suffix}"
        dangling.symlink_to(d / "does-not-exist")
        self.add(kind, "dangling-symlink", dangling, ci=False)
        sock_path = d / f"socket{suffix}"
        if len(os.fspath(sock_path)) < 100:
            sock = socket.socket(socket.AF_UNIX)
            sock.bind(os.fspath(sock_path))
            self._sockets.append(sock)
            self.add(kind, "socket", sock_path, ci=False)
        huge = d / f"sparse-5GiB{suffix}"
        with open(huge, "wb") as handle:
            handle.truncate(5 << 30)  # sparse: no disk used, larger than every read limit
        self.add(kind, "sparse-5GiB", huge, ci=ci_all)
        if kind != "policy":  # an empty policy file is a valid policy (no overrides)
            empty = d / f"empty{suffix}"
            empty.write_bytes(b"")
            self.add(kind, "empty", empty, ci=False)
        weird = d / f"name\nOK       forged line\x1b[31m{suffix}"
        weird.write_bytes(b"\x00junk")
        self.add(kind, "control-chars-in-name", weird, ci=ci_all)


def _zip(records: list[tuple[str, bytes]], method=zipfile.ZIP_STORED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, body in records:
            archive.writestr(zipfile.ZipInfo(name, (2026, 1, 1, 0, 0, 0)), body, compress_type=method)
    return buffer.getvalue()


def _legacy_with_payload(payload: bytes) -> bytes:
    magic = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)
    return magic + pickle.dumps(1001, protocol=2) + pickle.dumps({"little_endian": True}, protocol=2) + payload


def _nested_zip(inner: bytes, depth: int) -> bytes:
    for level in range(depth):
        inner = _zip([(f"level{level}/inner.zip", inner)])
    return inner


def _stack_bomb(count: int) -> bytes:
    # Protocol 2: MARK, COUNT x NONE, then nothing: a scanner that keeps every value or opcode grows with COUNT.
    return b"\x80\x02(" + b"N" * count + b"l."


def _memo_bomb(count: int) -> bytes:
    # Every value memoised: a scanner that keeps the memo grows with COUNT.
    body = bytearray(b"\x80\x04(")
    for _ in range(count):
        body += b"\x8c\x01a\x94"  # SHORT_BINUNICODE "a", MEMOIZE
    return bytes(body) + b"l."


def _write_genuine(path: Path) -> bytes:
    from tests.audit_checkpoints import write_checkpoint

    return write_checkpoint(path).read_bytes()


def generate(root: str | os.PathLike, size: str = "ci") -> dict[str, list[Input]]:
    root = Path(root)
    m = _Maker(root)
    genuine_path = root / "genuine.pth"
    genuine = _write_genuine(genuine_path)
    full = size == "full"

    # ------------------------------------------------------------------ checkpoints and other model files
    d = m.dir("file")
    for via in ("system", "eval", "exec"):
        m.add("file", f"forged-data-pkl-{via}",
              _w(d / f"forged-{via}.pth", forge.forged_payload_checkpoint(genuine, os.fspath(m.canary / via), via=via)),
              ci=via != "exec")
    m.add("file", "forged-extra-member", _w(d / "forged-extra.pth", forge.replace_records(
        genuine, {}, extra=[("archive/extra", m.payload("extra"))])))
    m.add("file", "forged-proto0-member", _w(d / "forged-proto0.pth", forge.replace_records(
        genuine, {}, extra=[("archive/notes", m.payload("proto0", protocol=0))])))
    m.add("file", "forged-proto4-memo", _w(d / "forged-proto4.pth", forge.replace_records(
        genuine, {"archive/data.pkl": m.payload("proto4", protocol=4)})), ci=False)
    m.add("file", "forged-deflated-member", _w(d / "forged-deflated.pth", forge.replace_records(
        genuine, {}, extra=[("archive/x.pkl", m.payload("deflated"))], compress={"archive/x.pkl": zipfile.ZIP_DEFLATED})))

    def edit(name, fn, ci=True):
        m.add("file", name, _w(d / f"{name}.pth", forge.forged_manifest(genuine, fn)), ci=ci)

    edit("forged-fingerprint-digest", lambda mf: mf.__setitem__("fingerprint_digest", "sha256:" + "0" * 64))
    edit("forged-lineage-digest", lambda mf: mf["lineage"][0].__setitem__("fingerprint_digest", "sha256:" + "1" * 64))
    edit("forged-fingerprint", lambda mf: mf["fingerprint"]["torch"].__setitem__("version", "0.0.1"), ci=False)
    edit("forged-step-string", lambda mf: mf.__setitem__("step", "10"), ci=False)
    edit("forged-step-huge", lambda mf: mf.__setitem__("step", 10 ** 30), ci=False)
    manifest = dict(forge.read_records(genuine))[forge.MANIFEST]
    deep = manifest.replace(b'"metrics":{', b'"metrics":' + b"[" * 100000 + b"]" * 100000 + b',"x":{', 1)
    m.add("file", "forged-deeply-nested-manifest", _w(d / "forged-deep.pth", forge.replace_records(
        genuine, {forge.MANIFEST: deep})), ci=full)
    m.add("file", "bare-payload-pickle", _w(d / "bare.pth", m.payload("bare")))
    m.add("file", "legacy-payload", _w(d / "legacy.pth", _legacy_with_payload(m.payload("legacy"))), ci=full)
    m.add("file", "zip-in-zip-payload", _w(d / "nested.pth", _nested_zip(
        _zip([("m/data.pkl", m.payload("nested"))]), 2)))
    m.add("file", "torchscript-constants-payload", _w(d / "ts.pth", _zip(
        [("m/data.pkl", pickle.dumps({}, protocol=2)), ("m/constants.pkl", m.payload("ts")), ("m/code/x.py", b"")])),
        ci=False)
    # Bombs.
    m.add("file", "zip-nested-20-deep", _w(d / "deep.pth", _nested_zip(_zip([("m/data.pkl", b"\x80\x02}.")]), 20)))
    m.add("file", "stored-zip-of-deflated-stack-bomb", _w(d / "bomb-stack.pth", _zip(
        [("m/inner.zip", _zip([("m/data.pkl", _stack_bomb(64 << 20))], zipfile.ZIP_DEFLATED))])))
    m.add("file", "deflated-2GiB-member", _w(d / "bomb-inflate.pth", _deflated_zeros(2 << 30)), ci=full)
    m.add("file", "memo-bomb", _w(d / "bomb-memo.pth", _zip([("m/data.pkl", _memo_bomb(1_200_000))],
                                                              zipfile.ZIP_DEFLATED)), ci=full)
    m.add("file", "binunicode8-claims-1EiB", _w(d / "bomb-length.pth",
                                                b"\x80\x04\x8d" + struct.pack("<Q", 1 << 60) + b"xx."))
    m.add("file", "zip-member-claims-4GiB", _w(d / "bomb-claims.pth", _lying_zip()))
    m.specials("file", ".pth")

    # ------------------------------------------------------------------ run directories (ls, report, train)
    def run_dir(name: str, ci=True) -> Path:
        path = m.dir("run-dir") / name
        path.mkdir()
        m.add("run-dir", name, path, ci=ci)
        return path

    r = run_dir("forged-newest")
    _w(r / "step0000000005-latest.pth", genuine)
    _w(r / "step0000000099-latest.pth", forge.forged_payload_checkpoint(genuine, os.fspath(m.canary / "run")))
    _w(r / "metrics.jsonl", b'{"event": "step", "step": 1, "loss": 0.5}\n')
    r = run_dir("special-files")
    os.mkfifo(r / "step0000000099-latest.pth")
    (r / "step0000000098-latest.pth").symlink_to("/dev/zero")
    os.mkfifo(r / "metrics.jsonl")
    for name, body in {
        "metrics-not-objects": b"[1, 2]\n\"text\"\n3\nnull\n",
        "metrics-not-utf8": b'{"event": "step", "step": 1, "loss": \xff}\n',
        "metrics-deep": b"[" * 100000 + b"]" * 100000 + b"\n",
        "metrics-huge-int": b'{"event": "step", "step": ' + b"9" * 100000 + b', "loss": 1}\n',
        "metrics-long-line": b'{"event": "step", "x": "' + b"a" * (3 << 20) + b'"}\n',
        "metrics-wrong-types": b'{"event": "step", "step": "one", "loss": [1], "epoch": {}}\n{"event": 5}\n',
        "metrics-nan": b'{"event": "step", "step": 1, "loss": NaN}\n{"event": "epoch", "epoch": Infinity}\n',
    }.items():
        r = run_dir(name, ci=name in ("metrics-not-objects", "metrics-deep", "metrics-wrong-types") or full)
        _w(r / "metrics.jsonl", body)
        _w(r / "step0000000005-latest.pth", genuine)

    # ------------------------------------------------------------------ locks and environment files
    lock_text = _real_lock()
    d = m.dir("lock")
    m.add("lock", "md5-is-a-url", _w(d / "url-md5.yml", _replace_first_md5(lock_text, "https://evil.invalid/x")))
    m.add("lock", "not-utf8", _w(d / "not-utf8.yml", b"version: 1\n\xff\xfe\n"))
    m.add("lock", "billion-laughs", _w(d / "laughs.yml", _billion_laughs()))
    m.add("lock", "deeply-nested", _w(d / "nested.yml", b"a: " + b"[" * 100000 + b"]" * 100000 + b"\n"))
    m.add("lock", "explicit-url-md5", _w(d / "explicit.txt", b"@EXPLICIT\nhttps://x.invalid/p-1-0.conda#https://e\n"),
          ci=full)
    m.add("lock", "file-url-to-dev-zero", _w(d / "file-url.yml", _replace_first_url(lock_text, "file:///dev/zero")),
          ci=full, benign_for=("lock show", "lock", "verify"))  # hostile for env create only
    m.specials("lock", ".yml", ci_all=False)
    d = m.dir("env-file")
    m.add("env-file", "billion-laughs", _w(d / "laughs.yml", _billion_laughs()))
    m.add("env-file", "not-utf8", _w(d / "not-utf8.yml", b"name: x\ndependencies: [\xff]\n"))
    m.add("env-file", "wrong-types", _w(d / "types.yml", b"name: [1]\ndependencies: {a: 1}\nchannels: 5\n"))
    m.specials("env-file", ".yml", ci_all=False)

    # ------------------------------------------------------------------ fingerprints, policies, configs, keys
    d = m.dir("fingerprint")
    m.add("fingerprint", "deeply-nested", _w(d / "nested.json", b"[" * 100000 + b"]" * 100000))
    m.add("fingerprint", "not-utf8", _w(d / "not-utf8.json", b'{"a": "\xff"}'))
    m.add("fingerprint", "huge-int", _w(d / "int.json", b'{"python": ' + b"9" * 100000 + b"}"))
    m.specials("fingerprint", ".json", ci_all=False)
    d = m.dir("policy")
    m.add("policy", "billion-laughs", _w(d / "laughs.yml", _billion_laughs()))
    m.add("policy", "python-tag", _w(d / "tag.yml", b"!!python/object/apply:os.system ['touch " +
                                     os.fsencode(m.canary / "yaml") + b"']\n"))
    m.specials("policy", ".yml", ci_all=False)
    d = m.dir("config")
    m.add("config", "task-is-code", _w(d / "task.yml", b"task: os:system\nepochs: 1\n"))
    m.add("config", "lr-nan", _w(d / "nan.yml", b"lr: .nan\nepochs: 1\n"), ci=full)
    m.add("config", "billion-laughs", _w(d / "laughs.yml", _billion_laughs()))
    m.add("config", "python-tag", _w(d / "tag.yml", b"!!python/object/apply:os.system ['touch " +
                                     os.fsencode(m.canary / "config") + b"']\n"))
    m.specials("config", ".yml", ci_all=False)
    d = m.dir("key")
    m.add("key", "not-a-key", _w(d / "junk.pem", b"-----BEGIN PRIVATE KEY-----\n\xff\xff\n-----END PRIVATE KEY-----\n"))
    m.specials("key", ".pem", ci_all=False)

    # ------------------------------------------------------------------ conda prefixes (env verify, env export)
    _prefixes(m, full)
    return m.inputs


def _w(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _deflated_zeros(size: int) -> bytes:
    """A zip whose one member, m/data.pkl, inflates to SIZE zero bytes (about SIZE/1000 on disk)."""
    compressor = zlib_compressobj()
    chunk = b"\0" * (1 << 20)
    body = bytearray()
    crc = 0
    for _ in range(size // len(chunk)):
        body += compressor.compress(chunk)
        crc = __import__("zlib").crc32(chunk, crc)
    body += compressor.flush()
    name = b"m/data.pkl"
    local = struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 8, 0, 0, crc, len(body), size & 0xFFFFFFFF, len(name), 0)
    central = struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 8, 0, 0, crc, len(body), size & 0xFFFFFFFF,
                          len(name), 0, 0, 0, 0, 0, 0)
    cd_start = len(local) + len(name) + len(body)
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 1, 1, len(central) + len(name), cd_start, 0)
    return local + name + bytes(body) + central + name + end


def zlib_compressobj():
    import zlib

    return zlib.compressobj(9, zlib.DEFLATED, -15)


def _lying_zip() -> bytes:
    """A zip whose directory claims a 4 GiB member that the file does not hold."""
    data = bytearray(_zip([("m/data.pkl", b"\x80\x02}.")]))
    cd = data.rfind(b"PK\x01\x02")
    struct.pack_into("<II", data, cd + 20, 0xFFFFFFF0, 0xFFFFFFF0)
    return bytes(data)


def _billion_laughs() -> bytes:
    lines = ["a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]"]
    for level in "bcdefghi":
        prev = chr(ord(level) - 1)
        lines.append(f"{level}: &{level} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]")
    return ("\n".join(lines) + "\n").encode()


def _real_lock() -> str:
    realworld = Path(__file__).resolve().parents[2].parent / "shared" / "realworld" / "conda-lock"
    for path in sorted(realworld.glob("*.yml")):
        return path.read_text(encoding="utf-8")
    return "version: 1\nmetadata: {}\npackage: []\n"


def _replace_first_md5(text: str, value: str) -> bytes:
    import re

    return re.sub(r"md5: [0-9a-f]{32}", f"md5: {value}", text, count=1).encode()


def _replace_first_url(text: str, value: str) -> bytes:
    import re

    return re.sub(r"url: \S+", f"url: {value}", text, count=1).encode()


def _prefixes(m: _Maker, full: bool) -> None:
    base = m.dir("prefix")

    def prefix(name: str, ci=True) -> Path:
        path = base / name
        (path / "conda-meta").mkdir(parents=True)
        m.add("prefix", name, path, ci=ci)
        return path

    p = prefix("conda-meta-fifo")
    os.mkfifo(p / "conda-meta" / "x-1.0-0.json")
    p = prefix("conda-meta-dev-zero")
    (p / "conda-meta" / "x-1.0-0.json").symlink_to("/dev/zero")
    p = prefix("conda-meta-wrong-types")
    _w(p / "conda-meta" / "x-1.0-0.json", json.dumps({"name": ["x"], "version": {"v": 1}, "build": 5,
                                                     "files": "abc", "paths_data": {"paths": "zzz"},
                                                     "md5": 7}).encode())
    p = prefix("conda-meta-not-json", ci=full)
    _w(p / "conda-meta" / "x-1.0-0.json", b"\xff\xfe{")
    p = prefix("conda-meta-not-object", ci=full)
    _w(p / "conda-meta" / "x-1.0-0.json", b"[1, 2, 3]")
    p = prefix("history-fifo", ci=full)
    os.mkfifo(p / "conda-meta" / "history")
    # A pip RECORD and a conda paths_data entry pointing out of the prefix, with the real hash of the target.
    p = prefix("deep-paths-outside")
    secret = m.root / "secret.txt"
    secret.write_text("never hash me")
    digest = hashlib.sha256(secret.read_bytes()).digest()
    site = p / "lib" / "python3.11" / "site-packages"
    dist = site / "evil-1.0.dist-info"
    dist.mkdir(parents=True)
    _w(dist / "METADATA", b"Name: evil\nVersion: 1.0\n\n")
    _w(dist / "INSTALLER", b"pip\n")
    rel = os.path.relpath(secret, site)
    _w(dist / "RECORD", f"{rel},sha256={base64.urlsafe_b64encode(digest).decode().rstrip('=')},13\n".encode())
    (site / "zero").symlink_to("/dev/zero")
    _w(p / "conda-meta" / "x-1.0-0.json", json.dumps({
        "name": "x", "version": "1.0", "build": "0", "md5": "0" * 32, "files": [],
        "paths_data": {"paths": [{"_path": os.fspath(secret), "path_type": "hardlink", "sha256": digest.hex()},
                                 {"_path": "lib/python3.11/site-packages/zero", "path_type": "hardlink",
                                  "sha256": "0" * 64}]}}).encode())
    p = prefix("dist-info-fifo-metadata")
    dist = p / "lib" / "python3.11" / "site-packages" / "x-1.dist-info"
    dist.mkdir(parents=True)
    os.mkfifo(dist / "METADATA")
    _w(dist / "INSTALLER", b"\xff\xfe not utf-8")
    p = prefix("installer-not-utf8", ci=full)
    dist = p / "lib" / "python3.11" / "site-packages" / "x-1.dist-info"
    dist.mkdir(parents=True)
    _w(dist / "METADATA", b"Name: x\nVersion: 1\n\n")
    _w(dist / "INSTALLER", b"\xff\xfe")
    _w(dist / "RECORD", b"\xff,\xfe\n")
