"""Run directories on object stores (any fsspec URL: s3://, gs://, az://, memory://, ...): commit without rename.

Layout under the run URL:

* ``<name>.pth``: a checkpoint object, written completely (multipart above ``part_size``) before anything names it;
* ``<name>.pth.committed``: the commit pointer, a small JSON object (size, SHA-256) written only after the
  checkpoint object is complete. Listing shows only checkpoints that have a pointer, so a reader never sees a
  partial object. Retention deletes the pointer first, then the object. A checkpoint object without a pointer
  (a crash between the two writes) is removed by the next writer at start;
* ``metrics.jsonl``: mirrored from a local folder and uploaded whole after every commit and at stop;
* ``.reprotrain.lease``: the writer lease (object stores have no flock; semantics in docs/storage.md). It is
  created with a conditional create (S3 ``If-None-Match: *``, fsspec ``mode="create"``) where the store supports
  it, so two writers starting together cannot both win; elsewhere a read-back after a short wait decides.

Staging mode (``staging_dir``, or ``REPROTRAIN_STAGING_DIR``): checkpoints are committed to a local folder at
local-disk speed and uploaded by a background thread, in commit order; remote deletions queue behind uploads,
so retention never removes a remote checkpoint before the newer one is committed there. At stop the uploader
drains for up to ``drain_timeout_s`` and reports what is not yet uploaded; the next start uploads it.

Credentials come only from the protocol's standard places (environment, config files, instance roles) through
fsspec; this module never reads, logs or stores them.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import queue
import secrets
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

from reprotrain.checkpoint.location import Location
from reprotrain.checkpoint.storage.base import (CHECKPOINT_SUFFIX, METRICS_FILE, Entry, RunDirectoryBusy, read_entry,
                                                sort_entries)
from reprotrain.checkpoint.storage.local import RunDirectory
from reprotrain.errors import ReprotrainError

POINTER_SUFFIX = ".committed"
POINTER_FORMAT = "reprotrain-commit/1"
LEASE_NAME = ".reprotrain.lease"
MIRRORED_FILES = (METRICS_FILE,)
UPLOAD_STATUS_FILE = "upload-status.json"
DEFAULT_PART_SIZE = 64 << 20
STAGING_ENV = "REPROTRAIN_STAGING_DIR"


class ObjectStoreError(ReprotrainError):
    exit_code = 2


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _HashingWriter:
    """Counts and hashes the bytes on their way into the object (the pointer records both)."""

    def __init__(self, target):
        self._target = target
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data) -> int:
        self._target.write(data)
        self.sha256.update(data)
        self.size += len(data)
        return len(data)


class ObjectRunDirectory:
    """A run directory at an fsspec URL: the `reprotrain.checkpoint.storage.RunStorage` interface."""

    def __init__(self, url: "str | Location", *, staging_dir: str | os.PathLike | None = None, storage_options: dict | None = None,
                 log: Callable[[str], None] | None = None, part_size: int = DEFAULT_PART_SIZE,
                 lease_ttl_s: float = 120.0, drain_timeout_s: float = 300.0):
        import fsspec

        self.path = Location.of(url)
        if self.path.is_local:
            raise ValueError(f"{self.path} is a local path: use reprotrain.checkpoint.storage.open_run_directory")
        self._log = log or (lambda msg: None)
        try:
            self.fs, root = fsspec.core.url_to_fs(self.path.url, **(storage_options or {}))
        except (ImportError, ValueError) as exc:
            raise ObjectStoreError(f"cannot use this URL: {_describe(exc)}", path=self.path) from None
        self.root = root.rstrip("/")
        self.part_size = part_size
        self.lease_ttl_s = lease_ttl_s
        self.drain_timeout_s = drain_timeout_s
        staging_dir = staging_dir if staging_dir is not None else os.environ.get(STAGING_ENV) or None
        self.staging_dir = (Path(staging_dir) / hashlib.sha256(self.path.url.encode()).hexdigest()[:16]
                            if staging_dir else None)
        self._mirror_dir: Path | None = self.staging_dir
        self._local: RunDirectory | None = None
        self._lease_token: str | None = None
        self._lease_lost = False
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None
        self._uploads: queue.Queue | None = None
        self._uploader: threading.Thread | None = None
        self._pending: dict[str, int] = {}  # staged checkpoint name -> bytes, in commit order
        self._pending_lock = threading.Lock()
        self._last_upload_error: str | None = None

    # -- object helpers --------------------------------------------------------------------
    def _key(self, name: str) -> str:
        return f"{self.root}/{name}"

    def _network(self, what: str, func, *args, **kwargs):
        try:
            return func(*args, **kwargs)
        except (FileNotFoundError, FileExistsError):  # answers, not failures (FileExistsError: a conditional create)
            raise
        except ReprotrainError:
            raise
        except Exception as exc:  # s3fs/botocore/gcsfs raise many types; all mean "the store did not answer"
            raise ObjectStoreError(f"object store error while {what}: {_describe(exc)}", path=self.path) from None

    def _listing(self) -> dict[str, dict]:
        self.fs.invalidate_cache(self.root)
        try:
            infos = self._network("listing the run directory", self.fs.ls, self.root, detail=True)
        except FileNotFoundError:
            return {}
        return {info["name"].rstrip("/").rsplit("/", 1)[-1]: info for info in infos if info.get("type") != "directory"}

    def _read_json(self, name: str) -> dict | None:
        try:
            raw = self._network(f"reading {name}", self.fs.cat_file, self._key(name))
        except FileNotFoundError:
            return None
        try:
            doc = json.loads(raw)
        except ValueError:
            return None
        return doc if isinstance(doc, dict) else None

    # -- ownership: the lease --------------------------------------------------------------
    def _lease_is_live(self, lease: dict) -> bool:
        if lease.get("expires", 0) < time.time():
            return False
        if lease.get("host") == socket.gethostname() and isinstance(lease.get("pid"), int):
            return _pid_alive(lease["pid"])  # same host: a dead holder frees the lease at once
        return True

    def _lease_doc(self) -> bytes:
        return json.dumps({"token": self._lease_token, "pid": os.getpid(), "host": socket.gethostname(),
                           "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                           "expires": time.time() + self.lease_ttl_s}).encode()

    def _write_lease(self) -> None:
        self._network("writing the writer lease", self.fs.pipe_file, self._key(LEASE_NAME), self._lease_doc())

    def _create_lease(self) -> bool:
        """Create the lease only if there is none (S3 If-None-Match, fsspec mode="create").

        True: created atomically, no other writer can hold it. False: this store has no conditional create; the
        lease was written plainly and the caller must read it back. RunDirectoryBusy: another writer's lease exists.
        """
        try:
            self._network("creating the writer lease", self.fs.pipe_file, self._key(LEASE_NAME), self._lease_doc(),
                          mode="create")
            return True
        except FileExistsError:
            self._lease_token = None
            raise RunDirectoryBusy("another writer took the run directory at the same moment; "
                                   "one writer per run directory", path=self.path) from None
        except (TypeError, NotImplementedError, ValueError):
            pass  # a filesystem without mode="create"
        except ObjectStoreError as exc:
            if "NotImplemented" not in exc.message and "not implemented" not in exc.message.lower():
                raise
        self._write_lease()
        return False

    def _take_lease(self) -> None:
        current = self._read_json(LEASE_NAME)
        if current and self._lease_is_live(current):
            raise RunDirectoryBusy(
                f"run directory is in use by another writer (pid {current.get('pid')} on {current.get('host')} since "
                f"{current.get('since')}, lease valid for {max(0, int(current['expires'] - time.time()))} s more); "
                "one writer per run directory", path=self.path)
        self._lease_token = secrets.token_hex(8)
        stale = current is not None or LEASE_NAME in self._listing()
        if stale:  # expired, its holder gone, or unreadable: remove it so that the create below can succeed
            try:
                self._network("removing an expired writer lease", self.fs.rm_file, self._key(LEASE_NAME))
            except FileNotFoundError:
                pass
        if self._create_lease() and not stale:
            return  # the store refused any second create: this writer alone holds the lease
        # No conditional create here, or two writers both removed the same stale lease: the later write wins and
        # the read-back tells the earlier one.
        time.sleep(0.2)
        check = self._read_json(LEASE_NAME)
        if not check or check.get("token") != self._lease_token:
            self._lease_token = None
            raise RunDirectoryBusy("another writer took the run directory at the same moment; "
                                   "one writer per run directory", path=self.path)

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.lease_ttl_s / 3):
            try:
                current = self._read_json(LEASE_NAME)
                if not current or current.get("token") != self._lease_token:
                    self._lease_lost = True
                    self._log(f"{self.path}: the writer lease was taken by another writer; no further commits")
                    return
                self._write_lease()
            except ReprotrainError as exc:
                self._log(f"{self.path}: could not renew the writer lease ({exc.message}); retrying")

    @property
    def held(self) -> bool:
        return self._lease_token is not None and not self._lease_lost

    def acquire(self) -> None:
        """Take the writer lease (RunDirectoryBusy, exit 2, naming the holder), then remove uncommitted objects.

        Idempotent: an ObjectRunDirectory that already holds its lease keeps it.
        """
        if self._lease_token is not None:
            return
        self._take_lease()
        self._stop.clear()
        self._heartbeat = threading.Thread(target=self._renew_loop, name="reprotrain-lease", daemon=True)
        self._heartbeat.start()
        if self._mirror_dir is None:
            self._mirror_dir = Path(tempfile.mkdtemp(prefix="reprotrain-run-"))
        self._mirror_dir.mkdir(parents=True, exist_ok=True)
        self._download_mirrored()
        self.remove_partials()
        if self.staging_dir is not None:
            self._local = RunDirectory(self.staging_dir, log=self._log)
            self._local.acquire()
            self._start_uploader()

    def release(self) -> None:
        if self._lease_token is None:
            return
        try:
            if self._uploader is not None:
                self._drain_and_report()
            self._upload_mirrored()
        except ReprotrainError as exc:
            self._log(f"{self.path}: could not upload {', '.join(MIRRORED_FILES)} at stop: {exc.message}")
        finally:
            self._stop.set()
            if not self._lease_lost:
                try:
                    self.fs.rm_file(self._key(LEASE_NAME))
                except Exception:  # an expired lease frees the directory anyway
                    pass
            self._lease_token = None
            if self._local is not None:
                self._local.release()

    def remove_partials(self) -> list[str]:
        """Delete checkpoint objects without a commit pointer (a writer died between the two writes)."""
        self._check_lease()
        listing = self._listing()
        orphans = [n for n in listing if n.endswith(CHECKPOINT_SUFFIX) and n + POINTER_SUFFIX not in listing]
        for name in orphans:
            self._network(f"removing {name}", self.fs.rm_file, self._key(name))
        if orphans:
            self._log(f"removed {len(orphans)} uncommitted checkpoint object(s) left by an earlier crash: "
                      f"{', '.join(sorted(orphans))}")
        return orphans

    def clear(self) -> list[str]:
        """Delete every object of the run but the lease (``train --fresh --overwrite``), under the lease.

        Staged checkpoints of the earlier run are dropped too (never uploaded into the new run).
        """
        self._check_lease()
        if self._local is not None:
            with self._pending_lock:
                self._pending.clear()  # queued and retried uploads of the old run now do nothing
            self._uploads.join()       # an upload in flight finishes before its objects are deleted
            self._local.clear()
        for name in MIRRORED_FILES:
            try:
                (self._mirror_dir / name).unlink()
            except FileNotFoundError:
                pass
        self.fs.invalidate_cache(self.root)
        try:
            keys = self._network("listing the run directory", self.fs.find, self.root)
        except FileNotFoundError:
            keys = []
        lease = self._key(LEASE_NAME).lstrip("/")
        removed = []
        for key in sorted(keys, key=lambda k: k.endswith(CHECKPOINT_SUFFIX)):  # pointers before objects
            if key.lstrip("/") == lease:
                continue
            try:
                self._network(f"deleting {key}", self.fs.rm_file, key)
            except FileNotFoundError:
                continue
            removed.append(key.rsplit("/", 1)[-1])
        return removed

    def names(self) -> list[str]:
        """What the run holds besides the writer lease: names directly under the URL ([] when nothing); reads only."""
        self.fs.invalidate_cache(self.root)
        try:
            found = self._network("listing the run directory", self.fs.ls, self.root, detail=False)
        except FileNotFoundError:
            return []
        return [n for n in (p.rstrip("/").rsplit("/", 1)[-1] for p in found) if n != LEASE_NAME]

    # -- side files (metrics.jsonl) --------------------------------------------------------
    def local_path(self, name: str) -> Path:
        if self._mirror_dir is None:
            raise ObjectStoreError("run directory not acquired", path=self.path)
        return self._mirror_dir / name

    def _download_mirrored(self) -> None:
        for name in MIRRORED_FILES:
            local = self._mirror_dir / name
            try:
                data = self._network(f"downloading {name}", self.fs.cat_file, self._key(name))
            except FileNotFoundError:
                continue
            if not local.exists() or local.stat().st_size < len(data):
                local.write_bytes(data)

    def _upload_mirrored(self) -> None:
        for name in MIRRORED_FILES:
            local = self._mirror_dir / name if self._mirror_dir else None
            if local is not None and local.exists():
                self._network(f"uploading {name}", self.fs.pipe_file, self._key(name), local.read_bytes())

    # -- writing ---------------------------------------------------------------------------
    def _check_lease(self) -> None:
        if self._lease_token is None:
            raise ObjectStoreError("run directory not acquired", path=self.path)
        if self._lease_lost:
            raise ObjectStoreError("the writer lease was lost to another writer; refusing to commit", path=self.path)

    def _put_checkpoint(self, name: str, write: Callable[[object], object]) -> None:
        """Upload ``name`` completely, then write its commit pointer."""
        key = self._key(name)
        try:
            target = self.fs.open(key, "wb", block_size=self.part_size)
        except Exception as exc:
            raise ObjectStoreError(f"object store error while starting {name}: {_describe(exc)}; previous "
                                   "checkpoints are intact", path=self.path) from None
        hashing = _HashingWriter(target)
        try:
            write(hashing)
            target.close()
        except BaseException as exc:
            try:
                target.discard()  # aborts the multipart upload: no object, no pointer
            except Exception:
                pass
            # Never let the file object's finaliser retry the upload later (it would raise in __del__).
            try:
                target.closed = True
            except AttributeError:  # io.BytesIO-based files (memory://) have nothing to retry...
                pass
            if isinstance(target, io.BytesIO):  # ...but they exist from the open on: remove the partial object
                try:
                    self.fs.rm_file(key)
                except Exception:  # without a pointer it is invisible anyway, and the next writer removes it
                    pass
            if isinstance(exc, Exception) and not isinstance(exc, ReprotrainError):
                raise ObjectStoreError(f"object store error while uploading {name}: {_describe(exc)}; previous "
                                       "checkpoints are intact", path=self.path) from None
            raise
        pointer = {"format": POINTER_FORMAT, "name": name, "size": hashing.size,
                   "sha256": hashing.sha256.hexdigest(), "committed": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        try:
            self.fs.pipe_file(key + POINTER_SUFFIX, json.dumps(pointer).encode())
        except Exception as exc:
            raise ObjectStoreError(f"object store error while committing {name}: {_describe(exc)}; previous "
                                   "checkpoints are intact", path=self.path) from None

    def commit(self, name: str, write: Callable[[object], object]):
        """Commit ``name``; returns where it can be read now (the local staged file in staging mode)."""
        self._check_lease()
        if self._local is None:
            self._put_checkpoint(name, write)
            self._upload_mirrored()
            return self.path / name
        path = self._local.commit(name, write)
        with self._pending_lock:
            self._pending[name] = path.stat().st_size
        self._uploads.put(("upload", name))
        return path

    def delete(self, name: str) -> None:
        self._check_lease()
        if self._local is None:
            self._delete_remote(name)
            return
        with self._pending_lock:
            self._pending.pop(name, None)
        self._local.delete(name)
        self._uploads.put(("delete", name))  # after every upload queued before it

    def _delete_remote(self, name: str) -> None:
        for key in (self._key(name + POINTER_SUFFIX), self._key(name)):  # pointer first: never a listed half
            try:
                self._network(f"deleting {name}", self.fs.rm_file, key)
            except FileNotFoundError:
                pass

    # -- staging: the background uploader ---------------------------------------------------
    def _start_uploader(self) -> None:
        self._uploads = queue.Queue()
        listing = self._listing()
        for path in self._local.checkpoint_paths():  # staged at an earlier run but never uploaded
            if path.name + POINTER_SUFFIX not in listing:
                self._pending[path.name] = path.stat().st_size
                self._uploads.put(("upload", path.name))
        if self._pending:
            self._log(f"uploading {len(self._pending)} checkpoint(s) staged by an earlier run: "
                      f"{', '.join(self._pending)}")
        self._uploader = threading.Thread(target=self._upload_loop, name="reprotrain-upload", daemon=True)
        self._uploader.start()

    def _upload_loop(self) -> None:
        delay = 1.0
        while True:
            op = self._uploads.get()
            if op is None:
                self._uploads.task_done()
                return
            while not self._stop.is_set():
                try:
                    self._run_op(*op)
                    self._last_upload_error, delay = None, 1.0
                    break
                except Exception as exc:  # keep the order: retry this op until it lands or the run stops
                    message = exc.message if isinstance(exc, ReprotrainError) else _describe(exc)
                    if message != self._last_upload_error:
                        self._log(f"{self.path}: upload failed, retrying in the background: {message}")
                    self._last_upload_error = message
                    self._stop.wait(delay)
                    delay = min(delay * 2, 30.0)
            self._uploads.task_done()

    def _run_op(self, op: str, name: str) -> None:
        if op == "delete":
            self._delete_remote(name)
            return
        with self._pending_lock:
            if name not in self._pending:
                return  # deleted by retention before it was uploaded
        source = self._local.root / name
        with open(source, "rb") as f:
            self._put_checkpoint(name, lambda target: shutil.copyfileobj(f, target, 8 << 20))
        with self._pending_lock:
            self._pending.pop(name, None)
        self._upload_mirrored()

    def pending_uploads(self) -> dict[str, int]:
        """Staged checkpoints not yet committed remotely: name -> bytes, in commit order."""
        with self._pending_lock:
            return dict(self._pending)

    def _drain_and_report(self) -> None:
        deadline = time.monotonic() + self.drain_timeout_s
        while self.pending_uploads() and time.monotonic() < deadline and self._uploader.is_alive():
            time.sleep(0.1)
        pending = self.pending_uploads()
        status = {"url": str(self.path), "staging_dir": str(self._local.path), "pending": pending,
                  "last_error": self._last_upload_error, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        (self._local.root / UPLOAD_STATUS_FILE).write_text(json.dumps(status, indent=2) + "\n")
        if pending:
            listed = ", ".join(f"{n} ({size / 2**20:.1f} MiB)" for n, size in pending.items())
            self._log(f"NOT YET UPLOADED to {self.path}: {listed}; kept in {self._local.path} and uploaded at the "
                      f"next start with the same run directory and staging folder"
                      + (f" (last error: {self._last_upload_error})" if self._last_upload_error else ""))
        else:
            self._log(f"all checkpoints are uploaded to {self.path}")

    # -- reading ---------------------------------------------------------------------------
    def checkpoint_paths(self) -> list:
        return [e.path for e in self.list_checkpoints()]

    def list_checkpoints(self, *, deep: bool = False, frameworks: bool = False) -> list[Entry]:
        """Committed checkpoints (plus, in staging mode, staged ones not yet uploaded), newest last. Object stores hold
        only committed `.pth` checkpoints (``frameworks`` changes nothing here)."""
        listing = self._listing()
        entries: dict[str, Entry] = {}
        for pointer_name in sorted(n for n in listing if n.endswith(CHECKPOINT_SUFFIX + POINTER_SUFFIX)):
            name = pointer_name[: -len(POINTER_SUFFIX)]
            url = self.path / name
            pointer = self._read_json(pointer_name)
            if name not in listing:
                entries[name] = Entry(url, None, "the commit pointer names a missing object", False)
            elif pointer is None or not isinstance(pointer.get("size"), int):
                entries[name] = Entry(url, None, f"unreadable commit pointer {pointer_name}", False)
            elif listing[name].get("size") != pointer["size"]:
                entries[name] = Entry(url, None, f"object is {listing[name].get('size')} bytes but was committed "
                                                       f"with {pointer['size']} (overwritten or truncated)", False)
            else:
                entries[name] = read_entry(url, deep=deep)
        if self._local is not None:  # the local copy is identical and faster to read
            for path in self._local.checkpoint_paths():
                entries[path.name] = read_entry(path, deep=deep)
        return sort_entries(list(entries.values()))

