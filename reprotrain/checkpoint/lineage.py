"""The resume gate (environment check) and the run's lineage: who trained which steps, where, and how it ended."""

from __future__ import annotations

import datetime as _dt
import socket
from typing import Callable

from reprotrain import fingerprint as fp
from reprotrain.errors import EnvironmentRefused


def utcnow() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def gate(manifest: dict, path, live_fingerprint: dict, policy: "fp.Policy",
         log: Callable[[str], None]) -> "fp.Comparison":
    """Compare a checkpoint's environment with the live one: refuse (EnvironmentRefused, exit 1) or log the table."""
    comparison = fp.compare(manifest["fingerprint"], live_fingerprint, policy)
    if comparison.refused:
        raise EnvironmentRefused(
            f"resume of {path.name} refused: the environment differs from the one it was trained in\n"
            f"{comparison.table()}\nto allow it: {comparison.allow_hint()}", path=path)
    if comparison.differences:
        log(f"environment differs from the checkpoint's ({'warnings' if comparison.warned else 'info only'}):\n"
            f"{comparison.table()}")
    return comparison


class Lineage:
    """The run id, the environments seen, and one segment per process that trained the run."""

    def __init__(self, *, run_id: str, fingerprint: dict, world_size: int):
        self.run_id = run_id
        self.fingerprint = fingerprint
        self.fingerprint_digest = fp.digest(fingerprint)
        self.environments = {self.fingerprint_digest: fingerprint}
        self.world_size = world_size
        self.segments: list[dict] = []
        self.integrations: dict = {}  # e.g. {"mlflow": {"run_id": ...}}: carried across resumes
        self.rank_fingerprints: list[dict] | None = None  # sharded runs: every rank's fingerprint, in rank order
        self.segment = self._new_segment(first_step=0, resumed_from=None)

    def _new_segment(self, *, first_step: int, resumed_from: str | None) -> dict:
        return {"segment": len(self.segments), "first_step": first_step, "last_step": first_step,
                "fingerprint_digest": self.fingerprint_digest, "started": utcnow(), "ended": None,
                "end_reason": "running", "resumed_from": resumed_from, "world_size": self.world_size,
                "host": socket.gethostname(),
                **({"rank_fingerprints": [fp.digest(p) for p in self.rank_fingerprints]} if self.rank_fingerprints
                   else {})}

    def set_rank_fingerprints(self, prints: list[dict]) -> None:
        """Record every rank's fingerprint (a sharded run): in the environments, and by digest in this segment."""
        self.rank_fingerprints = list(prints)
        for p in prints:
            self.environments.setdefault(fp.digest(p), p)
        self.segment["rank_fingerprints"] = [fp.digest(p) for p in prints]

    def closed_at(self, step: int, end_reason: str) -> list[dict]:
        """The lineage as a checkpoint at ``step`` records it: earlier segments and this one, ended for ``end_reason``."""
        seg = dict(self.segment, last_step=step, ended=utcnow(), end_reason=end_reason)
        return [*self.segments, seg]

    def adopt(self, manifest: dict, resumed_from: str) -> None:
        """Continue the lineage of a resumed checkpoint in a new segment."""
        self.run_id = manifest["run_id"]
        segments = [dict(seg) for seg in manifest["lineage"]]
        last = segments[-1]
        if last["end_reason"] in (None, "running"):
            last["end_reason"] = "lost"  # the process died without a chance to say why (SIGKILL, power loss)
        self.segments = segments
        self.integrations = dict(manifest.get("integrations") or {})
        self.environments = {**manifest["environments"], self.fingerprint_digest: self.fingerprint,
                             **{fp.digest(p): p for p in self.rank_fingerprints or ()}}
        self.segment = self._new_segment(first_step=manifest["step"], resumed_from=resumed_from)
