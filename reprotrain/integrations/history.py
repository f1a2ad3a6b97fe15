"""The run history a framework integration carries into each checkpoint it writes: run id, environment fingerprint,
every environment of the run, the lineage segments, tracker ids; and the resume gate (the fingerprint policy).

It is what CheckpointManager keeps for its own loop, for checkpoints that a framework (Lightning, Hugging Face
Trainer, Accelerate) writes: ``manifest()`` builds a manifest (reprotrain/checkpoint/schemas/manifest.schema.json),
``adopt()`` continues the history recorded in a resumed checkpoint, ``gate()`` refuses a resume the policy refuses.

"""

from __future__ import annotations

import datetime as _dt
import math
import os
import socket
import sys
import uuid
from typing import Callable, Mapping

from reprotrain import __version__, fingerprint as fp
from reprotrain.errors import EnvironmentRefused

SIGNAL_END_REASON = {"SIGINT": "interrupted", "SIGTERM": "preempted"}
EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143}


def utcnow() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def stderr_log(message: str) -> None:
    print(f"reprotrain: {message}", file=sys.stderr, flush=True)


def _plain_metrics(metrics: Mapping | None) -> dict:
    out = {}
    for key, value in (metrics or {}).items():
        try:
            value = float(value)  # python and numpy numbers, 0-d tensors
        except (TypeError, ValueError):
            continue
        out[str(key)] = value if math.isfinite(value) else None
    return out


class RunHistory:
    """Run id, fingerprint, environments, lineage and tracker ids of one training process (one lineage segment)."""

    def __init__(self, *, env_policy: "fp.Policy | None" = None, config: Mapping | None = None,
                 run_id: str | None = None, world_size: int = 1, log: Callable[[str], None] | None = None):
        from reprotrain.checkpoint.state import redact_secrets  # imports torch: every framework has already

        self.log = log or stderr_log
        self.env_policy = env_policy or fp.Policy.load()
        self.config = redact_secrets(dict(config or {}))
        self.run_id = run_id or uuid.uuid4().hex[:12]
        self.world_size = world_size
        self.fingerprint = fp.collect()
        self.fingerprint_digest = fp.digest(self.fingerprint)
        self.environments = {self.fingerprint_digest: self.fingerprint}
        self.lineage: list[dict] = []
        self.integrations: dict = {}
        self.resumed_from: str | None = None
        self.segment = self._new_segment(first_step=0, resumed_from=None)

    def _new_segment(self, *, first_step: int, resumed_from: str | None) -> dict:
        return {"segment": len(self.lineage), "first_step": first_step, "last_step": first_step,
                "fingerprint_digest": self.fingerprint_digest, "started": utcnow(), "ended": None,
                "end_reason": "running", "resumed_from": resumed_from, "world_size": self.world_size,
                "host": socket.gethostname()}

    # ------------------------------------------------------------------ resume
    def gate(self, manifest: dict, path) -> "fp.Comparison":
        """Refuse (EnvironmentRefused, exit 1) when the policy refuses this environment for the recorded one."""
        comparison = fp.compare(manifest["fingerprint"], self.fingerprint, self.env_policy)
        name = os.path.basename(os.fspath(path).rstrip("/"))
        if comparison.refused:
            raise EnvironmentRefused(
                f"resume of {name} refused: the environment differs from the one it was trained in\n"
                f"{comparison.table()}\nto allow it: {comparison.allow_hint()}", path=path)
        if comparison.differences:
            self.log(f"environment differs from the checkpoint's ({'warnings' if comparison.warned else 'info only'}):"
                     f"\n{comparison.table()}")
        return comparison

    def adopt(self, manifest: dict, resumed_from) -> None:
        """Continue the run recorded in ``manifest``: same run id, its lineage (a `running` end becomes `lost`)."""
        self.run_id = manifest["run_id"]
        lineage = [dict(seg) for seg in manifest["lineage"]]
        if lineage and lineage[-1]["end_reason"] in (None, "running"):
            lineage[-1]["end_reason"] = "lost"
        self.lineage = lineage
        self.integrations = dict(manifest.get("integrations") or {})
        self.environments = {**manifest["environments"], self.fingerprint_digest: self.fingerprint}
        self.resumed_from = os.path.basename(os.fspath(resumed_from).rstrip("/"))
        self.segment = self._new_segment(first_step=manifest["step"], resumed_from=self.resumed_from)

    @property
    def segments(self) -> int:
        return len(self.lineage) + 1

    # ------------------------------------------------------------------ writing
    def manifest(self, kind: str, *, step: int, epoch: int, samples_seen: int = 0, end_reason: str = "running",
                 reason: str | None = None, resumable: bool = True, metrics: Mapping | None = None,
                 position: Mapping | None = None, state: dict | None = None, torch_version: str | None = None,
                 format_name: str = "reprotrain.checkpoint") -> dict:
        segment = dict(self.segment, last_step=int(step), ended=utcnow(), end_reason=end_reason)
        if torch_version is None and "torch" in sys.modules:
            torch_version = str(sys.modules["torch"].__version__)
        return {
            "format": format_name, "format_version": 1, "kind": kind, "created": utcnow(), "run_id": self.run_id,
            "epoch": int(epoch), "step": int(step), "samples_seen": int(samples_seen),
            "metrics": _plain_metrics(metrics), "monitor": None, "config": self.config,
            "position": dict(position or {}), "resumable": resumable, "reason": reason,
            "fingerprint": self.fingerprint, "fingerprint_digest": self.fingerprint_digest,
            "environments": self.environments, "lineage": [*self.lineage, segment],
            "state": state or {"components": [], "tensor_records": 0, "tensor_bytes": 0},
            "writer": {"reprotrain": __version__, "torch": torch_version},
            **({"integrations": self.integrations} if self.integrations else {}),
        }
