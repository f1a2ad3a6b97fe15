"""Sharded checkpoints: a directory of torch.distributed.checkpoint (DCP) files committed as one unit
(docs/checkpoint-format.md, section 8).

``step<10 digits>-<kind>.dcp/`` holds DCP's own files (``.metadata``, ``__<rank>_<n>.distcp``) and the sealed-directory
sidecar ``reprotrain-manifest.json`` (section 7: the manifest, one ``{path, size, sha256}`` per file, a SHA-256 over
itself), written last. The commit (``save``, collective):

1. rank 0 (which holds the run directory's writer lock) creates ``.<name>.partial/``; every rank learns whether it could;
2. every rank runs ``dcp.save`` into it (each writes its shards; rank 0 writes ``.metadata`` at the end);
3. the files are split between the ranks; each hashes its share and makes it durable; the records are gathered;
4. rank 0 syncs the directories, writes the sidecar (its own atomic rename inside the directory), renames
   ``.<name>.partial`` to ``<name>`` and syncs the run directory; every rank learns the outcome.

A failure on any rank at any stage fails the save on every rank and removes the partial directory: the previous
checkpoint stays the newest. A process killed mid-save leaves only ``.<name>.partial/``, which is not listed and is
removed by the next writer.

``load`` (collective) checks before ``dcp.load`` reads anything: the sidecar's own digest and manifest, no recorded
file missing and no file added, and every file's size and SHA-256 (the files split between the ranks). Any problem
on any rank is CorruptCheckpoint (exit 2) on every rank. DCP reshards to the current world size by itself.

Single process (no process group): the same, with one rank.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import torch

from reprotrain.checkpoint import sealed
from reprotrain.checkpoint.lock import durable_sync, fsync_directory
from reprotrain.checkpoint.manifest import CorruptCheckpoint
from reprotrain.errors import ReprotrainError, os_error_message

SUFFIX = sealed.SHARDED_SUFFIX
PARTIAL_SUFFIX = ".partial"


def checkpoint_dir_name(kind: str, step: int) -> str:
    return f"step{step:010d}-{kind}{SUFFIX}"


# ---------------------------------------------------------------------------------------------------- collectives
def _dist():
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def rank_and_world() -> tuple[int, int]:
    dist = _dist()
    return (dist.get_rank(), dist.get_world_size()) if dist else (0, 1)


def _gather(obj, group=None) -> list:
    """OBJ from every rank, in rank order (plain values only, between this job's own ranks). ``group``: a process
    group of every rank (the background saves' own, ``background_group``); None: the default group."""
    dist = _dist()
    if dist is None:
        return [obj]
    out = [None] * dist.get_world_size(group)
    dist.all_gather_object(out, obj, group=group)
    return out


def _agree(error: str | None, what: str, *, path, group=None) -> None:
    """Every rank raises if any rank failed (the first failing rank's message)."""
    outcomes = _gather(error, group)
    failed = [(rank, e) for rank, e in enumerate(outcomes) if e is not None]
    if failed:
        rank, message = failed[0]
        prefix = "" if len(outcomes) == 1 else f"rank {rank}: "
        raise CorruptCheckpoint(f"{what} failed: {prefix}{message}", path=path)


def gather_fingerprints(fingerprint: dict) -> list[dict]:
    """Every rank's environment fingerprint, in rank order."""
    return _gather(fingerprint)


def _one_line(exc: BaseException) -> str:
    """One line for a failed DCP call. DCP raises CheckpointException (a BaseException, not an Exception) on every
    rank when any rank failed: the line names the first failing rank and its own error."""
    failures = getattr(exc, "failures", None)
    if isinstance(failures, dict) and failures:
        rank = min(failures)
        inner = failures[rank][0] if isinstance(failures[rank], tuple) else failures[rank]
        return f"rank {rank}: {_one_line(inner) if isinstance(inner, BaseException) else inner}"
    text = str(exc)
    return text.splitlines()[0] if text else type(exc).__name__


def _share(paths: list[str], rank: int, world: int) -> list[str]:
    return [p for i, p in enumerate(paths) if i % world == rank]


# ---------------------------------------------------------------------------------------------------- hashing I/O
_OVERLAP = 1 << 20  # writes at least this large are hashed on a second thread while the bytes go to the file
_READ_CHUNK = 8 << 20


class _HashingStream:
    """A file DCP writes through, hashed (SHA-256, size) as the bytes go out: a large write is hashed on a second
    thread while the calling thread writes it (hashlib and the write both release the GIL), and the write returns
    when both are done (the caller's buffer is never read after its write returned: no copy, no assumption about
    its lifetime). Closing the file makes it durable (durable_sync). Writes are sequential from offset 0 (no seek):
    the digest is the file's, and closing checks that the file's length is the number of bytes hashed."""

    def __init__(self, raw, pool: ThreadPoolExecutor):
        self._raw, self._pool = raw, pool
        self._sha, self.size = hashlib.sha256(), 0
        self._update, self._write = self._sha.update, raw.write

    def write(self, data) -> int:
        n = data.nbytes if isinstance(data, memoryview) else len(data)
        if n >= _OVERLAP:
            pending = self._pool.submit(self._update, data)
            try:
                self._write(data)  # a buffered file writes everything or raises
            finally:
                pending.result()
        else:
            self._update(data)
            self._write(data)
        self.size += n
        return n

    def tell(self) -> int:
        return self.size

    def writable(self) -> bool:
        return True

    def flush(self) -> None:
        self._raw.flush()

    def fileno(self) -> int:
        return self._raw.fileno()

    @property
    def closed(self) -> bool:
        return self._raw.closed

    def close(self) -> None:
        if not self._raw.closed:
            self._raw.flush()
            if self._raw.tell() != self.size:
                raise OSError(f"{self._raw.name}: bytes written out of order; the digest would not be the file's")
            durable_sync(self._raw.fileno())
            self._raw.close()

    def hexdigest(self) -> str:
        return self._sha.hexdigest()


def _hashing_filesystem(pool: ThreadPoolExecutor):
    """DCP's local FileSystem (a public extension point: FileSystemWriter.fs), except that every file it writes goes
    through a _HashingStream and is recorded by its final path (DCP renames ``.metadata.tmp``)."""
    from torch.distributed.checkpoint.filesystem import FileSystem

    class HashingFileSystem(FileSystem):
        def __init__(self):
            super().__init__()
            self.records: dict[Path, tuple[int, str]] = {}
            self._lock = threading.Lock()

        @contextmanager
        def create_stream(self, path, mode):
            if "r" in mode:
                with super().create_stream(path, mode) as stream:
                    yield stream
                return
            path = Path(path)
            with path.open(mode) as raw:
                stream = _HashingStream(raw, pool)
                yield stream
                stream.close()
            with self._lock:
                self.records[path] = (stream.size, stream.hexdigest())

        def rename(self, path, new_path) -> None:
            super().rename(path, new_path)
            with self._lock:
                if Path(path) in self.records:
                    self.records[Path(new_path)] = self.records.pop(Path(path))

        def rm_file(self, path) -> None:
            super().rm_file(path)
            with self._lock:
                self.records.pop(Path(path), None)

    return HashingFileSystem()


def _sealing_writer(directory: Path, pool: ThreadPoolExecutor):
    """DCP's FileSystemWriter whose files are hashed while written and made durable by reprotrain (sync_files off:
    the stream's close syncs instead)."""
    from torch.distributed.checkpoint import FileSystemWriter

    writer = FileSystemWriter(directory, sync_files=False)
    writer.fs = _hashing_filesystem(pool)
    return writer


def _written_records(writer, directory: Path) -> list[dict]:
    out = []
    for path, (size, sha) in sorted(writer.fs.records.items()):
        out.append({"path": path.relative_to(directory).as_posix(), "size": size, "sha256": sha})
    return out


def _hash_file(path: Path, buffer: bytearray) -> tuple[int, str]:
    """(size, sha256 hex) of a regular file, read through one descriptor that refuses symlinks and devices into
    BUFFER (no allocation per chunk)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{path.name} is not a regular file")
        digest, size, view = hashlib.sha256(), 0, memoryview(buffer)
        while True:
            n = os.readv(fd, [buffer])
            if not n:
                break
            digest.update(view[:n])
            size += n
        return size, digest.hexdigest()
    finally:
        os.close(fd)


def _verify(directory: Path, entries: list[dict]) -> list[str]:
    """Problems found re-hashing ENTRIES (size and SHA-256 against the seal)."""
    problems, buffer = [], bytearray(_READ_CHUNK)
    for entry in entries:
        rel = entry["path"]
        try:
            size, sha = _hash_file(directory / rel, buffer)
        except OSError as exc:
            problems.append(f"{rel}: unreadable ({exc.strerror or exc})")
            continue
        if size != entry["size"]:
            problems.append(f"{rel}: size {size} bytes, sealed with {entry['size']}")
        elif sha != entry["sha256"]:
            problems.append(f"{rel}: content differs from the sealed SHA-256")
    return problems


# ---------------------------------------------------------------------------------------------------- save
def save(run_dir_path: str | os.PathLike, name: str, state_dict: dict, manifest: dict | None, *,
         group=None) -> Path:
    """Collective: write ``state_dict`` (DCP's form: DTensors and plain tensors, e.g. from get_state_dict) as the
    sharded checkpoint ``run_dir_path/name``. ``manifest`` matters on rank 0 only (it must hold the writer lock).
    ``group``: the process group of every collective of the save, DCP's included (None: the default group); a
    background save passes its own (``background_group``), so that it never shares one with training.

    Returns the committed directory on every rank; raises CorruptCheckpoint (exit 2) on every rank when any rank
    failed, after removing the partial directory.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException

    rank, _ = rank_and_world()
    run_dir = Path(run_dir_path)
    final = run_dir / name
    partial = run_dir / f".{name}{PARTIAL_SUFFIX}"
    error = None
    if rank == 0:
        try:
            if partial.exists():
                shutil.rmtree(partial)
            partial.mkdir()
        except OSError as exc:
            error = f"{os_error_message(exc)} while creating {partial.name}"
    try:
        _agree(error, f"saving {name}", path=run_dir, group=group)
        # Each rank's files are hashed and made durable as DCP writes them (no second read): the records travel to
        # rank 0 with the outcome.
        records, error = [], None
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="reprotrain-sha256") as pool:
            writer = _sealing_writer(partial, pool)
            try:
                dcp.save(state_dict, storage_writer=writer, process_group=group)
                records = _written_records(writer, partial)
            except (Exception, CheckpointException) as exc:  # noqa: BLE001 - one line per rank, agreed below
                error = f"dcp.save: {_one_line(exc)}"
        gathered = _gather((error, records), group)
        _agree(next((e for e, _ in gathered if e), None), f"saving {name}", path=run_dir, group=group)
        error = None
        if rank == 0:
            try:
                sealed.seal(partial, manifest, files=[r for _, rs in gathered for r in rs])  # syncs the directories
                _replace_directory(partial, final)
            except ReprotrainError as exc:
                error = exc.message
            except OSError as exc:
                error = f"{os_error_message(exc)} while committing"
        _agree(error, f"saving {name}", path=run_dir, group=group)
    except BaseException:
        if rank == 0:
            shutil.rmtree(partial, ignore_errors=True)
        raise
    return final


def _replace_directory(partial: Path, final: Path) -> None:
    """Rename PARTIAL to FINAL and make it durable. An existing FINAL (the same step and kind saved again, e.g. the
    closing save of a run) is first renamed aside, then removed: a crash in between leaves both as `.partial`
    directories (removed by the next writer) and the older checkpoints."""
    aside = None
    if final.exists():
        aside = final.with_name(f".{final.name}.{os.getpid()}.replaced{PARTIAL_SUFFIX}")
        os.replace(final, aside)
    os.replace(partial, final)
    fsync_directory(final.parent)
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------- background saves
def background_group():
    """Collective (every rank, once, at the same point): a dedicated gloo process group for the collectives of
    background saves, DCP's included, so that they never interleave with training's on the default group (a
    thread's collectives on a group another thread uses would be matched with the wrong peers' ones). None
    without a process group or with one rank."""
    dist = _dist()
    if dist is None or dist.get_world_size() == 1:
        return None
    return dist.new_group(backend="gloo")


def destroy_group(group) -> None:
    """Give back a group made by background_group (its gloo worker threads are joined). Not collective: every rank
    calls it once its own background saves are over. Nothing to do when the whole package was already torn down
    (``destroy_process_group()`` destroys every group)."""
    dist = _dist()
    if group is None or dist is None:
        return
    try:
        dist.destroy_process_group(group)
    except (ValueError, RuntimeError):  # already destroyed with the default group
        pass


class Stager:
    """The training thread's part of a background save: a copy of this rank's state (its local shards; DTensors
    stay DTensors over host copies of their local tensors; non-tensor values deep-copied) into host memory, by
    DCP's own stager (torch.distributed.checkpoint.staging.DefaultStager, the staging of ``dcp.async_save``). The
    host buffers are kept between saves (keyed by the source storage): the next staging is a copy into memory that
    is already mapped. The caller stages again only after the previous staged state has been written."""

    def __init__(self):
        from torch.distributed.checkpoint.staging import DefaultStager, StagingOptions

        cuda = torch.cuda.is_available()
        # Pinned buffers and non-blocking copies where there is a GPU to copy from; stage() returns once the copies
        # are complete either way (synchronous staging).
        self._stager = DefaultStager(StagingOptions(use_pinned_memory=cuda, use_shared_memory=False,
                                                    use_async_staging=False, use_non_blocking_copy=cuda))

    def stage(self, state_dict: dict) -> dict:
        return self._stager.stage(state_dict)

    def close(self) -> None:
        self._stager.close()


# ---------------------------------------------------------------------------------------------------- verify / load
METADATA = ".metadata"  # DCP's metadata: a full pickle, so hashed by every rank before DCP unpickles it


def _preflight(directory: Path, rank: int, world: int) -> tuple[dict | None, list[str], list[dict]]:
    """(sidecar document, problems, this rank's share of the files to hash): the sidecar's own digest and manifest,
    no recorded file missing and none added, recorded paths inside the directory, every recorded size (stat)."""
    if not directory.is_dir() or directory.is_symlink():
        raise CorruptCheckpoint("no such directory", path=directory)
    doc = sealed.read_sidecar(directory)
    recorded = doc["files"]
    present = set(sealed._walk(directory))
    names = {f["path"] for f in recorded}
    problems = [f"{rel}: missing" for rel in sorted(names - present)]
    problems += [f"{rel}: not sealed (added after the checkpoint was sealed)" for rel in sorted(present - names)]
    share = []
    for entry in _share([f for f in recorded if f["path"] in present], rank, world):
        rel = entry["path"]
        if rel.startswith("/") or ".." in Path(rel).parts:
            problems.append(f"{rel}: recorded path leaves the directory")
        else:
            share.append(entry)
    return doc, problems, share


def _message(problems: list[str]) -> str | None:
    if not problems:
        return None
    return "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")


def _agree_problems(message: str | None, directory: Path) -> None:
    failed = [m for m in _gather(message) if m]
    if failed:
        raise CorruptCheckpoint(failed[0], path=directory)


def check(directory: str | os.PathLike) -> dict:
    """Collective: the sidecar document after every file was checked (present, nothing added, size and SHA-256), the
    files split between the ranks. CorruptCheckpoint on every rank if anything is off on any rank."""
    directory = Path(directory)
    rank, world = rank_and_world()
    doc, message = None, None
    try:
        doc, problems, share = _preflight(directory, rank, world)
        message = _message(problems + _verify(directory, share))
    except ReprotrainError as exc:
        message = exc.message
    _agree_problems(message, directory)
    return doc


def _weights_only_planner():
    """DCP's default load planner, except that non-tensor values (optimizer hyper-parameters, scheduler state) are
    read with the weights-only unpickler (DCP's own uses ``weights_only=False``)."""
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
    from torch.distributed.checkpoint._traverse import set_element

    class WeightsOnlyLoadPlanner(DefaultLoadPlanner):
        def load_bytes(self, read_item, value) -> None:
            obj = torch.load(value, weights_only=True)
            if self.flatten_state_dict:
                set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], obj)
            else:
                self.state_dict[read_item.dest_index.fqn] = obj

    return WeightsOnlyLoadPlanner()


def load(directory: str | os.PathLike, state_dict: dict, *, verify_first: bool = False) -> dict:
    """Collective: ``dcp.load`` into ``state_dict`` (in place, resharded by DCP to this world size) of a directory
    whose every file is checked. Returns the manifest; CorruptCheckpoint on every rank when anything is off.

    Before DCP reads a byte: the sidecar, the file list, the sizes, and DCP's ``.metadata`` (a pickle) hashed by every
    rank. The other files' SHA-256 (each rank its share) is then computed on a second thread while ``dcp.load`` runs
    (the pass fills the page cache DCP reads from): the verdict comes before this returns, but a damaged shard may
    already have been copied into ``state_dict``. ``verify_first``: hash everything first (``check``), so that a
    damaged directory never touches ``state_dict`` (the manager does so when no older checkpoint could repair it).
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException

    directory = Path(directory)
    if verify_first:
        doc, later = check(directory), []
    else:
        rank, world = rank_and_world()
        doc, message, later = None, None, []
        try:
            doc, problems, share = _preflight(directory, rank, world)
            for entry in share:
                if entry["size"] != _size(directory / entry["path"]):
                    problems.append(f"{entry['path']}: size {_size(directory / entry['path'])} bytes, sealed with "
                                    f"{entry['size']}")
            recorded = {f["path"]: f for f in doc["files"]}
            if not problems and METADATA in recorded:
                problems += _verify(directory, [recorded[METADATA]])
            later = [e for e in share if e["path"] != METADATA]
            message = _message(problems)
        except ReprotrainError as exc:
            message = exc.message
        _agree_problems(message, directory)
    error, problems = None, []
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="reprotrain-sha256") as pool:
        verdict = pool.submit(_verify, directory, later)
        try:
            dcp.load(state_dict, checkpoint_id=directory, planner=_weights_only_planner())
        except (Exception, CheckpointException) as exc:  # noqa: BLE001 - a checked directory DCP cannot load
            error = f"dcp.load: {_one_line(exc)}"
        problems = verdict.result()
    _agree_problems(_message(problems), directory)  # a damaged shard is named, not DCP's reaction to it
    _agree(error, "loading", path=directory)
    return doc["manifest"]


def _size(path: Path) -> int | None:
    try:
        return os.lstat(path).st_size
    except OSError:
        return None


# ---------------------------------------------------------------------------------------------------- agreement
_SIGNAL_CODES = {None: 0, "SIGINT": 1, "SIGTERM": 2}  # SIGTERM wins, as in reprotrain.training.distributed
_SIGNAL_NAMES = {code: name for name, code in _SIGNAL_CODES.items()}


class StepAgreement:
    """The CheckpointManager coordinator of a sharded run without one of its own (a user's FSDP loop): at each
    step_done every rank learns the signal any rank received and rank 0's save decision (one small all-reduce).
    Saves need no vote: ``save`` agrees at every stage by itself."""

    def step(self, pending_signal: str | None, save_due: bool) -> tuple[str | None, bool]:
        dist = _dist()
        if dist is None:
            return pending_signal, save_due
        rank, _ = rank_and_world()
        flags = torch.tensor([_SIGNAL_CODES[pending_signal], int(save_due and rank == 0)], dtype=torch.int64)
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        return _SIGNAL_NAMES[int(flags[0])], bool(flags[1])

    def vote(self, ok: bool, what: str) -> None:  # pragma: no cover - sharded saves do not vote
        pass


def agree_or_raise(action, *, path=None):
    """Run ACTION on every rank; if it raises a ReprotrainError on any rank, every rank raises (the failing ranks their
    own error, the others the first failing rank's message and exit code)."""
    error = None
    try:
        result = action()
    except ReprotrainError as exc:
        error = exc
    outcomes = _gather(None if error is None else (error.message, error.exit_code))
    if error is not None:
        raise error
    failed = [(rank, o) for rank, o in enumerate(outcomes) if o is not None]
    if failed:
        rank, (message, code) = failed[0]
        raise ReprotrainError(f"stopped because rank {rank} failed: {message.splitlines()[0]}", path=path,
                              exit_code=code)
    return result


def rank0_value(value):
    """Rank 0's VALUE on every rank (plain values)."""
    return _gather(value)[0]


def barrier() -> None:
    _gather(None)


# ---------------------------------------------------------------------------------------------------- state helpers
def get_state(model: torch.nn.Module | None, optimizer=None) -> dict:
    """Model and optimizer state through DCP's state-dict helpers (FSDP2, DDP or plain modules alike)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict

    if model is None:
        return {}
    if optimizer is None:
        return {"model": get_model_state_dict(model)}
    model_sd, optim_sd = get_state_dict(model, optimizer)
    return {"model": model_sd, "optimizer": optim_sd}


def set_state(model: torch.nn.Module | None, optimizer, state: dict) -> None:
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_state_dict

    if model is None:
        return
    if optimizer is None or "optimizer" not in state:
        set_model_state_dict(model, state["model"])
    else:
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])

