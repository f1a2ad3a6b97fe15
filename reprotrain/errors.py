"""Errors that the CLI turns into one line on stderr and a documented exit code."""

from __future__ import annotations

import os


class ReprotrainError(Exception):
    """A failure the user can act on: one line, naming the file and the problem.

    ``exit_code`` is what the CLI exits with (see docs/cli.md for the table).
    """

    exit_code = 2

    def __init__(self, message: str, *, path: str | os.PathLike | None = None, exit_code: int | None = None):
        super().__init__(message)
        self.message = message
        self.path = os.fspath(path) if path is not None else None
        if exit_code is not None:
            self.exit_code = exit_code

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class InvalidDocumentError(ReprotrainError):
    """A JSON/YAML document (fingerprint, manifest, policy, lock, env file) failed to parse or validate."""

    exit_code = 2


class EnvironmentRefused(ReprotrainError):
    """The environment differs from a recorded one in a way the policy refuses."""

    exit_code = 1
