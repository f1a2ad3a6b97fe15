"""CheckpointManager: the library API for people's own training loops (docs/library.md).

Layers, as in Orbax: the manager decides *when* (SavePolicy) and *what to keep* (RetentionPolicy);
the store commits files atomically; the format module writes bytes. The manager also carries the
environment fingerprint and the lineage, and turns signals and exceptions into checkpoints.

It is assembled from one module per concern:

| module | concern |
|---|---|
| options.py | ManagerOptions: every option in one dataclass |
| lineage.py | the resume gate (environment check) and the lineage of segments |
| decision.py | the save decision: due or not, and the kind (latest, periodic, best) |
| saver.py | the background saver (async_save) |
| guard.py | the signal and error guard, Interrupted |
| vote.py | the distributed vote around a commit, Coordinator |
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import time
import uuid
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from reprotrain import __version__, fingerprint as fp
from reprotrain.checkpoint import format as ckformat
from reprotrain.checkpoint import process_exit, reader, rng, sharded as ckshard, signing, state as ckstate, store
from reprotrain.checkpoint.manifest import CorruptCheckpoint
from reprotrain.checkpoint.decision import SaveDecision
from reprotrain.checkpoint.guard import SIGNAL_REASON, Interrupted, SignalGuard, StoppedWithoutSaving
from reprotrain.checkpoint.location import Location
from reprotrain.checkpoint.lineage import Lineage, gate, utcnow
from reprotrain.checkpoint.metrics import METRICS_FILE, MetricsLog, plain
from reprotrain.checkpoint.options import ManagerOptions
from reprotrain.checkpoint.policies import Candidate, RetentionPolicy, SavePolicy
from reprotrain.checkpoint.saver import BackgroundSaver
from reprotrain.checkpoint.vote import Coordinator, agreed_commit, follow_commit
from reprotrain.errors import ReprotrainError

__all__ = ["CheckpointManager", "Coordinator", "Interrupted", "KINDS", "ManagerOptions", "ResumeInfo",
           "checkpoint_name"]

KINDS = ("latest", "periodic", "best", "interrupted", "emergency")


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
    config_changes: list[str] = field(default_factory=list)  # "config changed on resume: key: old -> new"


def _stderr(msg: str) -> None:
    import sys

    print(f"reprotrain: {msg}", file=sys.stderr, flush=True)


def _is_sharded(path, log) -> bool:
    """A sharded `.dcp` checkpoint in a run whose manager is not sharded: skipped by resume, with a word."""
    name = Location.of(path).name  # a local path or a URL (Path() would turn s3:// into s3:/)
    if not name.endswith(ckshard.SUFFIX):
        return False
    log(f"skipping sharded checkpoint {name}: resume it with CheckpointManager(..., sharded=True)")
    return True


def checkpoint_name(kind: str, step: int) -> str:
    return f"step{step:010d}-{kind}{store.CHECKPOINT_SUFFIX}"


# The writing managers of this process, by run directory: a second one for the same directory takes over from an
# earlier one that was left open (a notebook cell run again) instead of failing on its own process's lock.
_OPEN: dict[str, "weakref.ref[CheckpointManager]"] = {}


def _directory_key(run_dir) -> str:
    path = run_dir.path
    return str(path) if reader.is_url(path) else os.path.realpath(path)


def _release(key: str, run_dir, signals: SignalGuard, saver: BackgroundSaver | None, metrics: list,
             should_write: bool, background: tuple | None = None) -> None:
    """Give back everything a manager holds; run by close(), the garbage collector and at interpreter exit.
    ``background``: a sharded manager's (stager, process group) of its background saves, given back after the
    saving thread has ended (the group's gloo workers are joined: docs/distributed.md, "Ending the process")."""
    try:
        signals.restore()
        if saver is not None:
            saver.stop()
    finally:
        if background is not None:
            stager, group = background
            try:
                stager.close()
            finally:
                ckshard.destroy_group(group)
        try:
            for log in metrics:
                log.close()
            metrics.clear()
        finally:
            if should_write:
                run_dir.release()
            _OPEN.pop(key, None)


def _config_changes(recorded: Mapping, live: Mapping) -> list[str]:
    changes = []
    for key in sorted(set(recorded) | set(live), key=str):
        old, new = recorded.get(key, "<unset>"), live.get(key, "<unset>")
        if json.dumps(old, sort_keys=True, default=str) != json.dumps(new, sort_keys=True, default=str):
            changes.append(f"config changed on resume: {key}: {old!r} -> {new!r}")
    return changes


class CheckpointManager:
    """Bind a run directory to the objects whose state makes up a checkpoint.

    ``epoch`` arguments count *completed* epochs (0 during the first epoch); ``step`` counts optimizer
    steps taken. ``position`` is opaque: whatever the loop needs to continue exactly (batch index,
    sampler state), as plain values. Options: a ManagerOptions, or its fields as keyword arguments.
    """

    def __init__(self, run_dir: str | os.PathLike, model: torch.nn.Module | None = None, optimizer=None, scheduler=None,
                 scaler=None, *, options: ManagerOptions | None = None, **keywords):
        opts = self.options = ManagerOptions.build(options, keywords)
        self.log = opts.log or _stderr
        self.model, self.optimizer, self.scheduler, self.scaler = model, optimizer, scheduler, scaler
        self.extra_state = dict(opts.extra_state or {})
        self.config = ckstate.redact_secrets(dict(opts.config or {}))
        policy = opts.save_policy
        self.save_policy = SavePolicy.parse(policy) if isinstance(policy, str) else (policy or SavePolicy.parse("epochs:1"))
        self.retention = opts.retention or RetentionPolicy()
        self.monitor, self.mode = opts.monitor, opts.mode
        self.env_policy = opts.env_policy or fp.Policy.load()
        self.exit_codes = {"SIGINT": 130, "SIGTERM": 143, **dict(opts.interrupt_exit_codes or {})}
        self.world_size = opts.world_size
        # Distributed runs (reprotrain.training.distributed): every rank runs the policy and the signal logic,
        # only the writer touches the run directory, and the coordinator makes the ranks decide together.
        self.should_write = opts.should_write
        self.coordinator = opts.coordinator
        self.sharded, self.rank = opts.sharded, 0
        if self.sharded:
            if opts.signing_key is not None or opts.trusted_keys is not None:
                # Refused, not ignored: trusted keys would otherwise let resume pick an unsigned directory.
                raise ReprotrainError("signing_key and trusted_keys are not available with sharded=True: sharded "
                                      "checkpoint directories are not signed yet")
            self.rank, self.world_size = ckshard.rank_and_world()
            self.should_write = self.rank == 0
            if self.rank and opts.log is None:  # every rank runs the same code: say which rank a message is from
                base, rank = self.log, self.rank
                self.log = lambda msg: base(f"rank {rank}: {msg}")
            if self.coordinator is None and self.world_size > 1:
                self.coordinator = ckshard.StepAgreement()
        if self.world_size > 1:  # gloo workers must be idle before the interpreter finalizes (process_exit)
            process_exit.install_at_exit()
        # Signing (docs/checkpoint-format.md, "Signature"): the key signs every checkpoint this manager writes;
        # trusted keys make resume pick only checkpoints signed by one of them (this run's own key included).
        self._signer = signing.as_signing_key(opts.signing_key)
        self.trusted_keys = signing.as_trusted_keys(opts.trusted_keys)
        if self.trusted_keys is not None and self._signer is not None:
            self.trusted_keys.add(self._signer)
        elif self.trusted_keys is not None and self.should_write:
            self.log("trusted keys are set but no signing key: this run's own checkpoints will be unsigned, "
                     "and resume with these trusted keys will not pick them")
        self.fingerprint = fp.collect(lock_section=opts.lock_section)
        run_id = opts.run_id or uuid.uuid4().hex[:12]
        if self.sharded:
            run_id = ckshard.rank0_value(run_id)
        self.lineage = Lineage(run_id=run_id, fingerprint=self.fingerprint, world_size=self.world_size)
        if self.sharded:
            self.lineage.set_rank_fingerprints(ckshard.agree_or_raise(self._check_rank_fingerprints, path=run_dir))
        self.decision = SaveDecision(self.save_policy, self.retention, monitor=self.monitor, mode=self.mode)
        self.checkpoints_written = 0
        self.resumes = 0
        self.last_saved: Path | None = None
        self._position: dict | None = None
        self._pending_signal: str | None = None
        self._stop_now = False
        self._signals = SignalGuard(self)
        self._with_depth = 0  # `with guard()` blocks in progress
        self._async = opts.async_save
        self._saver = BackgroundSaver(self._commit) if opts.async_save and not self.sharded else None
        self._background: tuple | None = None  # sharded + async_save: (stager, process group), set up last
        self._metrics: list[MetricsLog] = []  # opened at the first step_done (0 or 1 element)
        self._metrics_pending: list[tuple[str, dict]] = []  # the start/resume line, written with the first step
        self._last_commit: tuple | None = None  # (kind, name, position) of the newest routine save
        self._first_step = True
        self._warned_monitor = False
        self._closed = False
        self.run_dir = store.open_run_directory(run_dir, log=self.log)
        self._key = _directory_key(self.run_dir)
        if self.sharded:
            if reader.is_url(run_dir):
                raise ReprotrainError("sharded checkpoints are written to a local or shared file system; object "
                                      "stores are not supported yet", path=run_dir)
            if self.should_write:
                self._take_over_from_earlier_manager()
            ckshard.agree_or_raise(self.run_dir.acquire if self.should_write else (lambda: None), path=run_dir)
            if self.should_write:
                _OPEN[self._key] = weakref.ref(self)
        elif self.should_write:
            self._take_over_from_earlier_manager()
            self.run_dir.acquire()
            _OPEN[self._key] = weakref.ref(self)
        if self.sharded and opts.async_save:
            # Background sharded saves: the training thread stages (a host copy of its shards), one thread per rank
            # writes and commits, every collective of it on a gloo group of its own (created here, collectively).
            stager = ckshard.Stager()
            self._background = (stager, ckshard.background_group())
            self._saver = BackgroundSaver(self._commit_sharded, stage=stager.stage)
        # However this manager ends (close(), garbage collection, interpreter exit), the lock is released, the
        # signal handlers restored and the background thread stopped.
        self._finalizer = weakref.finalize(self, _release, self._key, self.run_dir, self._signals, self._saver,
                                           self._metrics, self.should_write, self._background)

    def _take_over_from_earlier_manager(self) -> None:
        ref = _OPEN.get(self._key)
        earlier = ref() if ref is not None else None
        if earlier is None or earlier is self or earlier._closed:
            return
        if earlier._with_depth:
            raise store.RunDirectoryBusy(
                "run directory is in use by another CheckpointManager of this process, inside its guard(); "
                "one writer per run directory", path=self.run_dir.path)
        self.log(f"an earlier CheckpointManager of this process on {self.run_dir.path} was left open (finish() or "
                 "close() not called): closing it; this one takes over")
        try:
            earlier.close()
        except ReprotrainError as exc:
            self.log(f"the earlier manager's last background save failed: {exc}")

    def _check_rank_fingerprints(self) -> list[dict]:
        """Every rank's fingerprint, gathered; each compared with rank 0's under the policy (refused: exit 1)."""
        from reprotrain.errors import EnvironmentRefused

        prints = ckshard.gather_fingerprints(self.fingerprint)
        refused = [r for r in range(1, len(prints)) if fp.compare(prints[0], prints[r], self.env_policy).refused]
        if refused:
            table = fp.compare(prints[0], prints[refused[0]], self.env_policy).table()
            raise EnvironmentRefused(f"rank {', '.join(map(str, refused))} differ(s) from rank 0 and the policy "
                                     f"refuses it; all ranks must run the same environment\n{table}")
        return prints

    # ------------------------------------------------------------------ views kept for callers
    @property
    def run_id(self) -> str:
        return self.lineage.run_id

    @property
    def fingerprint_digest(self) -> str:
        return self.lineage.fingerprint_digest

    @property
    def environments(self) -> dict:
        return self.lineage.environments

    @property
    def integrations(self) -> dict:
        return self.lineage.integrations

    @integrations.setter
    def integrations(self, value: dict) -> None:
        self.lineage.integrations = value

    @property
    def _segment(self) -> dict:
        return self.lineage.segment

    @property
    def best(self) -> float | None:
        return self.decision.best

    # ------------------------------------------------------------------ resume
    def resume(self, path: str | os.PathLike | None = None, *, required: bool = False) -> ResumeInfo | None:
        """Load the newest valid checkpoint (or ``path``) into the bound objects, under the environment policy.

        Each candidate is read through one open file, once: every byte is checked against its integrity trailer
        while its state is loaded (nothing is adopted before the whole file checked out). A damaged candidate is reported and the next older one tried (an explicit ``path`` is not skipped).
        """
        self.wait()  # a background save in flight commits first (and its error is raised here)
        if self.sharded:
            return self._resume_sharded(path, required=required)
        explicit = path is not None
        if explicit:
            candidates = [Location.of(path)]
        else:
            candidates = [e.path for e in store.resume_candidates(self.run_dir.list_checkpoints(), report=self.log,
                                                                  trusted=self.trusted_keys)
                          if not _is_sharded(e.path, self.log)]
        for location in candidates:
            try:
                with reader.open_checkpoint(location) as opened:
                    manifest = opened.info.manifest
                    # The signature line first (cheap); the signature itself in the loading pass, which hashes
                    # the tensors it binds, before anything is unpickled.
                    verdict = self.trusted_keys.screen(opened.info.directory) if self.trusted_keys is not None else None
                    if verdict is not None:
                        raise signing.SignatureRefused(verdict.message, path=opened.info.path)
                    comparison = gate(manifest, opened.info.path, self.fingerprint, self.env_policy, self.log)
                    obj = ckstate.load(opened, map_location=self._map_location(), verify=True,
                                       trusted=self.trusted_keys)
            except signing.SignatureRefused as exc:
                if explicit:
                    raise signing.SignatureRefused(f"resume refused: {exc.message}", path=exc.path) from None
                self.log(f"skipping checkpoint {Location.of(location).name}: {exc.message} "
                         "(resume requires a trusted signature)")
                continue
            except CorruptCheckpoint as exc:
                if explicit:
                    raise
                self.log(f"skipping damaged checkpoint {Location.of(location).name}: {exc.message}")
                continue
            return self._adopt(opened.info.path, manifest, obj["state"], comparison)
        if required:
            raise ReprotrainError("nothing to resume: no valid resumable checkpoint", path=self.run_dir.path)
        return None

    def _resume_sharded(self, path, *, required: bool) -> ResumeInfo | None:
        """Every rank takes part: rank 0's list of candidates, each checked whole (every file's size and SHA-256,
        none missing or added; the shards' SHA-256 while DCP reads them, except for the last candidate, checked before);
        a damaged one is skipped by every rank."""
        explicit = path is not None
        if explicit:
            names = [os.fspath(path)]
        else:
            def listing():
                entries = store.resume_candidates(self.run_dir.list_checkpoints(), report=self.log)
                return [os.fspath(e.path) for e in entries if e.path.suffix == ckshard.SUFFIX]
            names = ckshard.rank0_value(listing() if self.rank == 0 else None)
        touched = None  # a damaged checkpoint whose shards DCP had already copied into the live state
        for index, name in enumerate(names):
            location = Path(name)
            loading = False
            try:
                info = ckshard.agree_or_raise(lambda: reader.read_info(location), path=location)
                manifest = info.manifest
                comparison = ckshard.agree_or_raise(
                    lambda: gate(manifest, location, self.fingerprint, self.env_policy,
                                 self.log if self.rank == 0 else (lambda m: None)), path=location)
                template = self._sharded_state()
                # A damaged shard found while DCP reads may already be in the live state: fine while an older
                # checkpoint follows (it overwrites every value); the last candidate is checked whole first.
                verify_first = explicit or index == len(names) - 1
                loading = not verify_first
                ckshard.load(location, template, verify_first=verify_first)
            except CorruptCheckpoint as exc:
                if explicit:
                    raise
                touched = location if loading else touched
                if self.rank == 0:
                    self.log(f"skipping damaged checkpoint {location.name}: {exc.message}")
                continue
            recorded = manifest["lineage"][-1]["world_size"]
            if recorded != self.world_size and self.rank == 0:
                self.log(f"world size changes from {recorded} to {self.world_size}: model and optimizer state are "
                         f"resharded by torch.distributed.checkpoint")
            return self._adopt(location, manifest, template, comparison)
        if touched is not None:  # never train on from a half-read damaged state as if starting fresh
            raise CorruptCheckpoint(f"no valid sharded checkpoint to resume from, and reading the damaged "
                                           f"{touched.name} already changed the model and optimizer state",
                                           path=self.run_dir.path)
        if required:
            raise ReprotrainError("nothing to resume: no valid resumable sharded checkpoint", path=self.run_dir.path)
        return None

    def _sharded_state(self) -> dict:
        state = ckshard.get_state(self.model, self.optimizer)
        for name, obj in (("scheduler", self.scheduler), ("scaler", self.scaler)):
            if obj is not None:
                state[name] = obj.state_dict()
        if self.extra_state:
            state["extra"] = {name: obj.state_dict() for name, obj in self.extra_state.items()}
        return state

    def _adopt(self, path, manifest: dict, state: dict, comparison) -> ResumeInfo:
        notes = self._load_state(state)
        self._adopt_history(manifest, path.name)
        self._position = {"epoch": manifest["epoch"], "step": manifest["step"],
                          "samples_seen": manifest["samples_seen"], "position": manifest["position"],
                          "metrics": manifest["metrics"]}
        # The policy's clock continues from the resumed counts: points behind them are not saved again.
        self.decision.clock.resume_at(step=int(manifest["step"]), epoch=int(manifest["epoch"]))
        self.log(f"resuming from {path} ({manifest['kind']}, epoch {manifest['epoch']}, step {manifest['step']})")
        for note in notes:
            self.log(note)
        changes = _config_changes(manifest.get("config") or {}, self.config)
        for change in changes:
            self.log(change)
        self._metrics_pending = [("resume", {"checkpoint": str(path), "epoch": manifest["epoch"],
                                             "step": manifest["step"], "config_changes": changes})]
        return ResumeInfo(path, manifest["kind"], manifest["epoch"], manifest["step"], manifest["samples_seen"],
                          manifest["metrics"], manifest["config"], manifest["position"], comparison, notes, changes)

    def _map_location(self):
        if self.model is not None:
            for p in self.model.parameters():
                return p.device
        return "cpu"

    def _load_state(self, state: dict) -> list[str]:
        notes: list[str] = []
        if self.sharded:
            ckshard.set_state(self.model, self.optimizer, state)
        for name, obj in (("model", self.model), ("optimizer", self.optimizer), ("scheduler", self.scheduler),
                          ("scaler", self.scaler)):
            if self.sharded and name in ("model", "optimizer"):
                continue
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
        if not self.sharded:  # a sharded checkpoint holds no RNG state (each rank's differs; seed per step)
            notes.extend(rng.restore(state.get("rng", {})))
        return notes

    def _adopt_history(self, manifest: dict, resumed_from: str) -> None:
        self.lineage.adopt(manifest, resumed_from)
        self.resumes = len(self.lineage.segments)
        if self.monitor:
            values = []
            for entry in self.run_dir.list_checkpoints():
                m = entry.info.manifest if entry.valid else None
                if m and m.get("monitor") and m["monitor"]["name"] == self.monitor and m["run_id"] == self.run_id:
                    values.append(m["monitor"]["value"])
            self.decision.adopt_best(values)

    # ------------------------------------------------------------------ saving
    def step_done(self, *, epoch: int, step: int, samples_seen: int, position: Mapping | None = None,
                  metrics: Mapping | None = None, epoch_end: bool = False) -> Path | None:
        """Record progress; save if the policy says so; honour a pending SIGINT/SIGTERM."""
        self._check_open()
        # A sharded run's background error waits for the next save, wait() or close(): points every rank reaches
        # together (here one rank could see it a step before another and leave the others in a collective).
        self._report_background_saves(raise_error=not self.sharded)
        self._position = {"epoch": epoch, "step": step, "samples_seen": samples_seen,
                          "position": dict(position or {}), "metrics": dict(metrics or {})}
        if self._first_step:
            self._first_step = False
            self._warn_if_never_saves(step=step, epoch=epoch)
        if epoch_end:
            self._warn_if_monitor_missing()
        self._log_metrics(epoch=epoch, step=step, samples_seen=samples_seen, epoch_end=epoch_end)
        kind, due = self.decision.decide(epoch=epoch, step=step, epoch_end=epoch_end,
                                         metrics=self._position["metrics"])
        stop = self._pending_signal
        if self.coordinator is not None:
            # All ranks stop at the same step boundary if any of them got a signal, and save when the writer's
            # policy says so (time-based policies would disagree between ranks). The agreed answer is never written
            # over _pending_signal: a signal whose handler runs while the ranks agree stays pending for the next
            # step's agreement instead of being lost (nor acted on by this rank alone).
            stop, due = self.coordinator.step(stop, due)
        if stop is not None:
            self._pending_signal = stop
            self._stop_for_signal(stop)
        for msg in self.decision.messages():
            self.log(msg)
        if not due:
            return None
        return self._save_now(kind, end_reason="running")

    def _stop_for_signal(self, name: str):
        """Save `interrupted`, close (the lock and the handlers are given back at once), raise Interrupted."""
        code = self.exit_codes[name]
        path = self._save_now("interrupted", end_reason=SIGNAL_REASON[name], reason=f"received {name}")
        self._pending_signal = None
        if self.options.exit_on_second_interrupt:
            self.log(f"{name}: saved {path}; exiting with code {code}")
        else:
            self.log(f"{name}: saved {path}; stopping the loop (Interrupted); run it again to resume from there")
        self._write_metrics("interrupted", step=int(self._position["step"]), signal=name,
                            checkpoint=str(path) if path is not None else None)
        exc = Interrupted(name, code, path)
        try:
            self.close()
        except ReprotrainError as error:  # a background save failed: say so, the interrupted one is committed
            self.log(f"a background save failed before the interruption: {error}")
        raise exc

    def _warn_if_never_saves(self, *, step: int, epoch: int) -> None:
        if self.save_policy.exhausted(step=step, epoch=epoch):
            self.log(f"warning: save policy {self.save_policy.describe()!r} can never save again after step {step}, "
                     f"epoch {epoch} (every point is behind): only finish(), interrupted and emergency saves "
                     "will be written")

    def _warn_if_monitor_missing(self) -> None:
        if (self.monitor and self.retention.keep_best > 0 and not self._warned_monitor
                and self._monitored_value() is None):
            self._warned_monitor = True
            given = ", ".join(sorted(self._position["metrics"])) or "none"
            self.log(f"warning: monitor {self.monitor!r} is not among the metrics of this epoch end ({given}): "
                     "no `best` checkpoint is saved until step_done(..., epoch_end=True) reports it")

    # ------------------------------------------------------------------ metrics.jsonl
    def _write_metrics(self, kind: str, **fields) -> None:
        if not (self.options.write_metrics and self.should_write) or self._closed:
            return
        if not self._metrics:
            try:
                self._metrics.append(MetricsLog(self.run_dir.local_path(METRICS_FILE)))
            except OSError as exc:
                self.options.write_metrics = False
                self.log(f"cannot write {METRICS_FILE} ({exc.strerror or exc}); metrics are kept in the manifests only")
                return
            pending, self._metrics_pending = self._metrics_pending or [("start", {"config": self.config})], []
            for pending_kind, pending_fields in pending:
                self._metrics[0].write(pending_kind, **pending_fields)
        self._metrics[0].write(kind, **fields)

    def _log_metrics(self, *, epoch: int, step: int, samples_seen: int, epoch_end: bool) -> None:
        values = {k: plain(v) for k, v in self._position["metrics"].items() if k not in ("kind", "time", "epoch", "step")}
        if epoch_end:
            self._write_metrics("epoch", epoch=epoch, step=step, samples_seen=samples_seen, **values)
        elif values:
            self._write_metrics("step", epoch=epoch, step=step, samples_seen=samples_seen, **values)

    def _monitored_value(self) -> float | None:
        return self.decision.monitored_value(self._position["metrics"] if self._position is not None else None)

    def save(self, kind: str = "latest", *, epoch: int, step: int, samples_seen: int, position: Mapping | None = None,
             metrics: Mapping | None = None) -> Path:
        """Save now, whatever the policy. Returns the committed path (for async saves, the path it will have)."""
        if kind not in KINDS:
            raise ReprotrainError(f"unknown checkpoint kind {kind!r} (one of {', '.join(KINDS)})")
        self._check_open()
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
            self._check_open()
            path = self._save_now("emergency", end_reason="error", reason=reason, resumable=resumable)
        except ReprotrainError as exc:
            self.log(f"could not save an emergency checkpoint: {exc}")
            return None
        except Exception as exc:  # the emergency save must never hide the error that called it
            self.log(f"could not save an emergency checkpoint: {type(exc).__name__}: {exc}")
            return None
        self.log(f"saved emergency checkpoint {path} ({reason})")
        self._write_metrics("error", step=int(self._position["step"]), error=reason,
                            checkpoint=str(path) if path is not None else None)
        return path

    def finish(self, reason: str = "completed", *, save: bool = True) -> Path | None:
        """Close the lineage segment with a final `latest` checkpoint, wait for background saves, release the lock.

        At a position already saved (the policy saved this very step), that checkpoint is rewritten in place with
        the segment closed instead of adding a second file of the same state.
        """
        path = None
        try:
            self._check_open()
            self.wait()
            if save and self._position is not None:
                kind = "latest"
                if self._last_commit is not None and self._last_commit[2] == self._position_key():
                    kind = self._last_commit[0]
                path = self._save_now(kind, end_reason=reason)
            self._write_metrics("end", step=int(self._position["step"]) if self._position else 0, status=reason)
        finally:
            self.close()
        return path

    def close(self) -> None:
        """Release without saving: wait for background saves, restore the signal handlers, release the lock.
        Idempotent; also done by garbage collection and at interpreter exit."""
        if self._closed:
            return
        self._closed = True
        try:
            self.wait()
        finally:
            self._report_background_saves()
            self._finalizer()

    @property
    def closed(self) -> bool:
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise ReprotrainError("this CheckpointManager is closed (finish(), close(), or the end of an "
                                  "interrupted or failed loop); create a new one to continue (its resume() picks "
                                  "up the newest checkpoint)", path=self.run_dir.path)

    def _position_key(self) -> str:
        pos = self._position
        return json.dumps([pos["epoch"], pos["step"], pos["samples_seen"], pos["position"]], sort_keys=True,
                          default=str)

    def _manifest(self, kind: str, *, end_reason: str, reason: str | None, resumable: bool, state: dict) -> dict:
        pos = self._position
        records, nbytes = ckstate.tensor_stats(state)
        value = self._monitored_value()
        return {
            "format": ckformat.FORMAT_NAME, "format_version": ckformat.FORMAT_VERSION, "kind": kind,
            "created": utcnow(), "run_id": self.run_id, "epoch": int(pos["epoch"]), "step": int(pos["step"]),
            "samples_seen": int(pos["samples_seen"]),
            "metrics": {k: (float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None)
                        for k, v in ((k, plain(v)) for k, v in pos["metrics"].items())},
            "monitor": {"name": self.monitor, "mode": self.mode, "value": value} if self.monitor else None,
            # A value JSON cannot hold never stops a save: non-finite floats are stored as strings (json_safe).
            "config": ckformat.json_safe(self.config), "position": ckformat.json_safe(pos["position"]),
            "resumable": resumable, "reason": reason,
            "fingerprint": self.fingerprint, "fingerprint_digest": self.fingerprint_digest,
            "environments": self.environments, "lineage": self.lineage.closed_at(int(pos["step"]), end_reason),
            "state": {"components": sorted(state), "tensor_records": records, "tensor_bytes": nbytes},
            "writer": {"reprotrain": __version__, "torch": str(torch.__version__)},
            **({"integrations": ckformat.json_safe(self.integrations)} if self.integrations else {}),
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
        if self.sharded:
            return self._save_sharded(kind, end_reason=end_reason, reason=reason, resumable=resumable)
        if not self.should_write:
            return follow_commit(self.run_dir, self.coordinator, kind, checkpoint_name(kind, int(self._position["step"])))
        state = self._state()
        manifest = self._manifest(kind, end_reason=end_reason, reason=reason, resumable=resumable, state=state)
        name = checkpoint_name(kind, manifest["step"])
        if kind != "emergency":
            self._last_commit = (kind, name, self._position_key())
        if self._async and self.coordinator is None and kind in ("latest", "periodic", "best"):
            self._saver.submit(name, manifest, state)
            return self.run_dir.path / name
        self.wait()  # keep commit order: a background save must not land after this one
        path = self._commit(name, manifest, state)
        if kind in ("latest", "periodic", "best"):
            self._say_saved(path, manifest)
        return path

    def _say_saved(self, path, manifest: dict) -> None:
        if not self.options.quiet:
            self.log(f"saved {path} ({manifest['kind']}, epoch {manifest['epoch']}, step {manifest['step']})")

    def _report_background_saves(self, *, raise_error: bool = True) -> None:
        """Say, on the caller's thread, which background saves have committed; raise a background error."""
        if self._saver is None:
            return
        committed = self._saver.committed
        while committed:
            path, manifest = committed.pop(0)  # list.pop is atomic: never loses an entry the thread appends
            if not self.sharded:  # sharded saves are not announced, in the background or not
                self._say_saved(path, manifest)
        if raise_error:
            self._saver.raise_error()

    def _save_sharded(self, kind: str, *, end_reason: str, reason: str | None, resumable: bool) -> Path:
        if kind == "emergency" and self.world_size > 1:
            # An error on one rank: the others are not there for a collective save.
            raise ReprotrainError("a sharded emergency checkpoint needs every rank; none written (the previous "
                                  "checkpoint stays the resumable one)")
        started = time.monotonic()
        background = self._saver is not None and kind in ("latest", "periodic", "best")
        if not background:
            self.wait()  # keep commit order: a background save must not land after this one (nor share its time)
        state = self._sharded_state()
        manifest = None
        if self.rank == 0:
            manifest = self._manifest(kind, end_reason=end_reason, reason=reason, resumable=resumable, state={})
        name = ckshard.checkpoint_dir_name(kind, int(self._position["step"]))
        if background:
            # Waits for the save in flight (raising its error on every rank), stages this rank's state into host
            # memory, and returns: the thread writes, hashes, seals and commits (_commit_sharded).
            self._saver.submit(name, manifest, state)
            return self.run_dir.path / name
        return self._commit_sharded(name, manifest, state, started=started)

    def _commit_sharded(self, name: str, manifest: dict | None, state: dict, *, started: float | None = None) -> Path:
        """The collective commit of a sharded save (every rank), then retention on rank 0; the training thread's for a
        synchronous save, the saving thread's for a background one (on the background group)."""
        started = time.monotonic() if started is None else started
        group = self._background[1] if self._background is not None else None
        path = ckshard.save(self.run_dir.path, name, state, manifest, group=group)
        self.decision.saved(manifest or {"kind": None, "monitor": None}, cost=time.monotonic() - started)
        self.checkpoints_written += 1
        self.last_saved = path
        if self.rank == 0:
            self._apply_retention()
        return path

    def _commit(self, name: str, manifest: dict, state: dict) -> Path:
        started = time.monotonic()
        write = lambda f: ckformat.write(f, manifest, state, signer=self._signer)  # noqa: E731
        if self.coordinator is None or manifest["kind"] == "emergency":
            # An emergency save comes from one failing rank: the others are not there to agree.
            path = self.run_dir.commit(name, write)
        else:
            path = agreed_commit(self.run_dir, self.coordinator, name, write)
        self.decision.saved(manifest, cost=time.monotonic() - started)
        self.checkpoints_written += 1
        self.last_saved = path
        self._apply_retention()
        return path

    def _apply_retention(self) -> None:
        entries = self.run_dir.list_checkpoints()
        pick = store.select_for_resume(entries, deep=False, trusted=self.trusted_keys)
        candidates = [Candidate(e.path.name, e.info.manifest["kind"], e.info.manifest["step"], e.info.manifest["created"],
                                e.resumable, (e.info.manifest.get("monitor") or {}).get("value"))
                      for e in entries if e.valid and e.info.manifest["run_id"] == self.run_id]
        for name in self.retention.to_delete(candidates, mode=self.mode, resume_pick=pick.path.name if pick else None):
            self.run_dir.delete(name)

    # ------------------------------------------------------------------ asynchronous saves
    def wait(self) -> None:
        """Block until background saves have committed; raise their error, if any."""
        if self._saver is not None:
            self._saver.wait()
            self._report_background_saves()

    # ------------------------------------------------------------------ signals and errors
    @contextlib.contextmanager
    def guard(self):
        """SIGINT/SIGTERM become an `interrupted` save at the next step_done; an exception becomes an `emergency`
        save and is re-raised. However the block ends, the previous signal handlers are back; when it ends by an
        exception (Interrupted included) the manager is closed: the run directory's lock is released."""
        self._check_open()
        self._with_depth += 1
        self.start()
        try:
            yield self
        except BaseException as exc:
            self._with_depth -= 1
            self._end_guarded(exc)
            raise
        else:
            self._with_depth -= 1
            self._end_guarded(None)

    def guarded(self, fn):
        """Decorator form of guard(): ``@mgr.guarded`` on the function that runs your loop."""
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            with self.guard():
                return fn(*args, **kwargs)
        return wrapper

    def start(self) -> "CheckpointManager":
        """Install the SIGINT/SIGTERM handlers without a ``with`` block (no re-indented loop); finish() or close()
        (or Interrupted) restores the previous ones. Exceptions are not turned into `emergency` saves in this form:
        use guard() or guarded for that."""
        self._check_open()
        self._signals.depth += 1
        self._signals.install()
        return self

    def _end_guarded(self, exc: BaseException | None) -> None:
        self._signals.depth = max(self._signals.depth - 1, 0)
        try:
            if exc is not None and not self._closed:
                self._save_for(exc)
        finally:
            if self._signals.depth == 0:
                self._signals.restore()
            if exc is not None:
                try:
                    self.close()
                except ReprotrainError as error:  # a background save failed: report it, keep the original error
                    self.log(f"a background save failed: {error}")

    def _save_for(self, exc: BaseException) -> None:
        if isinstance(exc, (Interrupted, StoppedWithoutSaving)) or self._stop_now:
            return
        if isinstance(exc, KeyboardInterrupt):
            # SIGINT reached Python as an exception (handler not ours, e.g. not the main thread): the state may be
            # mid-step, so it is saved as a non-resumable emergency checkpoint.
            self.emergency("KeyboardInterrupt outside a step boundary", resumable=False)
        elif isinstance(exc, Exception) and not getattr(exc, "_reprotrain_saved", False):
            text = str(exc).strip()
            self.emergency(f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}", resumable=False)
