"""CheckpointManager: the library API for people's own training loops (docs/library.md).

Layers, as in Orbax: the manager decides *when* (SavePolicy) and *what to keep* (RetentionPolicy);
the store commits files atomically; the format module writes bytes. The manager also carries the
environment fingerprint and the lineage, and turns signals and exceptions into checkpoints.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import math
import os
import queue
import signal
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from reprotrain import __version__, fingerprint as fp
from reprotrain.checkpoint import format as ckformat
from reprotrain.checkpoint import reader, rng, state as ckstate, store
from reprotrain.checkpoint.policies import Candidate, RetentionPolicy, SaveClock, SavePolicy, best_value
from reprotrain.errors import EnvironmentRefused, ReprotrainError

KINDS = ("latest", "periodic", "best", "interrupted", "emergency")
_SIGNAL_REASON = {"SIGINT": "interrupted", "SIGTERM": "preempted"}


class Interrupted(SystemExit):
    """Raised by step_done after an `interrupted` checkpoint was committed (SIGINT or SIGTERM).

    A SystemExit, so an uncaught one ends a script with its exit code (130 / 143) and no traceback,
    and ``except Exception`` in user code does not swallow it.
    """

    def __init__(self, signal_name: str, exit_code: int, path: Path | None):
        super().__init__(exit_code)
        self.signal_name = signal_name
        self.exit_code = exit_code
        self.path = path

    def __str__(self) -> str:
        saved = f"saved {self.path}" if self.path is not None else "checkpoint committed by rank 0"
        return f"stopped by {self.signal_name} ({saved})"


@dataclass
class ResumeInfo:
    path: Path
    kind: str
    epoch: int
    step: int
    samples_seen: int
    metrics: dict
    config: dict
    position: dict
    comparison: Any  # fp.Comparison
    notes: list[str]


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


def _utcnow() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _stderr(msg: str) -> None:
    print(f"reprotrain: {msg}", file=sys.stderr, flush=True)


def checkpoint_name(kind: str, step: int) -> str:
    return f"step{step:010d}-{kind}{store.CHECKPOINT_SUFFIX}"


class CheckpointManager:
    """Bind a run directory to the objects whose state makes up a checkpoint.

    ``epoch`` arguments count *completed* epochs (0 during the first epoch); ``step`` counts optimizer
    steps taken. ``position`` is opaque: whatever the loop needs to continue exactly (batch index,
    sampler state), as plain values.
    """

    def __init__(self, run_dir: str | os.PathLike, model: torch.nn.Module | None = None, optimizer=None, scheduler=None,
                 scaler=None, *, extra_state: Mapping[str, Any] | None = None, config: Mapping | None = None,
                 save_policy: SavePolicy | str | None = None, retention: RetentionPolicy | None = None,
                 monitor: str | None = None, mode: str = "max", env_policy: "fp.Policy | None" = None,
                 run_id: str | None = None, log: Callable[[str], None] | None = None,
                 interrupt_exit_codes: Mapping[str, int] | None = None, async_save: bool = False,
                 lock_section: dict | None = None, world_size: int = 1, should_write: bool = True,
                 coordinator: "Coordinator | None" = None):
        if mode not in ("min", "max"):
            raise ReprotrainError(f"monitor mode must be 'min' or 'max', not {mode!r}")
        self.log = log or _stderr
        self.model, self.optimizer, self.scheduler, self.scaler = model, optimizer, scheduler, scaler
        self.extra_state = dict(extra_state or {})
        self.config = ckstate.redact_secrets(dict(config or {}))
        self.save_policy = SavePolicy.parse(save_policy) if isinstance(save_policy, str) else (save_policy or SavePolicy.parse("epochs:1"))
        self.retention = retention or RetentionPolicy()
        self.monitor, self.mode = monitor, mode
        self.env_policy = env_policy or fp.Policy.load()
        self.exit_codes = {"SIGINT": 130, "SIGTERM": 143, **dict(interrupt_exit_codes or {})}
        self.world_size = world_size
        # Distributed runs (reprotrain.training.distributed): every rank runs the policy and the signal logic,
        # only the writer touches the run directory, and the coordinator makes the ranks decide together.
        self.should_write = should_write
        self.coordinator = coordinator
        self.run_id = run_id or uuid.uuid4().hex[:12]
        self.fingerprint = fp.collect(lock_section=lock_section)
        self.fingerprint_digest = fp.digest(self.fingerprint)
        self.environments = {self.fingerprint_digest: self.fingerprint}
        self.lineage: list[dict] = []
        self.integrations: dict = {}  # e.g. {"mlflow": {"run_id": ...}}: carried across resumes
        self._segment = self._new_segment(first_step=0, resumed_from=None)
        self.best: float | None = None
        self.checkpoints_written = 0
        self.resumes = 0
        self.last_saved: Path | None = None
        self._position: dict | None = None
        self._pending_signal: str | None = None
        self._owner_pid = os.getpid()
        self._clock = SaveClock(self.save_policy, last_save_time=time.monotonic())
        self._async = async_save
        self._snapshot = ckstate.Snapshot() if async_save else None
        self._queue: queue.Queue | None = None
        self._worker: threading.Thread | None = None
        self._background_error: BaseException | None = None
        self.run_dir = store.open_run_directory(run_dir, log=self.log)
        if self.should_write:
            self.run_dir.acquire()

    # ------------------------------------------------------------------ lineage
    def _new_segment(self, *, first_step: int, resumed_from: str | None) -> dict:
        return {"segment": len(self.lineage), "first_step": first_step, "last_step": first_step,
                "fingerprint_digest": self.fingerprint_digest, "started": _utcnow(), "ended": None,
                "end_reason": "running", "resumed_from": resumed_from, "world_size": self.world_size,
                "host": socket.gethostname()}

    def _lineage_with(self, step: int, end_reason: str) -> list[dict]:
        seg = dict(self._segment, last_step=step, ended=_utcnow(), end_reason=end_reason)
        return [*self.lineage, seg]

    # ------------------------------------------------------------------ resume
    def resume(self, path: str | os.PathLike | None = None, *, required: bool = False) -> ResumeInfo | None:
        """Load the newest valid checkpoint (or ``path``) into the bound objects, under the environment policy.

        Each candidate is read through one open file: its integrity is checked and its state loaded from the same
        bytes. A damaged candidate is reported and the next older one tried (an explicit ``path`` is not skipped).
        """
        explicit = path is not None
        if explicit:
            candidates = [reader.as_location(path)]
        else:
            candidates = [e.path for e in store.resume_candidates(self.run_dir.list_checkpoints(), report=self.log)]
        for location in candidates:
            try:
                with reader.open_checkpoint(location, check_integrity=True) as opened:
                    manifest = opened.info.manifest
                    comparison = self._gate(manifest, opened.info.path)
                    obj = ckstate.load(opened, map_location=self._map_location())
            except reader.CorruptCheckpoint as exc:
                if explicit:
                    raise
                self.log(f"skipping damaged checkpoint {reader.as_location(location).name}: {exc.message}")
                continue
            return self._adopt(opened.info.path, manifest, obj["state"], comparison)
        if required:
            raise ReprotrainError("nothing to resume: no valid resumable checkpoint", path=self.run_dir.path)
        return None

    def _gate(self, manifest: dict, path) -> "fp.Comparison":
        comparison = fp.compare(manifest["fingerprint"], self.fingerprint, self.env_policy)
        if comparison.refused:
            raise EnvironmentRefused(
                f"resume of {path.name} refused: the environment differs from the one it was trained in\n"
                f"{comparison.table()}\nto allow it: {comparison.allow_hint()}", path=path)
        if comparison.differences:
            self.log(f"environment differs from the checkpoint's ({'warnings' if comparison.warned else 'info only'}):\n"
                     f"{comparison.table()}")
        return comparison

    def _adopt(self, path, manifest: dict, state: dict, comparison) -> ResumeInfo:
        notes = self._load_state(state)
        self._adopt_history(manifest, path.name)
        self._position = {"epoch": manifest["epoch"], "step": manifest["step"],
                          "samples_seen": manifest["samples_seen"], "position": manifest["position"],
                          "metrics": manifest["metrics"]}
        self.log(f"resuming from {path} ({manifest['kind']}, epoch {manifest['epoch']}, step {manifest['step']})")
        for note in notes:
            self.log(note)
        return ResumeInfo(path, manifest["kind"], manifest["epoch"], manifest["step"], manifest["samples_seen"],
                          manifest["metrics"], manifest["config"], manifest["position"], comparison, notes)

    def _map_location(self):
        if self.model is not None:
            for p in self.model.parameters():
                return p.device
        return "cpu"

    def _load_state(self, state: dict) -> list[str]:
        notes: list[str] = []
        for name, obj in (("model", self.model), ("optimizer", self.optimizer), ("scheduler", self.scheduler),
                          ("scaler", self.scaler)):
            if obj is None:
                continue
            if name not in state:
                notes.append(f"checkpoint has no {name} state; {name} starts fresh")
                continue
            obj.load_state_dict(state[name])
        extra = state.get("extra", {})
        for name, obj in self.extra_state.items():
            if name in extra:
                obj.load_state_dict(extra[name])
            else:
                notes.append(f"checkpoint has no state for {name!r}; it starts fresh")
        notes.extend(rng.restore(state.get("rng", {})))
        return notes

    def _adopt_history(self, manifest: dict, resumed_from: str) -> None:
        self.run_id = manifest["run_id"]
        lineage = [dict(seg) for seg in manifest["lineage"]]
        last = lineage[-1]
        if last["end_reason"] in (None, "running"):
            last["end_reason"] = "lost"  # the process died without a chance to say why (SIGKILL, power loss)
        self.lineage = lineage
        self.integrations = dict(manifest.get("integrations") or {})
        self.environments = {**manifest["environments"], self.fingerprint_digest: self.fingerprint}
        self._segment = self._new_segment(first_step=manifest["step"], resumed_from=resumed_from)
        self.resumes = len(self.lineage)
        if self.monitor:
            values = []
            for entry in self.run_dir.list_checkpoints():
                m = entry.info.manifest if entry.valid else None
                if m and m.get("monitor") and m["monitor"]["name"] == self.monitor and m["run_id"] == self.run_id:
                    values.append(m["monitor"]["value"])
            self.best = best_value(values, self.mode)

    # ------------------------------------------------------------------ saving
    def step_done(self, *, epoch: int, step: int, samples_seen: int, position: Mapping | None = None,
                  metrics: Mapping | None = None, epoch_end: bool = False) -> Path | None:
        """Record progress; save if the policy says so; honour a pending SIGINT/SIGTERM."""
        self._raise_background_error()
        self._position = {"epoch": epoch, "step": step, "samples_seen": samples_seen,
                          "position": dict(position or {}), "metrics": dict(metrics or {})}
        kind = self._kind_for(epoch, epoch_end)
        # A new best is saved at the epoch end that reaches it, whatever the frequency policy says.
        due = kind == "best" or self._clock.due(step=step, epoch=epoch, epoch_end=epoch_end, now=time.monotonic())
        if self.coordinator is not None:
            # All ranks stop at the same step boundary if any of them got a signal, and save when the writer's
            # policy says so (time-based policies would disagree between ranks).
            self._pending_signal, due = self.coordinator.step(self._pending_signal, due)
        if self._pending_signal is not None:
            name = self._pending_signal
            path = self._save_now("interrupted", end_reason=_SIGNAL_REASON[name], reason=f"received {name}")
            self.log(f"{name}: saved {path}; exiting with code {self.exit_codes[name]}")
            raise Interrupted(name, self.exit_codes[name], path)
        for msg in self._clock.messages:
            self.log(msg)
        self._clock.messages.clear()
        if not due:
            return None
        return self._save_now(kind, end_reason="running")

    def _kind_for(self, epoch: int, epoch_end: bool) -> str:
        if epoch_end and self.retention.keep_every and epoch % self.retention.keep_every == 0:
            return "periodic"
        value = self._monitored_value()
        if epoch_end and self.retention.keep_best > 0 and value is not None and (self.best is None or
                                                (value > self.best if self.mode == "max" else value < self.best)):
            return "best"
        return "latest"

    def _monitored_value(self) -> float | None:
        if not self.monitor or self._position is None:
            return None
        value = self._position["metrics"].get(self.monitor)
        return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None

    def save(self, kind: str = "latest", *, epoch: int, step: int, samples_seen: int, position: Mapping | None = None,
             metrics: Mapping | None = None) -> Path:
        """Save now, whatever the policy. Returns the committed path (for async saves, the path it will have)."""
        if kind not in KINDS:
            raise ReprotrainError(f"unknown checkpoint kind {kind!r} (one of {', '.join(KINDS)})")
        self._position = {"epoch": epoch, "step": step, "samples_seen": samples_seen,
                          "position": dict(position or {}), "metrics": dict(metrics or {})}
        return self._save_now(kind, end_reason="running")

    def emergency(self, reason: str, *, resumable: bool = False) -> Path | None:
        """Save an `emergency` checkpoint of the live state at the last recorded position.

        It never replaces a resumable checkpoint. ``resumable=True`` only when the state is known to match
        that position (e.g. the failure came before the optimizer step); otherwise resume ignores it.
        """
        if self._position is None:
            self._position = {"epoch": 0, "step": 0, "samples_seen": 0, "position": {}, "metrics": {}}
        try:
            path = self._save_now("emergency", end_reason="error", reason=reason, resumable=resumable)
        except ReprotrainError as exc:
            self.log(f"could not save an emergency checkpoint: {exc}")
            return None
        self.log(f"saved emergency checkpoint {path} ({reason})")
        return path

    def finish(self, reason: str = "completed", *, save: bool = True) -> Path | None:
        """Close the lineage segment with a final `latest` checkpoint, wait for background saves, release the lock."""
        path = None
        try:
            self.wait()
            if save and self._position is not None:
                path = self._save_now("latest", end_reason=reason)
        finally:
            self.close()
        return path

    def close(self) -> None:
        try:
            self.wait()
        finally:
            if self.should_write:
                self.run_dir.release()

    def _manifest(self, kind: str, *, end_reason: str, reason: str | None, resumable: bool, state: dict) -> dict:
        pos = self._position
        records, nbytes = ckstate.tensor_stats(state)
        value = self._monitored_value()
        return {
            "format": ckformat.FORMAT_NAME, "format_version": ckformat.FORMAT_VERSION, "kind": kind,
            "created": _utcnow(), "run_id": self.run_id, "epoch": int(pos["epoch"]), "step": int(pos["step"]),
            "samples_seen": int(pos["samples_seen"]),
            "metrics": {k: (float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None)
                        for k, v in pos["metrics"].items()},
            "monitor": {"name": self.monitor, "mode": self.mode, "value": value} if self.monitor else None,
            "config": self.config, "position": pos["position"], "resumable": resumable, "reason": reason,
            "fingerprint": self.fingerprint, "fingerprint_digest": self.fingerprint_digest,
            "environments": self.environments, "lineage": self._lineage_with(int(pos["step"]), end_reason),
            "state": {"components": sorted(state), "tensor_records": records, "tensor_bytes": nbytes},
            "writer": {"reprotrain": __version__, "torch": str(torch.__version__)},
            **({"integrations": self.integrations} if self.integrations else {}),
        }

    def _state(self) -> dict:
        state: dict = {}
        for name, obj in (("model", self.model), ("optimizer", self.optimizer), ("scheduler", self.scheduler),
                          ("scaler", self.scaler)):
            if obj is not None:
                state[name] = obj.state_dict()
        if self.extra_state:
            state["extra"] = {name: obj.state_dict() for name, obj in self.extra_state.items()}
        state["rng"] = rng.capture()
        ckstate.check_tree(state)
        return state

    def _save_now(self, kind: str, *, end_reason: str, reason: str | None = None, resumable: bool = True) -> Path:
        if not self.should_write:
            return self._follow_commit(kind)
        state = self._state()
        manifest = self._manifest(kind, end_reason=end_reason, reason=reason, resumable=resumable, state=state)
        name = checkpoint_name(kind, manifest["step"])
        if self._async and self.coordinator is None and kind in ("latest", "periodic", "best"):
            self._enqueue(name, manifest, state)
            return self.run_dir.path / name
        self.wait()  # keep commit order: a background save must not land after this one
        return self._commit(name, manifest, state)

    def _commit(self, name: str, manifest: dict, state: dict) -> Path:
        started = time.monotonic()
        if self.coordinator is None or manifest["kind"] == "emergency":
            # An emergency save comes from one failing rank: the others are not there to agree.
            path = self.run_dir.commit(name, lambda f: ckformat.write(f, manifest, state))
        else:
            path = self._agreed_commit(name, manifest, state)
        self._clock.saved(now=time.monotonic(), cost=time.monotonic() - started)
        self.checkpoints_written += 1
        self.last_saved = path
        if manifest["monitor"] and manifest["monitor"]["value"] is not None and manifest["kind"] != "emergency":
            self.best = best_value([self.best, manifest["monitor"]["value"]], self.mode)
        self._apply_retention()
        return path

    def _agreed_commit(self, name: str, manifest: dict, state: dict) -> Path:
        """Two votes around the writer's atomic commit: the bytes are written and every rank is still there (else
        the partial file is removed and the previous checkpoint stays the resumable one), then it is committed.
        Each rank votes once per stage until a vote fails; then every rank raises."""
        stage = "writing"

        def write_then_vote(f):
            nonlocal stage
            try:
                ckformat.write(f, manifest, state)
            except BaseException:
                stage = "voted"
                self.coordinator.vote(False, f"writing {name}")
                raise
            stage = "voted"  # a vote that raises (a rank died) must not be followed by another one
            self.coordinator.vote(True, f"writing {name}")
            stage = "committing"

        try:
            path = self.run_dir.commit(name, write_then_vote)
        except BaseException:
            if stage != "voted":
                self.coordinator.vote(False, f"{stage} {name}")
            raise
        self.coordinator.vote(True, f"committing {name}")
        return path

    def _follow_commit(self, kind: str) -> Path:
        """A non-writing rank's side of a save: vote with the writer (emergency saves have no vote)."""
        pos = self._position
        name = checkpoint_name(kind, int(pos["step"]))
        if self.coordinator is not None and kind != "emergency":
            self.coordinator.vote(True, f"writing {name}")
            self.coordinator.vote(True, f"committing {name}")
        return self.run_dir.path / name

    def _apply_retention(self) -> None:
        entries = self.run_dir.list_checkpoints()
        pick = store.select_for_resume(entries, deep=False)
        candidates = [Candidate(e.path.name, e.info.manifest["kind"], e.info.manifest["step"], e.info.manifest["created"],
                                e.resumable, (e.info.manifest.get("monitor") or {}).get("value"))
                      for e in entries if e.valid and e.info.manifest["run_id"] == self.run_id]
        for name in self.retention.to_delete(candidates, mode=self.mode, resume_pick=pick.path.name if pick else None):
            self.run_dir.delete(name)

    # ------------------------------------------------------------------ asynchronous saves
    def _enqueue(self, name: str, manifest: dict, state: dict) -> None:
        self.wait()  # one save in flight: back-pressure instead of unbounded memory
        snap = self._snapshot.take(state)
        self._snapshot.sync()
        if self._worker is None:
            self._queue = queue.Queue(maxsize=1)
            self._worker = threading.Thread(target=self._persist_loop, name="reprotrain-save", daemon=True)
            self._worker.start()
        self._queue.put((name, manifest, snap))

    def _persist_loop(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                self._commit(*item)
            except BaseException as exc:  # surfaced on the training thread at the next call
                self._background_error = exc
            finally:
                self._queue.task_done()

    def wait(self) -> None:
        """Block until background saves have committed; raise their error, if any."""
        if self._queue is not None:
            self._queue.join()
        self._raise_background_error()

    def _raise_background_error(self) -> None:
        if self._background_error is not None:
            exc, self._background_error = self._background_error, None
            raise exc

    # ------------------------------------------------------------------ signals and errors
    @contextlib.contextmanager
    def guard(self):
        """SIGINT/SIGTERM become an `interrupted` save at the next step_done (a second SIGINT exits at once);
        an exception becomes an `emergency` save and is re-raised."""
        previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, self._on_signal)
        try:
            yield self
        except Interrupted:
            raise
        except KeyboardInterrupt:
            # SIGINT reached Python as an exception (handler not ours, e.g. not the main thread): the state may be
            # mid-step, so it is saved as a non-resumable emergency checkpoint.
            self.emergency("KeyboardInterrupt outside a step boundary", resumable=False)
            raise
        except Exception as exc:
            if not getattr(exc, "_reprotrain_saved", False):
                self.emergency(f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}",
                               resumable=False)
            raise
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _on_signal(self, signum, frame) -> None:
        if os.getpid() != self._owner_pid:
            return  # a forked DataLoader worker inherited the handler: the main process decides
        name = signal.Signals(signum).name
        if self._pending_signal is not None and name == "SIGINT":
            os._exit(self.exit_codes["SIGINT"])  # second Ctrl-C: leave now (a partial save is cleaned at next start)
        self._pending_signal = name
        self.log(f"{name} received: saving an interrupted checkpoint at the end of this step "
                 "(press Ctrl-C again to exit at once)")

