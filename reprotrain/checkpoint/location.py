"""Where a checkpoint or a run directory is: one value type for local paths and fsspec URLs alike.

``Location("runs/a")``, ``Location("file:///data/runs/a")`` and ``Location("s3://bucket/runs/a")`` are all
Locations; each knows whether it is local (``is_local``, ``path``) or a URL (``url``, ``protocol``). A URL is
never squeezed into a ``pathlib.Path`` (that collapses ``s3://`` into ``s3:/``): ``os.fspath`` of a URL Location
raises TypeError, so code that would open it as a local file fails loudly instead of reading the wrong path.

``file://`` URLs are local paths (the POSIX run directory serves them, with its lock and atomic rename); such a
Location is shown as the URL it was written as, and equals the plain path.
The few file operations every command needs (``exists``, ``size``, ``open``, ``read_bytes``) work on both kinds;
URLs go through fsspec, imported only when a URL is used. Nothing here imports torch.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import unquote, urlsplit


def is_url(value) -> bool:
    """True for fsspec URLs other than local files (s3://, gs://, az://, memory://, ...)."""
    if isinstance(value, Location):
        return not value.is_local
    return isinstance(value, str) and "://" in value and not value.startswith("file://")


class Location:
    """A local path or an fsspec URL. Immutable; equal to the str or Path it was made from."""

    __slots__ = ("_path", "_url")

    def __init__(self, value: "str | os.PathLike | Location"):
        if isinstance(value, Location):
            self._path, self._url = value._path, value._url
            return
        if isinstance(value, str) and value.startswith("file://"):
            parts = urlsplit(value)
            if parts.netloc not in ("", "localhost"):
                raise ValueError(f"file:// URL with a remote host: {value}")
            # A local path that remembers it was written as a file:// URL (shown the way the user wrote it).
            self._path, self._url = Path(unquote(parts.path)), f"file://{parts.netloc}{parts.path.rstrip('/') or '/'}"
        elif isinstance(value, str) and "://" in value:
            protocol, rest = value.split("://", 1)
            self._path, self._url = None, f"{protocol}://{rest.rstrip('/')}" if rest.strip("/") else value
        else:
            self._path, self._url = Path(os.fspath(value)), None

    @classmethod
    def of(cls, value: "str | os.PathLike | Location") -> "Location":
        return value if isinstance(value, Location) else cls(value)

    # -- what it is --------------------------------------------------------------------------
    @property
    def is_local(self) -> bool:
        return self._path is not None

    @property
    def protocol(self) -> str:
        return "file" if self._path is not None else self._url.split("://", 1)[0]

    @property
    def path(self) -> Path:
        """The local path; ValueError for a URL (there is no local path to give)."""
        if self._path is None:
            raise ValueError(f"{self._url} is a URL, not a local path")
        return self._path

    @property
    def url(self) -> str:
        """The URL (``file://...`` for a local path)."""
        return self._url if self._url is not None else self._path.absolute().as_uri()

    @property
    def name(self) -> str:
        if self._path is not None:
            return self._path.name
        return self._url.split("://", 1)[1].rstrip("/").rsplit("/", 1)[-1]

    @property
    def parent(self) -> "Location":
        if self._path is not None and self._url is None:
            return Location(self._path.parent)
        protocol, rest = self._url.split("://", 1)
        return Location(f"{protocol}://{rest.rsplit('/', 1)[0]}" if "/" in rest else self._url)

    def __truediv__(self, name: str) -> "Location":
        if self._url is None:
            return Location(self._path / name)
        return Location(f"{self._url.rstrip('/')}/{name}")

    def __getattr__(self, attribute: str):
        """A local Location answers what a ``pathlib.Path`` does (``write_bytes``, ``with_suffix``, ...), so code and
        tests written for local run directories keep working; a URL has only the operations defined here."""
        if attribute.startswith("_"):
            raise AttributeError(attribute)
        if self._path is None:
            raise AttributeError(f"{self._url} is a URL, not a local path: Location has no {attribute!r} for it")
        return getattr(self._path, attribute)

    def __reduce__(self):
        return (Location, (str(self),))

    # -- value semantics ---------------------------------------------------------------------
    def __str__(self) -> str:
        return self._url if self._url is not None else str(self._path)

    def __repr__(self) -> str:
        return f"Location({str(self)!r})"

    def __fspath__(self) -> str:
        if self._path is None:
            raise TypeError(f"{self._url} is a URL, not a local path; open it through reprotrain.checkpoint.storage")
        return os.fspath(self._path)

    def _key(self):
        return ("file", self._path) if self._path is not None else ("url", self._url)

    def __eq__(self, other) -> bool:
        if isinstance(other, (str, os.PathLike, Location)):
            try:
                return self._key() == Location.of(other)._key()
            except (TypeError, ValueError):
                return False
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._key())

    # -- the file operations every command needs ---------------------------------------------
    def filesystem(self):
        """(fsspec filesystem, key) of a URL; import errors and bad URLs raise ValueError with a one-line reason."""
        import fsspec

        try:
            return fsspec.core.url_to_fs(self.url)
        except ImportError as exc:
            raise ValueError(f"no fsspec protocol package for {self.protocol}:// ({exc})") from None

    def exists(self) -> bool:
        if self._path is not None:
            return self._path.exists()
        fs, key = self.filesystem()
        return fs.exists(key)

    def is_dir(self) -> bool:
        """True for a local directory; for a URL, true when any object lies under it (object stores have no
        directories)."""
        if self._path is not None:
            return self._path.is_dir()
        fs, key = self.filesystem()
        try:
            return fs.isdir(key)
        except FileNotFoundError:
            return False

    def size(self) -> int | None:
        """Bytes of the file or object; None when it does not exist."""
        try:
            if self._path is not None:
                return self._path.stat().st_size
            fs, key = self.filesystem()
            return int(fs.size(key))
        except FileNotFoundError:
            return None

    def stat(self):
        """``os.stat`` of a local path; for a URL an object with ``st_size`` (FileNotFoundError if absent)."""
        if self._path is not None:
            return self._path.stat()
        size = self.size()
        if size is None:
            raise FileNotFoundError(self._url)
        return os.stat_result((0o100644, 0, 0, 1, 0, 0, size, 0, 0, 0))

    def open(self, mode: str = "rb"):
        """A binary file object (read modes only for URLs here; writers commit through a run directory)."""
        if self._path is not None:
            return open(self._path, mode)
        fs, key = self.filesystem()
        return fs.open(key, mode, block_size=8 << 20)

    def read_bytes(self) -> bytes:
        with self.open("rb") as f:
            return f.read()

    def read_text(self, encoding: str = "utf-8") -> str:
        return self.read_bytes().decode(encoding)


def as_location(value: "str | os.PathLike | Location") -> Location:
    return Location.of(value)
