"""Power-loss crash states of real checkpoint saves, enumerated and checked with the real reader.

    python benchmarks/crashstates.py            # full exploration
    python benchmarks/crashstates.py --quick    # the CI-sized run (tests/test_crashstates.py)

SIGKILL keeps the page cache; a power cut does not. This explorer follows ALICE (Pillai et al., "All File
Systems Are Not Created Equal", OSDI 2014): run the REAL code (CheckpointManager saves, retention, restarts
over leftovers, `--fresh --overwrite`, `reprotrain sign`) through a recording layer that wraps the os-level
calls it makes (open/creat, write, pwrite, copy_file_range, ftruncate, fsync/fdatasync/F_FULLFSYNC, rename,
unlink, mkdir, rmdir, directory fsync) and turn each trace into logical operations. Then, for every crash
point (after every operation), enumerate the on-disk states an abstract persistence model permits:

* ``posix``: the weakest model. Any subset of the directory operations not yet made durable by an fsync of
  their directory persists (each one atomic, a rename included); unsynced file data persists partially at
  512-byte granularity, in any subset, with the gaps reading as zeros or as stale garbage.
* ``ext4-ordered``: metadata journaled in order (a prefix of the directory operations; any fsync commits
  the journal); unsynced data persists as a prefix of the written blocks (data=ordered: no garbage).
* ``ext4-writeback``: journaled metadata as above; unsynced data blocks in any subset, gaps are stale garbage.
* ``xfs``: journaled metadata as above; unsynced data blocks in any subset, gaps read as zeros.

Each state is materialised in a real directory and checked with the real reader (list_checkpoints with a
full integrity check, select_for_resume, and a new writer's start that removes leftovers):

1. nothing invalid is picked: the picked file is byte-identical to a checkpoint the writer completed;
2. no checkpoint whose save returned is lost (unless the code itself deleted or replaced it later);
3. resume picks a checkpoint at least as new as the newest returned save still expected.

Object stores (``objectstore``): the requests of a real ObjectRunDirectory (fsspec memory filesystem) are
recorded; an object is visible only after its complete PUT, and the crash may come between any two requests.

Data sets are small (a 16x16 linear model) so that every crash point is explored; the counts are printed.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import itertools
import json
import os
import random
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

BLOCK = 512
MODELS = ("posix", "ext4-ordered", "ext4-writeback", "xfs")
GARBAGE = 0xA5


# =========================================================================== recording


class Recorder:
    """Wraps os-level calls under ``root`` and records logical operations (in call order, thread-safe).

    Inodes get ids of their own; directory entries are (dir inode, name) -> inode. The state under ``root``
    when recording starts is the durable initial state.
    """

    def __init__(self, root: Path):
        self.root = os.path.abspath(root)
        self.ops: list[tuple] = []
        self.names: dict[tuple[int, str], int] = {}  # live namespace
        self.dirs: dict[str, int] = {}  # live directory path -> inode
        self.kind: dict[int, str] = {}  # inode -> "file" | "dir"
        self.initial_data: dict[int, bytes] = {}
        self.initial_names: dict[tuple[int, str], int] = {}
        self.content: dict[int, bytearray] = {}  # live content of file inodes (for markers and legit contents)
        self.fds: dict[int, list] = {}  # fd -> [inode, position]
        self._next = 1
        self._lock = threading.RLock()
        self.root_ino = self._new("dir")
        self.dirs[self.root] = self.root_ino
        self._scan(self.root, self.root_ino)
        self.initial_names = dict(self.names)
        self.initial_data = {ino: bytes(c) for ino, c in self.content.items()}
        self.completed: set[str] = set()  # sha256 of every file content renamed to a *.pth name

    def _new(self, kind: str) -> int:
        ino = self._next
        self._next += 1
        self.kind[ino] = kind
        if kind == "file":
            self.content[ino] = bytearray()
        return ino

    def _scan(self, path: str, dir_ino: int) -> None:
        for entry in sorted(os.scandir(path), key=lambda e: e.name):
            if entry.is_dir(follow_symlinks=False):
                ino = self._new("dir")
                self.dirs[entry.path] = ino
                self.names[(dir_ino, entry.name)] = ino
                self._scan(entry.path, ino)
            elif entry.is_file(follow_symlinks=False):
                ino = self._new("file")
                self.content[ino] += Path(entry.path).read_bytes()
                self.names[(dir_ino, entry.name)] = ino

    # -- path helpers
    def _abs(self, path, dir_fd=None) -> str | None:
        if isinstance(path, int):
            return None
        path = os.fsdecode(os.fspath(path))
        if dir_fd is not None and not os.path.isabs(path):
            path = os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), path)
        path = os.path.abspath(path)
        if path == self.root or path.startswith(self.root + os.sep):
            return path
        return None

    def _split(self, path: str) -> tuple[int, str] | None:
        parent, name = os.path.split(path)
        dir_ino = self.dirs.get(parent)
        return None if dir_ino is None else (dir_ino, name)

    def mark(self, **info) -> None:
        with self._lock:
            self.ops.append(("mark", info))

    # -- the wrapped calls
    def on_open(self, path, flags, fd, existed) -> None:
        if path in self.dirs:
            self.fds[fd] = [self.dirs[path], 0, "dir"]
            return
        where = self._split(path)
        if where is None:
            return
        ino = self.names.get(where)
        if ino is None or not existed:
            ino = self._new("file")
            self.names[where] = ino
            self.ops.append(("meta", [("set", where[0], where[1], ino)]))
        elif flags & os.O_TRUNC:
            self.content[ino] = bytearray()
            self.ops.append(("trunc", ino, 0))
        self.fds[fd] = [ino, 0, "file"]

    def on_write(self, fd, data, offset=None) -> None:
        rec = self.fds.get(fd)
        if rec is None or rec[2] != "file":
            return
        ino, pos = rec[0], rec[1]
        at = pos if offset is None else offset
        data = bytes(data)
        buf = self.content[ino]
        if len(buf) < at:
            buf.extend(b"\0" * (at - len(buf)))
        buf[at:at + len(data)] = data
        self.ops.append(("write", ino, at, data))
        if offset is None:
            rec[1] = at + len(data)

    def on_truncate(self, fd, length) -> None:
        rec = self.fds.get(fd)
        if rec is None or rec[2] != "file":
            return
        buf = self.content[rec[0]]
        del buf[length:]
        buf.extend(b"\0" * (length - len(buf)))
        self.ops.append(("trunc", rec[0], length))

    def on_sync(self, fd) -> None:
        rec = self.fds.get(fd)
        if rec is not None and rec[0] is not None:
            self.ops.append(("fsync", rec[0]))

    def on_rename(self, src, dst) -> None:
        a, b = self._split(src), self._split(dst)
        if a is None or b is None:
            return
        ino = self.names.pop(a, None)
        if ino is None:
            return
        self.names[b] = ino
        if self.kind[ino] == "dir":
            self._move_dir(src, dst)
        self.ops.append(("meta", [("del", a[0], a[1]), ("set", b[0], b[1], ino)]))
        if dst.endswith(".pth") and self.kind[ino] == "file":
            self.completed.add(hashlib.sha256(self.content[ino]).hexdigest())

    def _move_dir(self, src, dst) -> None:
        for path in [p for p in self.dirs if p == src or p.startswith(src + os.sep)]:
            self.dirs[dst + path[len(src):]] = self.dirs.pop(path)

    def on_unlink(self, path) -> None:
        where = self._split(path)
        if where is None or where not in self.names:
            return
        ino = self.names.pop(where)
        self.ops.append(("meta", [("del", where[0], where[1])]))
        if self.kind.get(ino) == "dir":
            self.dirs.pop(path, None)

    def on_mkdir(self, path) -> None:
        where = self._split(path)
        if where is None:
            return
        ino = self._new("dir")
        self.names[where] = ino
        self.dirs[path] = ino
        self.ops.append(("meta", [("set", where[0], where[1], ino)]))


@contextlib.contextmanager
def recording(root: Path, legit=()):
    """Record the file-system operations under ``root`` made by this process while the block runs.

    ``legit``: checkpoint files already there that the real writer completed (resume may pick them)."""
    rec = Recorder(root)
    for path in legit:
        rec.completed.add(hashlib.sha256(Path(path).read_bytes()).hexdigest())
    real = {name: getattr(os, name) for name in ("open", "write", "pwrite", "fsync", "fdatasync", "replace",
                                                 "rename", "unlink", "remove", "mkdir", "rmdir", "ftruncate",
                                                 "close", "copy_file_range")}
    real_fcntl = fcntl.fcntl

    def _open(path, flags, mode=0o777, *, dir_fd=None):
        p = rec._abs(path, dir_fd)
        existed = p is not None and os.path.lexists(p)
        fd = real["open"](path, flags, mode, dir_fd=dir_fd)
        if p is not None:
            with rec._lock:
                rec.on_open(p, flags, fd, existed)
        return fd

    def _write(fd, data):
        n = real["write"](fd, data)
        with rec._lock:
            rec.on_write(fd, memoryview(data)[:n])
        return n

    def _pwrite(fd, data, offset):
        n = real["pwrite"](fd, data, offset)
        with rec._lock:
            rec.on_write(fd, memoryview(data)[:n], offset)
        return n

    def _copy_file_range(src, dst, count, offset_src=None, offset_dst=None):
        n = real["copy_file_range"](src, dst, count, offset_src, offset_dst)
        if n:
            data = os.pread(src, n, offset_src)
            with rec._lock:
                rec.on_write(dst, data, offset_dst)
        return n

    def _sync(name):
        def sync(fd):
            real[name](fd)
            with rec._lock:
                rec.on_sync(fd)
        return sync

    def _fcntl(fd, cmd, arg=0):
        result = real_fcntl(fd, cmd, arg)
        if cmd == getattr(fcntl, "F_FULLFSYNC", object()):
            with rec._lock:
                rec.on_sync(fd)
        return result

    def _ftruncate(fd, length):
        real["ftruncate"](fd, length)
        with rec._lock:
            rec.on_truncate(fd, length)

    def _rename(name):
        def rename(src, dst, *, src_dir_fd=None, dst_dir_fd=None):
            a, b = rec._abs(src, src_dir_fd), rec._abs(dst, dst_dir_fd)
            real[name](src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)
            if a is not None and b is not None:
                with rec._lock:
                    rec.on_rename(a, b)
        return rename

    def _unlink(name):
        def unlink(path, *, dir_fd=None):
            p = rec._abs(path, dir_fd)
            real[name](path, dir_fd=dir_fd)
            if p is not None:
                with rec._lock:
                    rec.on_unlink(p)
        return unlink

    def _mkdir(path, mode=0o777, *, dir_fd=None):
        p = rec._abs(path, dir_fd)
        real["mkdir"](path, mode, dir_fd=dir_fd)
        if p is not None:
            with rec._lock:
                rec.on_mkdir(p)

    def _close(fd):
        real["close"](fd)
        with rec._lock:
            rec.fds.pop(fd, None)

    patched = {"open": _open, "write": _write, "pwrite": _pwrite, "fsync": _sync("fsync"),
               "fdatasync": _sync("fdatasync"), "replace": _rename("replace"), "rename": _rename("rename"),
               "unlink": _unlink("unlink"), "remove": _unlink("remove"), "mkdir": _mkdir,
               "rmdir": _unlink("rmdir"), "ftruncate": _ftruncate, "close": _close,
               "copy_file_range": _copy_file_range}
    for name, func in patched.items():
        setattr(os, name, func)
    fcntl.fcntl = _fcntl
    try:
        yield rec
    finally:
        for name, func in real.items():
            setattr(os, name, func)
        fcntl.fcntl = real_fcntl


# =========================================================================== crash states


@dataclass
class Trace:
    name: str
    rec: Recorder
    run_rel: str  # the run directory, relative to the recorded root

    @property
    def ops(self):
        return self.rec.ops


def _units(writes: list[tuple]) -> list[tuple[int, int, bytes]]:
    """Unsynced data writes split into BLOCK-aligned units (offset, end, bytes), in issue order."""
    units = []
    for _, _, at, data in writes:
        pos = 0
        while pos < len(data):
            end = min(len(data), pos + BLOCK - ((at + pos) % BLOCK))
            units.append((at + pos, at + end, data[pos:end]))
            pos = end
    return units


def _apply(buf: bytearray, op) -> None:
    if op[0] == "write":
        _, _, at, data = op
        if len(buf) < at:
            buf.extend(b"\0" * (at - len(buf)))
        buf[at:at + len(data)] = data
    elif op[0] == "trunc":
        del buf[op[2]:]
        buf.extend(b"\0" * (op[2] - len(buf)))


def _data_variants(model: str, base: bytes, pending: list[tuple], rng: random.Random, budget: int) -> list[bytes]:
    """Possible persisted contents of a file: ``base`` (durable) plus some of the ``pending`` (unsynced) ops."""
    full = bytearray(base)
    for op in pending:
        _apply(full, op)
    full = bytes(full)
    if not pending:
        return [base]
    variants = [base, full]
    if any(op[0] == "trunc" for op in pending):  # truncations: all-or-nothing with their writes (rare: lock note)
        return variants
    units = _units(pending)
    n = len(units)
    if model == "ext4-ordered":
        cuts = sorted({n // 2} | {rng.randrange(1, n) for _ in range(budget - 1)} if n > 1 else set())
        for cut in cuts:
            if 0 < cut < n:
                buf = bytearray(base)
                for at, end, data in units[:cut]:
                    _apply(buf, ("write", 0, at, data))
                variants.append(bytes(buf))
        return variants
    fills = {"xfs": [0], "ext4-writeback": [GARBAGE], "posix": [0, GARBAGE]}[model]
    subsets = [set(range(n)) - {rng.randrange(n)} for _ in range(max(1, budget // 2))]  # all but one block
    subsets += [{i for i in range(n) if rng.random() < 0.5} for _ in range(budget)]
    subsets.append(set(range(n // 2)))  # the first half only
    for keep in subsets:
        for fill in fills:
            buf = bytearray(full)
            for i, (at, end, data) in enumerate(units):
                if i not in keep:
                    old = base[at:end] if at < len(base) else b""
                    buf[at:end] = old + bytes([fill]) * (end - at - len(old))
            variants.append(bytes(buf))
    return variants


def _inside_a_write_run(ops, k) -> bool:
    """Crash point k falls between two writes to the same file with nothing else in between: every state there is
    also a state of the crash point after the last of those writes (its later writes simply not persisted)."""
    return (0 < k < len(ops) and ops[k - 1][0] == "write" and ops[k][0] == "write" and ops[k - 1][1] == ops[k][1])


def crash_states(trace: Trace, model: str, *, budget: int, seed: int = 0, expect=None, coalesce: bool = False):
    """Yield (crash point, state, directories) for every crash point: state = {path: bytes} of the files under
    the root. Deduplicated per trace and model among crash points with the same expectation."""
    rec = trace.rec
    ops = rec.ops
    rng = random.Random(f"{trace.name}/{model}/{seed}")
    seen = set()
    for k in range(len(ops) + 1):
        if coalesce and _inside_a_write_run(ops, k):
            continue
        issued = ops[:k]
        # What was made durable before the crash: per inode, the index of its last fsync.
        last_sync: dict[int, int] = {}
        any_sync = -1
        for i, op in enumerate(issued):
            if op[0] == "fsync":
                last_sync[op[1]] = i
                any_sync = i
        metas = [(i, op[1]) for i, op in enumerate(issued) if op[0] == "meta"]
        # A directory operation is durable once its directory (every directory it touches) was fsynced after it.
        forced = []
        for i, deltas in metas:
            dirs = {d[1] for d in deltas}
            if model == "posix":
                forced.append(all(last_sync.get(d, -1) > i for d in dirs))
            else:  # journaled metadata: any fsync commits the journal up to that point
                forced.append(any_sync > i)
        if model == "posix":
            free = [j for j, f in enumerate(forced) if not f]
            if len(free) <= (5 if budget > 2 else 3):
                choices = [set(c) for r in range(len(free) + 1) for c in itertools.combinations(free, r)]
            else:
                choices = [set(free[:r]) for r in range(len(free) + 1)]
                choices += [{j for j in free if rng.random() < 0.5} for _ in range(budget)]
            meta_sets = [{j for j, f in enumerate(forced) if f} | c for c in choices]
        else:
            first_free = next((j for j, f in enumerate(forced) if not f), len(forced))
            meta_sets = [set(range(p)) for p in range(first_free, len(metas) + 1)]
        for applied in meta_sets:
            names = dict(rec.initial_names)
            for j in sorted(applied):
                for delta in metas[j][1]:
                    if delta[0] == "set":
                        names[(delta[1], delta[2])] = delta[3]
                    else:
                        names.pop((delta[1], delta[2]), None)
            paths = _reachable(rec, names)
            files = {p: ino for p, ino in paths.items() if rec.kind[ino] == "file"}
            per_file = []
            for p, ino in sorted(files.items()):
                data_ops = [(i, op) for i, op in enumerate(issued) if op[0] in ("write", "trunc") and op[1] == ino]
                cut = last_sync.get(ino, -1)
                base = bytearray(rec.initial_data.get(ino, b""))
                for i, op in data_ops:
                    if i < cut:
                        _apply(base, op)
                pending = [op for i, op in data_ops if i > cut]
                per_file.append((p, _data_variants(model, bytes(base), pending, rng, budget)))
            combos = _combine(per_file, rng, budget)
            for combo in combos:
                state = dict(zip([p for p, _ in per_file], combo))
                dirs = sorted(p for p, ino in paths.items() if rec.kind[ino] == "dir")
                promise = expect[k].key() if expect is not None else k
                key = hashlib.sha256(json.dumps([promise, dirs, sorted((p, hashlib.sha256(d).hexdigest())
                                                                        for p, d in state.items())]).encode()).digest()
                if key in seen:
                    continue
                seen.add(key)
                yield k, state, dirs


def _reachable(rec: Recorder, names: dict) -> dict[str, int]:
    """Relative path -> inode of everything reachable from the root in a namespace."""
    children: dict[int, list[tuple[str, int]]] = {}
    for (d, name), ino in names.items():
        children.setdefault(d, []).append((name, ino))
    out, stack = {}, [("", rec.root_ino)]
    while stack:
        prefix, d = stack.pop()
        for name, ino in children.get(d, []):
            path = f"{prefix}{name}"
            out[path] = ino
            if rec.kind[ino] == "dir":
                stack.append((path + "/", ino))
    return out


def _combine(per_file, rng, budget):
    """Combinations of per-file variants: all of them while small, else every variant of each file once
    (the others at their first variant) plus random mixes."""
    sizes = [len(v) for _, v in per_file]
    total = 1
    for s in sizes:
        total *= s
    if total <= max(budget, 1) * 4:
        return list(itertools.product(*[v for _, v in per_file]))
    combos = []
    for idx, (_, variants) in enumerate(per_file):
        for variant in variants:
            combo = [v[-1] if i != idx else variant for i, (_, v) in enumerate(per_file)]
            combos.append(tuple(combo))
    for _ in range(budget):
        combos.append(tuple(rng.choice(v) for _, v in per_file))
    return combos


# =========================================================================== checking


@dataclass
class Expectation:
    """What must hold at crash point k, from the markers recorded before it."""

    required: dict[str, set]  # checkpoint name -> acceptable content hashes (its returned save, or later writes)
    newest_step: int | None

    def key(self) -> list:
        return [sorted((n, sorted(h)) for n, h in self.required.items()), self.newest_step]


def expectations(trace: Trace) -> list[Expectation]:
    """For each crash point, the checkpoints that must survive (their save returned and the code neither
    deleted nor replaced them later) and the newest returned step."""
    rec = trace.rec
    out = []
    required: dict[str, set] = {}
    steps: dict[str, int] = {}
    names_of = {}  # rename target name for meta deltas
    for k in range(len(rec.ops) + 1):
        alive = {n: s for n, s in steps.items() if n in required}
        out.append(Expectation({n: set(h) for n, h in required.items()}, max(alive.values()) if alive else None))
        if k == len(rec.ops):
            break
        op = rec.ops[k]
        if op[0] == "mark" and op[1].get("returned"):
            info = op[1]
            required[info["name"]] = {info["sha256"]}
            steps[info["name"]] = info["step"]
        elif op[0] == "meta":
            for delta in op[1]:
                name = delta[2]
                if delta[0] == "del" and len(op[1]) == 1:  # an unlink: the code deleted it on purpose
                    required.pop(name, None)
                    steps.pop(name, None)
                elif delta[0] == "set" and name in required:  # replaced by a rename: either content may be there
                    required[name].add(hashlib.sha256(_content_at(rec, delta[3], k)).hexdigest())
    del names_of
    return out


def _content_at(rec: Recorder, ino: int, k: int) -> bytes:
    buf = bytearray(rec.initial_data.get(ino, b""))
    for op in rec.ops[:k]:
        if op[0] in ("write", "trunc") and op[1] == ino:
            _apply(buf, op)
    return bytes(buf)


def materialise(base: Path, state: dict[str, bytes], dirs: list[str]) -> None:
    base.mkdir(parents=True)
    for d in sorted(dirs):
        (base / d).mkdir(parents=True, exist_ok=True)
    for rel, data in state.items():
        path = base / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def check_local(trace: Trace, where: Path, expect: Expectation) -> list[str]:
    """Run the real reader on a materialised state; return the violations."""
    from reprotrain.checkpoint import store

    run = where / trace.run_rel
    problems = []
    if not run.is_dir():
        entries, pick = [], None
    else:
        entries = store.list_checkpoints(run, deep=True)
        pick = store.select_for_resume(entries, deep=True)
    by_name = {e.path.name: e for e in entries}
    if pick is not None:
        digest = hashlib.sha256(pick.path.read_bytes()).hexdigest()
        if digest not in trace.rec.completed:
            problems.append(f"resume picked {pick.path.name}, which is not a checkpoint the writer completed")
    for name, hashes in expect.required.items():
        path = run / name
        if name not in by_name or not path.is_file():
            problems.append(f"{name} was saved (save returned) but is missing")
        elif hashlib.sha256(path.read_bytes()).hexdigest() not in hashes:
            problems.append(f"{name} was saved (save returned) but its content is not what was saved"
                            + ("" if by_name[name].valid else f" ({by_name[name].problem})"))
    if expect.newest_step is not None and (pick is None or pick.info.manifest["step"] < expect.newest_step):
        problems.append(f"resume picks {pick.path.name if pick else 'nothing'} although step {expect.newest_step} "
                        "was saved")
    if run.is_dir() and not problems and any(p.name.endswith(".partial") for p in run.iterdir()):
        # A new writer starts there: leftovers go, and the pick stays the same.
        rd = store.RunDirectory(run)
        rd.acquire()
        rd.release()
        again = store.select_for_resume(store.list_checkpoints(run, deep=True), deep=True)
        if (again.path.name if again else None) != (pick.path.name if pick else None):
            problems.append("a new writer's start changed what resume picks")
    return problems


# =========================================================================== workloads (the real code)


def _model(seed: int):
    import torch

    torch.manual_seed(seed)
    return torch.nn.Linear(16, 16)


def _returned(rec: Recorder, path: Path, step: int) -> None:
    rec.mark(returned=True, name=path.name, step=step, sha256=hashlib.sha256(path.read_bytes()).hexdigest())


def _manager(run, **kwargs):
    from reprotrain.checkpoint import CheckpointManager, RetentionPolicy

    kwargs.setdefault("retention", RetentionPolicy(keep_last=2))
    return CheckpointManager(run, _model(0), save_policy="never", log=lambda m: None, **kwargs)


def w_saves_and_retention(root: Path, rec_ctx):
    """A new run: four saves with retention keep_last=2 (deletes after each commit), then finish."""
    run = root / "run"
    with rec_ctx(root) as rec:
        mgr = _manager(run)
        for step in (1, 2, 3, 4):
            mgr.model.weight.data.add_(1.0)
            _returned(rec, mgr.save(epoch=0, step=step, samples_seen=step), step)
        _returned(rec, mgr.finish(), 4)
    return rec


def w_async_and_interrupt(root: Path, rec_ctx):
    """Background saves (async_save) at every step, an `emergency` save, then an `interrupted` one."""
    run = root / "run"
    with rec_ctx(root) as rec:
        mgr = _manager(run, async_save=True)
        mgr.save_policy = mgr.save_policy  # policy never: explicit saves go through the background thread
        for step in (1, 2):
            mgr.model.weight.data.add_(1.0)
            path = mgr.save(epoch=0, step=step, samples_seen=step)
            mgr.wait()
            _returned(rec, path, step)
        mgr.emergency("crash test", resumable=False)
        mgr._pending_signal = "SIGTERM"
        try:
            mgr.step_done(epoch=0, step=3, samples_seen=3)
        except SystemExit as stop:
            _returned(rec, stop.path, 3)
        mgr.close()
    return rec


def w_restart_over_leftovers(root: Path, rec_ctx):
    """A restart over a crashed run: a leftover `.partial` and a damaged file are there; the new writer removes
    the partial, resumes, saves over the same name (rename over an existing file) and saves once more."""
    run = root / "run"
    mgr = _manager(run)
    p1 = mgr.save(epoch=0, step=1, samples_seen=1)
    mgr.close()
    (run / ".step0000000002-latest.pth.1234.abcd.partial").write_bytes(p1.read_bytes()[:3000])
    (run / "step0000000009-latest.pth").write_bytes(p1.read_bytes()[:5000])  # truncated copy: invalid
    with rec_ctx(root, legit=[p1]) as rec:
        mgr = _manager(run)
        mgr.resume()
        mgr.model.weight.data.add_(1.0)
        _returned(rec, mgr.save(epoch=0, step=1, samples_seen=1), 1)  # same name: replaces step 1
        mgr.model.weight.data.add_(1.0)
        _returned(rec, mgr.save(epoch=0, step=2, samples_seen=2), 2)
        mgr.close()
    return rec


def w_fresh_overwrite(root: Path, rec_ctx):
    """`train --fresh --overwrite` over an existing run: its files are deleted under the lock, a new run saves."""
    from reprotrain.training import loop

    run = root / "run"
    mgr = _manager(run)
    old = [mgr.save(epoch=0, step=step * 10, samples_seen=step) for step in (1, 2)]
    mgr.close()
    (run / loop.METRICS_FILE).write_text("{}\n")
    from reprotrain.checkpoint import store

    with rec_ctx(root, legit=old) as rec:
        rundir = store.open_run_directory(run)
        rundir.acquire()  # as `train` does: --fresh is decided and done under the writer lock
        loop._prepare_fresh(rundir, True, lambda message: None)
        mgr = _manager(rundir)
        _returned(rec, mgr.save(epoch=0, step=1, samples_seen=1), 1)
        mgr.close()
    return rec


def w_sign_after_the_fact(root: Path, rec_ctx):
    """`reprotrain sign` of committed checkpoints in a run directory (copy, re-check, rename over, dir fsync)."""
    from reprotrain.checkpoint import signing

    run = root / "run"
    mgr = _manager(run)
    paths = [mgr.save(epoch=0, step=s, samples_seen=s) for s in (1, 2)]
    mgr.close()
    key = signing.SigningKey.generate()
    with rec_ctx(root, legit=paths) as rec:
        for step, path in zip((1, 2), paths):
            signing.sign_file(path, key)
            _returned(rec, path, step)
    return rec


WORKLOADS = {
    "saves+retention": w_saves_and_retention,
    "async+emergency+interrupted": w_async_and_interrupt,
    "restart over leftovers, overwrite": w_restart_over_leftovers,
    "fresh --overwrite": w_fresh_overwrite,
    "sign after the fact": w_sign_after_the_fact,
}


# =========================================================================== object stores


class _ObjectRecorder:
    """Wraps the mutating calls of an fsspec filesystem: one complete request each (PUT at close, DELETE)."""

    def __init__(self, fs, root: str):
        self.fs, self.root, self.ops = fs, root, []
        self._lock = threading.Lock()
        real_open, real_pipe, real_rm = fs.open, fs.pipe_file, fs.rm_file

        def open_(path, mode="rb", **kwargs):
            f = real_open(path, mode, **kwargs)
            if "w" in mode:
                real_close = f.close
                chunks = []
                real_write = f.write

                def write(data):
                    chunks.append(bytes(data))
                    return real_write(data)

                def close():
                    real_close()
                    with self._lock:
                        self.ops.append(("put", path, b"".join(chunks)))
                f.write, f.close = write, close
            return f

        def pipe(path, value, **kwargs):
            real_pipe(path, value, **kwargs)
            with self._lock:
                self.ops.append(("put", path, bytes(value)))

        def rm(path, **kwargs):
            real_rm(path, **kwargs)
            with self._lock:
                self.ops.append(("delete", path))

        fs.open, fs.pipe_file, fs.rm_file = open_, pipe, rm

    def stop(self) -> None:
        for name in ("open", "pipe_file", "rm_file"):
            vars(self.fs).pop(name, None)

    def mark(self, **info):
        with self._lock:
            self.ops.append(("mark", info))


def explore_objectstore(stats: dict, violations: list, log) -> None:
    """Record a real ObjectRunDirectory (memory://) through saves and retention; check every request prefix."""
    import fsspec

    from reprotrain.checkpoint import CheckpointManager, RetentionPolicy, store

    url = f"memory://crashstates-{os.getpid()}-{time.monotonic_ns()}/run"
    rd = store.open_run_directory(url)
    rec = _ObjectRecorder(rd.fs, rd.root)
    mgr = CheckpointManager(rd, _model(0), save_policy="never", log=lambda m: None,
                            retention=RetentionPolicy(keep_last=2))
    completed = set()
    for step in (1, 2, 3, 4):
        mgr.model.weight.data.add_(1.0)
        path = mgr.save(epoch=0, step=step, samples_seen=step)
        data = rd.fs.cat_file(rd._key(path.name))
        completed.add(hashlib.sha256(data).hexdigest())
        rec.mark(returned=True, name=path.name, step=step, sha256=hashlib.sha256(data).hexdigest())
    mgr.close()
    rec.stop()
    ops = rec.ops
    stats["traces"] += 1
    stats["operations"] += len([op for op in ops if op[0] != "mark"])
    fs = fsspec.filesystem("memory")
    required: dict[str, set] = {}
    steps: dict[str, int] = {}
    for k in range(len(ops) + 1):
        state_url = f"memory://crashstates-state-{os.getpid()}-{k}/run"
        objects = {}
        for op in ops[:k]:
            if op[0] == "put":
                objects[op[1].rsplit("/", 1)[-1]] = op[2]
            elif op[0] == "delete":
                objects.pop(op[1].rsplit("/", 1)[-1], None)
        for name, data in objects.items():
            fs.pipe_file(f"{state_url}/{name}", data)
        reader_dir = store.open_run_directory(state_url)
        entries = reader_dir.list_checkpoints(deep=True) if objects else []
        pick = store.select_for_resume(entries, deep=True)
        problems = []
        if pick is not None:
            data = fs.cat_file(f"{state_url}/{pick.path.name}")
            if hashlib.sha256(data).hexdigest() not in completed:
                problems.append(f"resume picked {pick.path.name}, not a completed checkpoint")
        names = {e.path.name for e in entries if e.valid}
        for name in required:
            if name not in names:
                problems.append(f"{name} was saved (save returned) but is missing")
        alive = [steps[n] for n in required]
        if alive and (pick is None or pick.info.manifest["step"] < max(alive)):
            problems.append("resume picks an older checkpoint than the newest returned save")
        stats["states"] += 1
        stats["per_model"]["objectstore"] = stats["per_model"].get("objectstore", 0) + 1
        for p in problems:
            violations.append(f"objectstore: crash after request {k}: {p}")
        with contextlib.suppress(FileNotFoundError):
            fs.rm(f"memory://crashstates-state-{os.getpid()}-{k}", recursive=True)
        if k < len(ops):
            op = ops[k]
            if op[0] == "mark":
                required[op[1]["name"]] = {op[1]["sha256"]}
                steps[op[1]["name"]] = op[1]["step"]
            elif op[0] == "delete" and op[1].endswith(".committed"):
                name = op[1].rsplit("/", 1)[-1][: -len(".committed")]
                required.pop(name, None)
                steps.pop(name, None)
    with contextlib.suppress(FileNotFoundError):
        fs.rm(url.rsplit("/", 1)[0], recursive=True)


# =========================================================================== driver


QUICK_MODELS = ("posix", "ext4-ordered")  # the weakest model and the common default


def explore(*, quick: bool = False, workloads=None, models=None, log=print, objectstore: bool = True) -> dict:
    """Record every workload, enumerate its crash states under every model, check each one. Returns the figures.

    ``quick`` (CI): every crash point of every trace except those between two writes to the same file (their
    states are torn-data states of the point after the last write), under the POSIX and ext4-ordered models,
    with the fewest data variants (nothing, everything, torn halves); the full run takes every crash point and
    samples more variants under all four models.
    """
    budget = 1 if quick else 6
    models = models or (QUICK_MODELS if quick else MODELS)
    stats = {"traces": 0, "operations": 0, "crash_points": 0, "states": 0, "violations": 0, "per_model": {},
             "per_workload": {}}
    violations: list[str] = []
    started = time.monotonic()
    scratch = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    with tempfile.TemporaryDirectory(prefix="reprotrain-crashstates-", dir=scratch) as tmp:
        tmp = Path(tmp)
        for wname, workload in (workloads or WORKLOADS).items():
            root = tmp / f"rec-{len(stats['per_workload'])}"
            root.mkdir()
            rec = workload(root, recording)
            trace = Trace(wname, rec, "run")
            stats["traces"] += 1
            stats["operations"] += len([op for op in rec.ops if op[0] != "mark"])
            stats["crash_points"] += len(rec.ops) + 1
            expect = expectations(trace)
            count = 0
            for model in models:
                for k, state, dirs in crash_states(trace, model, budget=budget, expect=expect, coalesce=quick):
                    where = tmp / "state"
                    materialise(where, state, dirs)
                    try:
                        problems = check_local(trace, where, expect[k])
                    finally:
                        shutil.rmtree(where)
                    count += 1
                    stats["per_model"][model] = stats["per_model"].get(model, 0) + 1
                    for p in problems:
                        violations.append(f"{wname} [{model}] crash after op {k}: {p}")
            stats["per_workload"][wname] = count
            stats["states"] += count
            log(f"  {wname}: {len([op for op in rec.ops if op[0] != 'mark'])} operations, {count} crash states")
        if objectstore:
            explore_objectstore(stats, violations, log)
            log(f"  objectstore (memory://, real ObjectRunDirectory): {stats['per_model'].get('objectstore', 0)} "
                "crash states")
    stats["violations"] = len(violations)
    stats["examples"] = violations[:20]
    stats["seconds"] = round(time.monotonic() - started, 1)
    return stats


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CI size: fewer data variants per crash point")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    stats = explore(quick=args.quick, log=(lambda m: None) if args.json else print)
    if args.json:
        print(json.dumps(stats, indent=2))
    else:
        print(f"traces recorded: {stats['traces']}  (file-system operations: {stats['operations']}, "
              f"crash points: {stats['crash_points']})")
        print("crash states explored: " + str(stats["states"]) + "  ("
              + ", ".join(f"{m} {n}" for m, n in stats["per_model"].items()) + ")")
        print(f"violations: {stats['violations']}")
        for v in stats["examples"]:
            print(f"  {v}")
        print(f"time: {stats['seconds']} s")
    return 1 if stats["violations"] else 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
