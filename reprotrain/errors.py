"""Errors that the CLI turns into one line on stderr, and the exit codes every command uses.

``ExitCode`` is the one list of exit codes: the tables in README.md, README.zh-CN.md, docs/architecture.md and
docs/ci.md are checked against it (tests/test_docs_sync.py).
"""

from __future__ import annotations

import enum
import errno
import os

_OS_REASONS = {
    errno.ENOSPC: "disk full",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EFBIG: "file too large for this file system or limit",
    errno.EIO: "I/O error",
}


def os_error_message(exc: BaseException) -> str:
    """The one wording of an OSError (or any exception) for a one-line message: `disk full`, `permission denied`, ...

    Every module that turns an OSError into a ReprotrainError uses this, so the same cause reads the same everywhere.
    """
    if isinstance(exc, OSError):
        reason = _OS_REASONS.get(exc.errno) if exc.errno is not None else None
        return reason or exc.strerror or str(exc) or type(exc).__name__
    return str(exc) or type(exc).__name__


def _shown(path) -> str:
    try:
        return os.fspath(path)
    except TypeError:  # a URL location (s3://...) has no file-system path; show it as it is written
        return str(path)


class ExitCode(enum.IntEnum):
    """Every exit code of every reprotrain command; ``description`` is what the documentation tables say."""

    OK = 0
    REFUSED = 1
    BAD_INPUT = 2
    NOT_A_CHECKPOINT = 3
    TRAINING_FAILED = 4
    SIGNATURE_FAILED = 5
    TENSORS_DIFFER = 6
    SIGINT = 130
    SIGTERM = 143

    def __str__(self) -> str:  # "2", as Python 3.11+ prints an IntEnum (3.10 would print "ExitCode.BAD_INPUT")
        return str(int(self))

    @property
    def description(self) -> str:
        return _DESCRIPTIONS[self]

    @property
    def keyword(self) -> str:
        """Words every English documentation row for this code contains (tests/test_docs_sync.py)."""
        return _KEYWORDS[self]


# Reserved with their meaning but returned by no command yet: documentation tables list them once a command does.
# tests/test_docs_sync.py keeps the tables equal to ExitCode minus these.
NOT_YET_RETURNED: frozenset = frozenset()

_DESCRIPTIONS = {
    ExitCode.OK: "ok (warnings allowed)",
    ExitCode.REFUSED: "refused by policy, environment mismatch, stale lock",
    ExitCode.BAD_INPUT: "bad input: unreadable, corrupt, invalid or unsafe file",
    ExitCode.NOT_A_CHECKPOINT: "`verify`: a readable PyTorch file that is not a reprotrain checkpoint",
    ExitCode.TRAINING_FAILED: "`train`: training failed (error, crashed worker, non-finite loss) after an "
                              "`emergency` save",
    ExitCode.SIGNATURE_FAILED: "signature verdict failed: unsigned when a signature is required, signed by no trusted "
                               "key, or a signature that does not match",
    ExitCode.TENSORS_DIFFER: "`diff`: the tensors of the two checkpoints differ",
    ExitCode.SIGINT: "`train`: stopped by SIGINT after an `interrupted` save",
    ExitCode.SIGTERM: "`train`: stopped by SIGTERM after an `interrupted` save",
}
_KEYWORDS = {
    ExitCode.OK: "ok",
    ExitCode.REFUSED: "refuse",
    ExitCode.BAD_INPUT: "corrupt",
    ExitCode.NOT_A_CHECKPOINT: "not a reprotrain checkpoint",
    ExitCode.TRAINING_FAILED: "emergency",
    ExitCode.SIGNATURE_FAILED: "sign",
    ExitCode.TENSORS_DIFFER: "differ",
    ExitCode.SIGINT: "SIGINT",
    ExitCode.SIGTERM: "SIGTERM",
}


class ReprotrainError(Exception):
    """A failure the user can act on: one line, naming the file and the problem.

    ``exit_code`` is what the CLI exits with (an ExitCode; bad input unless the raiser says otherwise).
    """

    exit_code = ExitCode.BAD_INPUT

    def __init__(self, message: str, *, path: str | os.PathLike | None = None, exit_code: int | None = None):
        super().__init__(message)
        self.message = message
        self.path = _shown(path) if path is not None else None
        if exit_code is not None:
            self.exit_code = exit_code

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class InvalidDocumentError(ReprotrainError):
    """A JSON/YAML document (fingerprint, manifest, policy, lock, env file) failed to parse or validate."""

    exit_code = ExitCode.BAD_INPUT


class EnvironmentRefused(ReprotrainError):
    """The environment differs from a recorded one in a way the policy refuses."""

    exit_code = ExitCode.REFUSED


def escape_control(text: str) -> str:
    """TEXT with every control or format character escaped (``\\n``, ``\\x1b``, ``\\u202e``...): a file name
    or a message that carries one can neither forge an output line nor drive the terminal. The one quoting
    function for everything reprotrain prints that it did not write itself (paths, member names, messages)."""
    import unicodedata

    if text.isprintable():
        return text
    out = []
    for char in text:
        if char.isprintable() or char == " ":
            out.append(char)
        elif char == "\n":
            out.append("\\n")
        elif char == "\t":
            out.append("\\t")
        elif char == "\r":
            out.append("\\r")
        elif ord(char) < 0x100:
            out.append(f"\\x{ord(char):02x}")
        elif unicodedata.category(char) in ("Cs",):  # lone surrogates (undecodable bytes of a file name)
            out.append(f"\\x{ord(char) - 0xDC00:02x}" if 0xDC80 <= ord(char) <= 0xDCFF else f"\\u{ord(char):04x}")
        else:
            out.append(f"\\u{ord(char):04x}" if ord(char) < 0x10000 else f"\\U{ord(char):08x}")
    return "".join(out)


def torch_message(exc: BaseException, limit: int = 300) -> str:
    """One clean line from a torch exception: the weights-only unpickler's own reason when there is one, no ANSI
    codes, and never torch's advice to re-run with ``weights_only=False`` (reprotrain never does that)."""
    import re

    text = str(exc)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    text = re.sub(r"\x1b\[[0-9;?]*[ -/]*[@-~]", "", text)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    line = lines[0] if lines else type(exc).__name__
    if "weights_only" in line or "Weights only load failed" in line:
        line = "torch.load(weights_only=True) refused it"
    return escape_control(line)[:limit]
