"""Opening untrusted input files: regular files only, and never more than a documented number of bytes.

Every reader of a file the user (or whoever can write a run directory) supplies goes through
``open_regular`` / ``read_regular``:

* the file is opened with ``O_NONBLOCK`` (a FIFO cannot hang the open) and ``O_NOCTTY``, then checked with
  ``fstat`` on the OPEN descriptor (no check-then-open race): anything but a regular file (FIFO, socket,
  character or block device, directory; symlinks are followed, so a symlink to ``/dev/zero`` is a character
  device) is refused with exit 2, naming the file;
* ``O_NONBLOCK`` is cleared again for the reads (it means nothing for regular files anyway);
* a read is capped: ``read_regular`` refuses a file larger than ``limit`` before reading it, and the file
  object of ``open_regular`` raises once more than ``limit`` bytes were read from it (a file that grows
  while it is read cannot get past the cap either).

The limits per kind of input are in ``LIMITS`` (docs/reliability.md, "Read limits", lists them). This module
is below every layer (only ``reprotrain.errors``): envlock uses it without importing torch.
"""

from __future__ import annotations

import io
import os
import stat

from reprotrain.errors import ReprotrainError

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30

# The most bytes read from one input of each kind (a file larger than this is refused, exit 2).
LIMITS = {
    "manifest": 16 * MiB,  # archive/reprotrain/manifest.json of a checkpoint
    "pickle": 256 * MiB,  # one pickle: a checkpoint's data.pkl, a foreign file's pickle, a zip member scanned
    "checkpoint": 1 << 50,  # a checkpoint file itself: read in bounded chunks, never whole (so: no practical cap)
    "foreign": 4 * GiB,  # a file that is not a reprotrain checkpoint, classified by the static scan (streamed)
    "decompressed": 1 * GiB,  # total bytes inflated from zip members while classifying one file
    "lock": 64 * MiB,  # conda-lock.yml
    "env": 4 * MiB,  # environment.yml
    "conda-meta": 64 * MiB,  # one conda-meta/*.json record
    "record": 64 * MiB,  # a wheel's RECORD / INSTALLER / METADATA
    "metrics-line": 1 * MiB,  # one line of metrics.jsonl
    "metrics": 1 * GiB,  # metrics.jsonl as a whole (read line by line)
    "fingerprint": 16 * MiB,  # a fingerprint JSON (--against, fingerprint --compare)
    "policy": 1 * MiB,  # a fingerprint policy file
    "config": 4 * MiB,  # a training config file
    "key": 64 * KiB,  # a signing key or trusted public key (PEM / OpenSSH)
    "installed-file": 1 << 50,  # a file of an environment re-hashed by `env verify --deep` (streamed, never whole)
}

# Nested archives (a zip member that is itself a zip or a pickle-bearing archive) are opened this deep at most.
MAX_NESTING = 3

_KIND_NAMES = {
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFDIR: "a directory",
    stat.S_IFLNK: "a symbolic link",
}


def _human(size: int) -> str:
    for unit, factor in (("TiB", GiB << 10), ("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if size >= factor:
            value = size / factor
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return f"{size} bytes"


def limit_for(kind: str) -> int:
    return LIMITS[kind]


class TooLarge(ReprotrainError):
    """An input exceeds its documented read limit (exit 2)."""

    exit_code = 2


class Missing(ReprotrainError):
    """An input does not exist (exit 2)."""

    exit_code = 2


class NotRegular(ReprotrainError):
    """An input is not a regular file (exit 2)."""

    exit_code = 2


class _CappedReader(io.RawIOBase):
    """A raw reader over an fd that raises TooLarge once more than ``limit`` bytes were read in total.

    Seeks are allowed (checkpoint readers seek to the zip directory); the cap counts bytes actually read.
    """

    def __init__(self, fd: int, limit: int, what: str, path: str):
        self._file = io.FileIO(fd, "rb", closefd=True)
        self._limit = limit
        self._what = what
        self._path = path
        self._read = 0
        self.name = path

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._file.seek(offset, whence)

    def tell(self) -> int:
        return self._file.tell()

    def fileno(self) -> int:
        return self._file.fileno()

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        room = self._limit - self._read
        if room <= 0:
            if len(view) == 0:
                return 0
            # One more byte would be past the cap: refuse only if the file really has more.
            if self._file.read(1):
                raise TooLarge(f"{self._what} is larger than the {_human(self._limit)} limit", path=self._path)
            return 0
        n = self._file.readinto(view[: min(len(view), room)])
        self._read += n or 0
        return n

    def close(self) -> None:
        try:
            self._file.close()
        finally:
            super().close()


def _open_fd(path: str | os.PathLike, what: str) -> tuple[int, os.stat_result]:
    shown = os.fspath(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError as exc:
        raise Missing(f"cannot read {what}: {exc.strerror or 'No such file or directory'}", path=shown) from None
    except IsADirectoryError:
        raise NotRegular(f"{what} is a directory, not a regular file; refused", path=shown) from None
    except OSError as exc:  # EACCES, ENXIO (a socket), ELOOP, ENAMETOOLONG, ...
        raise ReprotrainError(f"cannot read {what}: {exc.strerror or exc}", path=shown) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = _KIND_NAMES.get(stat.S_IFMT(info.st_mode), "not a regular file")
            raise NotRegular(f"{what} is {kind}, not a regular file; refused", path=shown)
        if hasattr(os, "O_NONBLOCK"):
            os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd, info


def open_regular(path: str | os.PathLike, *, limit: int, what: str):
    """Open PATH for binary reading if it is a regular file; at most ``limit`` bytes can be read from it.

    ``what`` names the kind of input in messages ("lock file", "manifest", ...). A file already larger
    than ``limit`` is refused here; reading past ``limit`` (a growing file) raises TooLarge. Returns a
    buffered binary file object (seekable; ``.name`` is the path) to be closed by the caller.
    """
    fd, info = _open_fd(path, what)
    shown = os.fspath(path)
    if info.st_size > limit:
        os.close(fd)
        raise TooLarge(f"{what} is {_human(info.st_size)}, larger than the {_human(limit)} limit", path=shown)
    try:
        raw = _CappedReader(fd, limit, what, shown)
    except BaseException:
        os.close(fd)
        raise
    return io.BufferedReader(raw, buffer_size=1 << 20)


def read_regular(path: str | os.PathLike, *, limit: int, what: str) -> bytes:
    """All bytes of PATH if it is a regular file of at most ``limit`` bytes; ReprotrainError (exit 2) otherwise."""
    with open_regular(path, limit=limit, what=what) as handle:
        data = handle.read()
    return data


def read_text(path: str | os.PathLike, *, limit: int, what: str) -> str:
    """read_regular decoded as UTF-8; a file that is not UTF-8 is an error naming the file (exit 2)."""
    data = read_regular(path, limit=limit, what=what)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ReprotrainError(f"{what} is not UTF-8 text (byte {exc.start})", path=os.fspath(path)) from None


def is_regular(path: str | os.PathLike) -> bool:
    """True when PATH (symlinks followed) is a regular file; never opens it (for listings only: readers
    must still use open_regular, which checks the opened file)."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def load_yaml(text: str):
    """The one YAML loader for every document reprotrain reads (environment, lock, policy, config files): PyYAML's
    safe loader (its C implementation when built, same result, several times faster); never constructs objects.
    Raises yaml.YAMLError on a syntax error (callers turn it into their one-line message)."""
    import yaml

    try:
        return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except (ValueError, OverflowError) as exc:  # a timestamp that is no date (2020-13-45): PyYAML's constructor
        raise yaml.constructor.ConstructorError(None, None, f"invalid value ({exc})", None) from None
