"""The bundled training loop: resume first, save by policy, survive signals and errors, resume bit-exactly.

Position bookkeeping: `position = {"epoch": e, "batch": b}` means "epoch e (0-based) has b batches done";
`b` may equal the batches per epoch (interrupted after the last batch, before validation). The `epoch`
passed to the checkpoint manager is the number of completed epochs.
"""

from __future__ import annotations

import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from reprotrain.checkpoint.location import Location
from reprotrain.checkpoint.storage.base import METRICS_FILE
from reprotrain.errors import ReprotrainError
from reprotrain.signals import StartupSignals
from reprotrain.training import data, distributed
from reprotrain.training.config import TrainConfig, check_resume_config, resolve
from reprotrain.training.progress import MetricsLog, Progress
from reprotrain.training.tasks import Task, build_task

VAL_BATCH_SIZE = 512


class TrainingFailed(ReprotrainError):
    """Training stopped on an error (exception, crashed DataLoader worker, non-finite loss).

    The original exception is the `__cause__`. An `emergency` checkpoint was saved; resumable ones were kept.
    """

    exit_code = 4


@dataclass
class TrainResult:
    run_dir: str
    status: str                      # completed | already-complete
    config: dict
    epochs_completed: int
    step: int
    samples_seen: int
    metrics: dict                    # the last validation metrics
    wall_time_s: float               # this segment
    checkpoints_written: int
    resumes: int
    resumed_from: str | None = None
    config_changes: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _stderr(message: str) -> None:
    print(f"reprotrain: {message}", file=sys.stderr, flush=True)


def _pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ReprotrainError(f"not a device: {name!r} (use auto, cpu, cuda, cuda:N or mps)", path="--device") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ReprotrainError("CUDA requested but torch.cuda.is_available() is False", path="--device")
    return device


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@torch.no_grad()
def evaluate(task: Task, loader, device: torch.device) -> dict:
    """`val_loss` (sample-weighted mean) and, for class-index targets, `val_accuracy`."""
    task.model.eval()
    total_loss, correct, count, classification = 0.0, 0, 0, True
    for inputs, targets in loader:
        inputs, targets = inputs.to(device), targets.to(device)
        outputs = task.model(inputs)
        total_loss += float(task.loss(outputs, targets)) * len(targets)
        count += len(targets)
        classification = classification and outputs.ndim == 2 and targets.ndim == 1 \
            and not targets.is_floating_point()
        if classification:
            correct += int((outputs.argmax(1) == targets).sum())
    task.model.train()
    metrics = {"val_loss": total_loss / max(count, 1)}
    if classification and count:
        metrics["val_accuracy"] = correct / count
    return metrics


def _refuse_fresh(names: list[str], overwrite: bool, where) -> None:
    """Refusals of `--fresh` (nothing is deleted here): an existing run without --overwrite, a foreign directory."""
    if not names:
        return
    if not overwrite:
        raise ReprotrainError("run directory already holds a run; --fresh refuses to clobber it: add "
                              "--overwrite to delete it, or choose another --run-dir", path=where, exit_code=1)
    if METRICS_FILE not in names:
        raise ReprotrainError(f"not a reprotrain run directory (no {METRICS_FILE}); refusing to delete it",
                              path=where, exit_code=1)


def _prepare_fresh(run, overwrite: bool, log) -> None:
    """`--fresh`: decided and done under the writer lock, so no other writer's files can be deleted."""
    names = run.names()
    _refuse_fresh(names, overwrite, run.path)
    if names:
        removed = run.clear()
        log(f"--fresh --overwrite: deleted the earlier run in {run.path} ({len(removed)} entries)")


def resume_target(path: Location):
    """The manifest of the file given to `--resume PATH`; anything that is not a reprotrain checkpoint is bad input
    (exit 2) with the auditor's reason: "unsafe pickle ..." for a file whose pickle imports code."""
    from reprotrain.audit.classify import classify
    from reprotrain.checkpoint import reader
    from reprotrain.checkpoint.manifest import NotACheckpoint

    try:
        return reader.read_info(path)
    except NotACheckpoint:
        verdict = classify(path, confirm=False)
        raise ReprotrainError(f"cannot resume from this file: {verdict.reason}", path=path, exit_code=2) from None


def _recorded_config(run, path: Location | None, trusted=None) -> tuple[dict | None, str | None]:
    """The config stored in the checkpoint that resume will pick, and that checkpoint ((None, None) when there is
    none to resume)."""
    from reprotrain.checkpoint import store

    if path is not None:
        return resume_target(path).manifest["config"], str(path)
    if not run.path.is_dir():
        return None, None
    # Manifests only: mgr.resume re-hashes the file it loads (and falls back if it is damaged), so a full
    # read here would read a large checkpoint twice.
    entry = store.select_for_resume(run.list_checkpoints(), deep=False, trusted=trusted)
    return (entry.info.manifest["config"], str(entry.path)) if entry is not None else (None, None)


def train(run_dir: str | os.PathLike = "runs/default", *, options: dict | None = None,
          config_file: str | os.PathLike | None = None, resume: bool | str | os.PathLike | None = None,
          fresh: bool = False, overwrite: bool = False, on_env_mismatch: str | None = None,
          policy: str | os.PathLike | None = None, quiet: bool = False, log=None, sign_key=None,
          trusted_keys=None, exit_on_second_interrupt: bool = False) -> TrainResult:
    """Train, resuming the newest valid checkpoint of `run_dir` unless `fresh`.

    resume: None resumes if there is something to resume; True requires a checkpoint; a path resumes that file.
    options: explicit settings (TrainConfig field names); on resume they override the recorded config.
    Raises ReprotrainError (bad input, refused resume), checkpoint.Interrupted (SIGINT/SIGTERM, after saving)
    and TrainingFailed (after an emergency save).
    A SIGINT or SIGTERM before training begins raises reprotrain.signals.StoppedAtStartup (exit 130/143).
    Under torchrun (docs/distributed.md) every rank calls it; only rank 0 writes.
    sign_key: a private key file; every checkpoint is signed with it. trusted_keys: public key files; resume picks
    only checkpoints signed by one of them (or by sign_key). Neither enters the config (docs/checkpoint-format.md).
    exit_on_second_interrupt: the CLI's "a second Ctrl-C exits at once"; in-process (the default) a second SIGINT
    raises KeyboardInterrupt without a save and never ends the interpreter.
    """
    from reprotrain.checkpoint import Interrupted

    # Until the checkpoint manager's guard takes the signals, SIGINT/SIGTERM stop the start-up cleanly
    # (reprotrain.signals.StoppedAtStartup, exit 130/143): there is nothing to save yet.
    startup = StartupSignals().install()
    group = None
    try:
        group = distributed.Group() if distributed.launched() else None
        return _train(run_dir, options=options, config_file=config_file, resume=resume, fresh=fresh,
                      overwrite=overwrite, on_env_mismatch=on_env_mismatch, policy=policy, quiet=quiet, log=log,
                      group=group, sign_key=sign_key, trusted_keys=trusted_keys, startup=startup,
                      exit_on_second_interrupt=exit_on_second_interrupt)
    except Interrupted:
        if group is not None:
            group.stop_on_sigterm_after_save()
        raise
    finally:
        startup.release()
        if group is not None:
            group.close()


@dataclass
class _Place:
    """Where training stands. `batch` counts batches done in `epoch` (single-process numbering); `sample` is a
    distributed run's offset into the epoch's permutation."""

    epoch: int = 0
    batch: int = 0
    sample: int = 0
    step: int = 0
    samples_seen: int = 0
    metrics: dict = field(default_factory=dict)


class _Session:
    """One call of `train`, as steps: lock, configure, build, resume, open the metrics log, run the epochs.

    `group` is the torchrun process group (None for one process); only its writer (rank 0) touches the run
    directory, and rank 0 speaks for the run.
    """

    def __init__(self, *, group: distributed.Group | None, log, quiet: bool, sign_key=None, trusted_keys=None,
                 exit_on_second_interrupt: bool = False):
        from reprotrain.checkpoint import signing

        self.group = group
        self.writer = group is None or group.is_writer
        speak = log or _stderr
        self.log = speak if self.writer else (lambda message: None)
        self.manager_log = speak if self.writer else (lambda message: speak(f"rank {group.rank}: {message}"))
        self.quiet = quiet
        self.exit_on_second_interrupt = exit_on_second_interrupt
        self.world_size = group.world_size if group is not None else 1
        # Keys are loaded (and their permissions checked) before anything else happens; they stay out of the config.
        self.signer = signing.as_signing_key(sign_key)
        self.trusted = signing.as_trusted_keys(list(trusted_keys)) if trusted_keys else None
        if self.trusted is not None and self.signer is not None:
            self.trusted.add(self.signer)

    def on_writer(self, action, *, path):
        """Run ACTION on the writer only; under torchrun every rank fails if it fails."""
        if self.group is None:
            return action()
        return self.group.together(lambda: action() if self.writer else None, path=path)

    # -- 1. the run directory, locked before anything is decided ----------------------------------
    def lock(self, run_dir, *, fresh: bool, overwrite: bool):
        from reprotrain.checkpoint import store

        location = Location.of(run_dir)  # a local path or an fsspec URL: one type for both
        run = store.open_run_directory(location, log=self.manager_log)

        def acquire():
            if fresh:
                # Refusals need no lock (nothing is deleted); checking first keeps a lock file out of a directory
                # that is not a run. Whether to delete is decided again under the lock.
                names = run.names()
                if METRICS_FILE not in names:
                    _refuse_fresh(names, overwrite, run.path)
            run.acquire()

        self.on_writer(acquire, path=location)
        return run

    # -- 2. the configuration -----------------------------------------------------------------------
    def configure(self, run, *, options, config_file, resume, fresh: bool, overwrite: bool) -> TrainConfig:
        resume_path = None if resume in (None, True, False) else Location.of(resume)
        if fresh:
            self.on_writer(lambda: _prepare_fresh(run, overwrite, self.log), path=run.path)
            recorded = where = None
        else:
            # The recorded config is the base of this segment's config (code locations excepted: config.CODE_FIELDS);
            # mgr.resume checks the checkpoint it actually loads again.
            recorded, where = _recorded_config(run, resume_path, self.trusted)
        cfg = resolve(recorded, file=config_file, options=options, recorded_source=where or "recorded config")
        if recorded is not None:
            check_resume_config(recorded, cfg, checkpoint=where)  # before any code named by the config is imported
        return cfg

    # -- 3. the model, data and optimizer -----------------------------------------------------------
    def build(self, cfg: TrainConfig) -> tuple[Task, torch.device]:
        torch.set_num_threads(cfg.threads)
        _seed_everything(cfg.seed)
        device = (self.group.device(cfg.device) if self.group is not None else None) or _pick_device(cfg.device)
        task = build_task(cfg)
        task.model.to(device)
        if self.group is not None and cfg.strategy == "fsdp":
            self.group.shard(task, device)  # before the manager and resume: they work on the sharded parameters
        return task, device

    def manager(self, run, task: Task, cfg: TrainConfig, *, on_env_mismatch, policy):
        from reprotrain import fingerprint as fp
        from reprotrain.checkpoint import CheckpointManager, RetentionPolicy, SavePolicy

        monitor = cfg.monitor if task.val_data is not None else None
        sharded = self.group is not None and cfg.strategy == "fsdp"
        return CheckpointManager(
            run, task.model, optimizer=task.optimizer, scheduler=task.scheduler, config=cfg.to_dict(),
            save_policy=SavePolicy.parse(cfg.save),
            retention=RetentionPolicy(keep_last=cfg.keep_last, keep_best=cfg.keep_best, keep_every=cfg.keep_every),
            monitor=monitor, mode="max" if monitor and "acc" in monitor else "min",
            env_policy=fp.Policy.load(policy, on_mismatch=on_env_mismatch, flag="--on-env-mismatch"),
            log=self.manager_log, interrupt_exit_codes={"SIGINT": 130, "SIGTERM": cfg.sigterm_exit_code},
            world_size=self.world_size, should_write=self.writer, coordinator=self.group,
            # Routine saves are written by a background thread from a snapshot (sharded: each rank's staged
            # shards, committed on a process group of their own), so the training thread pays only for the copy;
            # interrupted and emergency saves stay synchronous.
            async_save=True, sharded=sharded, signing_key=self.signer, trusted_keys=self.trusted,
            # This loop writes its own metrics.jsonl (richer lines) and shows progress instead of a line per save.
            write_metrics=False, quiet=True, exit_on_second_interrupt=self.exit_on_second_interrupt)

    # -- 4. resume ------------------------------------------------------------------------------------
    def resume(self, mgr, task: Task, cfg: TrainConfig, *, resume, fresh: bool):
        """Load the checkpoint to continue (None when starting); returns (info, place, config changes)."""
        resume_path = None if resume in (None, True, False) else Location.of(resume)
        place = _Place()
        if fresh:
            info = None
        elif self.group is None:
            info = mgr.resume(path=resume_path, required=resume is not None)
        elif mgr.sharded:  # every rank checks its share of the files and loads its shards (DCP reshards)
            self.group.check_fingerprints(mgr.fingerprint, mgr.env_policy, log=self.log, path=mgr.run_dir.path)
            info = mgr.resume(path=resume_path, required=resume is not None)
        else:
            self.group.check_fingerprints(mgr.fingerprint, mgr.env_policy, log=self.log, path=mgr.run_dir.path)
            info = self.group.resume(mgr, path=resume_path, required=resume is not None, where=mgr.run_dir.path)
        if info is None:
            return None, place, []
        changes = check_resume_config(info.config or {}, cfg, checkpoint=str(info.path))
        n = len(task.train_data)
        position = _checked_position(info.position, n=n, batch_size=cfg.batch_size, where=info.path)
        place = _Place(epoch=position["epoch"], batch=position["batch"], step=info.step,
                       samples_seen=info.samples_seen, metrics=dict(info.metrics or {}),
                       sample=min(distributed.start_sample(position, cfg.batch_size), n))
        if place.epoch >= cfg.epochs:
            self.log(f"the run has already completed {place.epoch} of {cfg.epochs} epochs: nothing to train "
                     "(pass a larger --epochs to continue it)")
        else:
            self.log(f"continuing epoch {place.epoch + 1} of {cfg.epochs} at batch {place.batch}")
        for message in changes:
            if message not in info.config_changes:  # the manager has said those
                self.log(message)
        note = distributed.world_size_note(position, world_size=self.world_size, batch_size=cfg.batch_size, n=n)
        if note:
            self.log(note)
            changes.append(note)
        return info, place, changes

    # -- 5. metrics.jsonl (and MLflow, W&B) --------------------------------------------------------------
    def metrics_log(self, mgr, cfg: TrainConfig, device, info, place: _Place, changes: list):
        metrics_log = MetricsLog(mgr.run_dir.local_path(METRICS_FILE)) if self.writer else distributed.NoMetrics()
        if cfg.mlflow and self.writer:
            from reprotrain.integrations.mlflow_tracking import MLflowTracker, TrackedMetricsLog

            tracker = MLflowTracker(mgr, experiment=cfg.mlflow_experiment)
            self.log(f"MLflow run {tracker.start()} (experiment {cfg.mlflow_experiment!r})")
            metrics_log = TrackedMetricsLog(metrics_log, tracker)
        if cfg.wandb and self.writer:
            from reprotrain.integrations.mlflow_tracking import TrackedMetricsLog
            from reprotrain.integrations.wandb_tracking import WandbTracker

            run_dir = mgr.run_dir.path
            local = not isinstance(run_dir, str) and not os.environ.get("WANDB_DIR")
            wandb_tracker = WandbTracker(mgr, project=cfg.wandb_project, directory=run_dir if local else None)
            self.log(f"W&B run {wandb_tracker.start()} (project {cfg.wandb_project!r})")
            metrics_log = TrackedMetricsLog(metrics_log, wandb_tracker)
        if info is None:
            metrics_log.write("start", config=cfg.to_dict(), world_size=self.world_size)
            ranks = f" x {self.world_size} ranks ({self.group.backend})" if self.group is not None else ""
            self.log(f"training {cfg.task} ({cfg.model}) for {cfg.epochs} epochs on {device}{ranks}; checkpoints "
                     f"and {METRICS_FILE} go to {mgr.run_dir.path}. Stop any time (Ctrl-C); run the same command "
                     "again to resume.")
        else:
            metrics_log.write("resume", checkpoint=str(info.path), epoch=place.epoch, batch=place.batch,
                              step=place.step, config_changes=changes, world_size=self.world_size)
        return metrics_log

    # -- 6. the epochs --------------------------------------------------------------------------------
    def loader(self, task: Task, cfg: TrainConfig, device, place: _Place):
        """The epoch's training batches from where `place` stands, and (distributed) the global batch sizes."""
        if self.group is None:
            return data.train_loader(task.train_data, batch_size=cfg.batch_size, seed=cfg.seed, epoch=place.epoch,
                                     start_batch=place.batch, num_workers=cfg.num_workers,
                                     pin_memory=device.type == "cuda"), None
        loader, sampler = distributed.train_loader(
            task.train_data, batch_size=cfg.batch_size, seed=cfg.seed, epoch=place.epoch, start=place.sample,
            rank=self.group.rank, world_size=self.world_size, num_workers=cfg.num_workers,
            pin_memory=device.type == "cuda")
        return loader, sampler.global_sizes()

    def position(self, cfg: TrainConfig, place: _Place) -> dict:
        if self.group is None:
            return {"epoch": place.epoch, "batch": place.batch}
        return distributed.position(place.epoch, place.sample, cfg.batch_size, self.world_size)

    def train_step(self, task: Task, model, inputs, targets, place: _Place, cfg: TrainConfig) -> float | str:
        """One optimizer step; returns the loss, or a message when it is not finite (the weights are untouched)."""
        if self.group is not None:
            distributed.seed_step(cfg.seed, place.epoch, place.sample, self.group.rank)
        task.optimizer.zero_grad(set_to_none=True)
        loss = task.loss(model(inputs), targets)
        loss_value = loss.item()
        finite = math.isfinite(loss_value)
        if self.group is not None and self.group.any(not finite):  # every rank stops at the same step
            finite, loss_value = False, loss_value if not finite else float("nan")
        if not finite:
            # Stop before this step touches the weights: the state on disk stays the last good one.
            return f"non-finite loss ({loss_value}) at epoch {place.epoch + 1}, batch {place.batch + 1}"
        loss.backward()
        task.optimizer.step()
        return loss_value

    def epochs(self, mgr, task: Task, cfg: TrainConfig, device, place: _Place, metrics_log, progress) -> str | None:
        """Train until `cfg.epochs` are done; returns the non-finite-loss message that stopped it, if any."""
        model = task.model
        if self.group is not None and cfg.strategy != "fsdp":  # fsdp: sharded in place by build()
            model = self.group.wrap(task.model, device)
        val = None
        if task.val_data is not None:
            val = data.val_loader(task.val_data, batch_size=VAL_BATCH_SIZE, num_workers=cfg.num_workers,
                                  pin_memory=device.type == "cuda")
        started, start_samples = time.perf_counter(), place.samples_seen
        while place.epoch < cfg.epochs:
            loader, global_sizes = self.loader(task, cfg, device, place)
            task.model.train()
            for inputs, targets in loader:
                inputs, targets = inputs.to(device), targets.to(device)
                loss_value = self.train_step(task, model, inputs, targets, place, cfg)
                if isinstance(loss_value, str):
                    return loss_value
                if self.group is None:
                    place.batch += 1
                    place.samples_seen += len(targets)
                else:
                    consumed = next(global_sizes)  # samples this step took from the permutation, all ranks
                    place.sample += consumed
                    place.samples_seen += consumed
                    place.batch = math.ceil(place.sample / cfg.batch_size)
                place.step += 1
                rate = (place.samples_seen - start_samples) / max(time.perf_counter() - started, 1e-9)
                if place.step % cfg.log_every == 0:
                    metrics_log.write("step", epoch=place.epoch, batch=place.batch, step=place.step, loss=loss_value,
                                      samples_per_s=round(rate, 1))
                progress.update(step=place.step, epoch=place.epoch, loss=loss_value, samples_per_s=rate)
                mgr.step_done(epoch=place.epoch, step=place.step, samples_seen=place.samples_seen,
                              position=self.position(cfg, place), metrics={"loss": loss_value})
            place.metrics = evaluate(task, val, device) if val is not None else {}
            if task.scheduler is not None:
                task.scheduler.step()
            place.epoch, place.batch, place.sample = place.epoch + 1, 0, 0
            metrics_log.write("epoch", epoch=place.epoch, step=place.step, **place.metrics)
            mgr.step_done(epoch=place.epoch, step=place.step, samples_seen=place.samples_seen,
                          position=self.position(cfg, place), metrics=place.metrics, epoch_end=True)
        return None


def _checked_position(position: dict, *, n: int, batch_size: int, where) -> dict:
    """The recorded position the bundled loop continues from, checked (a checkpoint is input: exit 2 if wrong)."""
    batches = math.ceil(n / batch_size)
    checked = {}
    for key, low, high, required in (("epoch", 0, 2**53, True), ("batch", 0, batches, "sample" not in position),
                                     ("sample", 0, n, False), ("world_size", 1, 2**31, False)):
        if key not in position:
            if required:
                raise ReprotrainError(f"recorded position has no {key!r}: not a checkpoint of the bundled loop",
                                      path=where, exit_code=2)
            continue
        value = position[key]
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ReprotrainError(f"recorded position is invalid: {key} must be an integer in {low}..{high}, got "
                                  f"{value!r}", path=where, exit_code=2)
        checked[key] = value
    checked.setdefault("batch", math.ceil(checked.get("sample", 0) / batch_size))
    return checked


def _train(run_dir, *, options, config_file, resume, fresh, overwrite, on_env_mismatch, policy, quiet, log,
           group: distributed.Group | None, sign_key=None, trusted_keys=None,
           startup: StartupSignals | None = None, exit_on_second_interrupt: bool = False) -> TrainResult:
    from reprotrain.checkpoint import Interrupted

    if fresh and resume:
        raise ReprotrainError("--fresh and --resume exclude each other", path="--fresh")
    if not str(run_dir).strip():
        raise ReprotrainError("the run directory must not be empty (an empty path would be the current directory)",
                              path="--run-dir")
    resolve(None, file=config_file, options=options)  # the user's own input first: bad input touches nothing
    session = _Session(group=group, log=log, quiet=quiet, sign_key=sign_key, trusted_keys=trusted_keys,
                       exit_on_second_interrupt=exit_on_second_interrupt)
    run = session.lock(run_dir, fresh=fresh, overwrite=overwrite)
    mgr = None
    try:
        cfg = session.configure(run, options=options, config_file=config_file, resume=resume, fresh=fresh,
                                overwrite=overwrite)
        if startup is not None:
            startup.exit_codes["SIGTERM"] = cfg.sigterm_exit_code
        task, device = session.build(cfg)
        mgr = session.manager(run, task, cfg, on_env_mismatch=on_env_mismatch, policy=policy)
    finally:
        if mgr is None and session.writer:
            run.release()
    try:
        info, place, changes = session.resume(mgr, task, cfg, resume=resume, fresh=fresh)
    except BaseException:
        mgr.close()
        raise
    metrics_log = session.metrics_log(mgr, cfg, device, info, place, changes)
    batches_per_epoch = data.EpochBatchSampler(len(task.train_data), cfg.batch_size, seed=cfg.seed,
                                               epoch=0).batches_per_epoch
    if group is not None:
        batches_per_epoch = math.ceil(len(task.train_data) / (cfg.batch_size * session.world_size))
    status = "already-complete" if place.epoch >= cfg.epochs else "completed"
    progress = Progress(enabled=not quiet and session.writer, total_steps=cfg.epochs * batches_per_epoch,
                        start_step=place.step)
    started = time.perf_counter()
    if startup is not None:
        startup.release()  # the guard takes the signals from here: a stop now saves an `interrupted` checkpoint
    try:
        with mgr.guard():
            non_finite = session.epochs(mgr, task, cfg, device, place, metrics_log, progress)
        if non_finite is not None:
            mgr.emergency(non_finite, resumable=False)
            raise TrainingFailed(f"{non_finite}; saved an `emergency` checkpoint (not resumable) and kept the last "
                                 "good checkpoint: lower --lr or check the data, then resume", path=run.path)
        mgr.finish(reason="completed", save=status == "completed" and cfg.save != "never")
        metrics_log.write("end", step=place.step, status=status)
    except Interrupted as exc:
        metrics_log.write("interrupted", step=place.step, signal=exc.signal_name,
                          checkpoint=os.fspath(exc.path) if exc.path else None)
        raise
    except (RuntimeError, OSError) as exc:
        metrics_log.write("error", step=place.step, error=f"{type(exc).__name__}: {exc}")
        raise TrainingFailed(f"training failed at epoch {place.epoch + 1}, step {place.step}: {type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else ''}; saved an `emergency` checkpoint and "
                             "kept the resumable ones", path=run.path) from exc
    finally:
        progress.close()
        metrics_log.close()
        mgr.close()

    return TrainResult(run_dir=str(run.path), status=status, config=cfg.to_dict(), epochs_completed=place.epoch,
                       step=place.step, samples_seen=place.samples_seen, metrics=place.metrics,
                       wall_time_s=round(time.perf_counter() - started, 3),
                       checkpoints_written=mgr.checkpoints_written, resumes=mgr.resumes,
                       resumed_from=str(info.path) if info is not None else None, config_changes=changes)
