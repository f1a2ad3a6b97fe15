"""The distributed vote around a save: every rank agrees before and after the writer's atomic commit."""

from __future__ import annotations

from pathlib import Path
from typing import Callable


class Coordinator:
    """What a CheckpointManager asks of the other ranks in a distributed run (reprotrain.training.distributed).

    ``step(pending_signal, save_due) -> (signal, save_due)``: every rank calls it at each step_done; the result is
    the signal any rank received (SIGTERM over SIGINT) and the writer's save decision.
    ``vote(ok, what)``: every rank calls it at the same point of a save; raises ReprotrainError on a rank whose own
    vote was yes when another rank's was no.
    """

    def step(self, pending_signal: str | None, save_due: bool) -> tuple[str | None, bool]:
        raise NotImplementedError

    def vote(self, ok: bool, what: str) -> None:
        raise NotImplementedError


def agreed_commit(run_dir, coordinator: Coordinator, name: str, write: Callable[[object], object]) -> Path:
    """Two votes around the writer's atomic commit: the bytes are written and every rank is still there (else
    the partial file is removed and the previous checkpoint stays the resumable one), then it is committed.
    Each rank votes once per stage until a vote fails; then every rank raises."""
    stage = "writing"

    def write_then_vote(f):
        nonlocal stage
        try:
            written = write(f)
        except BaseException:
            stage = "voted"
            coordinator.vote(False, f"writing {name}")
            raise
        stage = "voted"  # a vote that raises (a rank died) must not be followed by another one
        coordinator.vote(True, f"writing {name}")
        stage = "committing"
        return written  # the store seeds its listing with it (RunStorage.commit)

    try:
        path = run_dir.commit(name, write_then_vote)
    except BaseException:
        if stage != "voted":
            coordinator.vote(False, f"{stage} {name}")
        raise
    coordinator.vote(True, f"committing {name}")
    return path


def follow_commit(run_dir, coordinator: Coordinator | None, kind: str, name: str) -> Path:
    """A non-writing rank's side of a save: vote with the writer (emergency saves have no vote)."""
    if coordinator is not None and kind != "emergency":
        coordinator.vote(True, f"writing {name}")
        coordinator.vote(True, f"committing {name}")
    return run_dir.path / name
