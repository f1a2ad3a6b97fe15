"""The bundled training loop: resume first, save by policy, survive signals and errors, resume bit-exactly.

Position bookkeeping: `position = {"epoch": e, "batch": b}` means "epoch e (0-based) has b batches done";
`b` may equal the batches per epoch (interrupted after the last batch, before validation). The `epoch`
passed to the checkpoint manager is the number of completed epochs.
"""

from __future__ import annotations

import math
import os
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from reprotrain.errors import ReprotrainError
from reprotrain.training import data, distributed
from reprotrain.training.config import TrainConfig, check_resume_config, resolve
from reprotrain.training.progress import MetricsLog, Progress
from reprotrain.training.tasks import Task, build_task

METRICS_FILE = "metrics.jsonl"
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


def _prepare_fresh(run_dir: Path, overwrite: bool) -> None:
    if isinstance(run_dir, str):  # an object-store URL (reprotrain.integrations.objectstore)
        from reprotrain.integrations.objectstore import clear_for_fresh

        return clear_for_fresh(run_dir, overwrite=overwrite, marker=METRICS_FILE)
    if run_dir.exists() and any(run_dir.iterdir()):
        if not overwrite:
            raise ReprotrainError("run directory already holds a run; --fresh refuses to clobber it: add "
                                  "--overwrite to delete it, or choose another --run-dir", path=run_dir, exit_code=1)
        if not (run_dir / METRICS_FILE).exists():
            raise ReprotrainError(f"not a reprotrain run directory (no {METRICS_FILE}); refusing to delete it",
                                  path=run_dir, exit_code=1)
        shutil.rmtree(run_dir)


def _recorded_config(run_dir: Path, path: Path | None) -> dict | None:
    """The config stored in the checkpoint that resume will pick (None when there is none to resume)."""
    from reprotrain.checkpoint import reader, store

    if path is not None:
        return reader.read_info(path).manifest["config"]
    if not isinstance(run_dir, str) and not run_dir.is_dir():
        return None
    # Manifests only: mgr.resume re-hashes the file it loads (and falls back if it is damaged), so a full
    # read here would read a large checkpoint twice.
    entry = store.select_for_resume(store.list_checkpoints(run_dir), deep=False)
    return entry.info.manifest["config"] if entry is not None else None


def train(run_dir: str | os.PathLike = "runs/default", *, options: dict | None = None,
          config_file: str | os.PathLike | None = None, resume: bool | str | os.PathLike | None = None,
          fresh: bool = False, overwrite: bool = False, on_env_mismatch: str | None = None,
          policy: str | os.PathLike | None = None, quiet: bool = False, log=None) -> TrainResult:
    """Train, resuming the newest valid checkpoint of `run_dir` unless `fresh`.

    resume: None resumes if there is something to resume; True requires a checkpoint; a path resumes that file.
    options: explicit settings (TrainConfig field names); on resume they override the recorded config.
    Raises ReprotrainError (bad input, refused resume), checkpoint.Interrupted (SIGINT/SIGTERM, after saving)
    and TrainingFailed (after an emergency save).
    Under torchrun (docs/distributed.md) every rank calls it; only rank 0 writes.
    """
    from reprotrain.checkpoint import Interrupted

    group = distributed.Group() if distributed.launched() else None
    try:
        return _train(run_dir, options=options, config_file=config_file, resume=resume, fresh=fresh,
                      overwrite=overwrite, on_env_mismatch=on_env_mismatch, policy=policy, quiet=quiet, log=log,
                      group=group)
    except Interrupted:
        if group is not None:
            group.stop_on_sigterm_after_save()
        raise
    finally:
        if group is not None:
            group.close()


def _train(run_dir, *, options, config_file, resume, fresh, overwrite, on_env_mismatch, policy, quiet, log,
           group: distributed.Group | None) -> TrainResult:
    from reprotrain import fingerprint as fp
    from reprotrain.checkpoint import CheckpointManager, Interrupted, RetentionPolicy, SavePolicy

    from reprotrain.checkpoint.reader import as_location

    log = log or _stderr
    writer = group is None or group.is_writer
    speak = log
    manager_log = log if writer else (lambda message: speak(f"rank {group.rank}: {message}"))
    if not writer:
        log = lambda message: None  # noqa: E731 - rank 0 speaks for the run
    run_dir = as_location(run_dir)  # a Path, or an object-store URL
    if fresh and resume:
        raise ReprotrainError("--fresh and --resume exclude each other", path="--fresh")
    resume_path = None if resume in (None, True, False) else Path(resume)
    if fresh:
        if group is None:
            _prepare_fresh(run_dir, overwrite)
        else:
            group.together(lambda: _prepare_fresh(run_dir, overwrite) if writer else None, path=run_dir)
        recorded = None
    else:
        # The recorded config decides the model before anything is built; mgr.resume checks it again.
        recorded = _recorded_config(run_dir, resume_path)
    cfg = resolve(recorded, file=config_file, options=options)
    if recorded is not None:
        check_resume_config(recorded, cfg, checkpoint=os.fspath(resume_path or run_dir))

    torch.set_num_threads(cfg.threads)
    _seed_everything(cfg.seed)
    device = (group.device(cfg.device) if group is not None else None) or _pick_device(cfg.device)
    task = build_task(cfg)
    task.model.to(device)
    monitor = cfg.monitor if task.val_data is not None else None
    mgr = CheckpointManager(
        run_dir, task.model, optimizer=task.optimizer, scheduler=task.scheduler, config=cfg.to_dict(),
        save_policy=SavePolicy.parse(cfg.save),
        retention=RetentionPolicy(keep_last=cfg.keep_last, keep_best=cfg.keep_best, keep_every=cfg.keep_every),
        monitor=monitor, mode="max" if monitor and "acc" in monitor else "min",
        env_policy=fp.Policy.load(policy, on_mismatch=on_env_mismatch), log=manager_log,
        interrupt_exit_codes={"SIGINT": 130, "SIGTERM": cfg.sigterm_exit_code},
        world_size=group.world_size if group is not None else 1, should_write=writer, coordinator=group,
        # Routine saves are written by a background thread from a snapshot, so the training thread pays only
        # for the copy; interrupted and emergency saves stay synchronous.
        async_save=True)

    if group is None:
        info = None if fresh else mgr.resume(path=resume_path, required=resume is not None)
    else:
        group.check_fingerprints(mgr.fingerprint, mgr.env_policy, log=log, path=run_dir)
        info = None if fresh else group.resume(mgr, path=resume_path, required=resume is not None, where=run_dir)
    world_size = group.world_size if group is not None else 1
    sample = 0  # distributed runs: the offset into the epoch's permutation
    epoch, batch, step, samples_seen, metrics, changes = 0, 0, 0, 0, {}, []
    if info is not None:
        changes = check_resume_config(info.config or {}, cfg, checkpoint=os.fspath(info.path))
        epoch, batch = int(info.position["epoch"]), int(info.position["batch"])
        step, samples_seen, metrics = info.step, info.samples_seen, dict(info.metrics or {})
        if epoch >= cfg.epochs:
            log(f"the run has already completed {epoch} of {cfg.epochs} epochs: nothing to train "
                "(pass a larger --epochs to continue it)")
        else:
            log(f"continuing epoch {epoch + 1} of {cfg.epochs} at batch {batch}")
        for message in changes:
            log(message)
        sample = min(distributed.start_sample(info.position, cfg.batch_size), len(task.train_data))
        note = distributed.world_size_note(info.position, world_size=world_size, batch_size=cfg.batch_size,
                                           n=len(task.train_data))
        if note:
            log(note)
            changes.append(note)

    metrics_log = MetricsLog(mgr.run_dir.local_path(METRICS_FILE)) if writer else distributed.NoMetrics()
    if cfg.mlflow and writer:
        from reprotrain.integrations.mlflow_tracking import MLflowTracker, TrackedMetricsLog

        tracker = MLflowTracker(mgr, experiment=cfg.mlflow_experiment)
        log(f"MLflow run {tracker.start()} (experiment {cfg.mlflow_experiment!r})")
        metrics_log = TrackedMetricsLog(metrics_log, tracker)
    if info is None:
        metrics_log.write("start", config=cfg.to_dict(), world_size=world_size)
        ranks = f" x {world_size} ranks ({group.backend})" if group is not None else ""
        log(f"training {cfg.task} ({cfg.model}) for {cfg.epochs} epochs on {device}{ranks}; checkpoints and "
            f"{METRICS_FILE} go to {run_dir}. Stop any time (Ctrl-C); run the same command again to resume.")
    else:
        metrics_log.write("resume", checkpoint=os.fspath(info.path), epoch=epoch, batch=batch, step=step,
                          config_changes=changes, world_size=world_size)

    batches_per_epoch = data.EpochBatchSampler(len(task.train_data), cfg.batch_size, seed=cfg.seed,
                                               epoch=0).batches_per_epoch
    if group is not None:
        batches_per_epoch = math.ceil(len(task.train_data) / (cfg.batch_size * world_size))
        train_model = group.wrap(task.model, device)  # after resume: DDP starts from rank 0's weights
    else:
        train_model = task.model
    val = None
    if task.val_data is not None:
        val = data.val_loader(task.val_data, batch_size=VAL_BATCH_SIZE, num_workers=cfg.num_workers,
                              pin_memory=device.type == "cuda")
    status = "already-complete" if epoch >= cfg.epochs else "completed"
    progress = Progress(enabled=not quiet and writer, total_steps=cfg.epochs * batches_per_epoch, start_step=step)
    started, start_samples, non_finite = time.perf_counter(), samples_seen, None
    try:
        with mgr.guard():
            while epoch < cfg.epochs and non_finite is None:
                if group is None:
                    loader = data.train_loader(task.train_data, batch_size=cfg.batch_size, seed=cfg.seed,
                                               epoch=epoch, start_batch=batch, num_workers=cfg.num_workers,
                                               pin_memory=device.type == "cuda")
                else:
                    loader, sampler = distributed.train_loader(
                        task.train_data, batch_size=cfg.batch_size, seed=cfg.seed, epoch=epoch, start=sample,
                        rank=group.rank, world_size=world_size, num_workers=cfg.num_workers,
                        pin_memory=device.type == "cuda")
                    global_sizes = sampler.global_sizes()
                task.model.train()
                for inputs, targets in loader:
                    inputs, targets = inputs.to(device), targets.to(device)
                    if group is not None:
                        distributed.seed_step(cfg.seed, epoch, sample, group.rank)
                    task.optimizer.zero_grad(set_to_none=True)
                    loss = task.loss(train_model(inputs), targets)
                    loss_value = loss.item()
                    finite = math.isfinite(loss_value)
                    if group is not None and group.any(not finite):  # every rank stops at the same step
                        finite, loss_value = False, loss_value if not finite else float("nan")
                    if not finite:
                        # Stop before this step touches the weights: the state on disk stays the last good one.
                        non_finite = f"non-finite loss ({loss_value}) at epoch {epoch + 1}, batch {batch + 1}"
                        break
                    loss.backward()
                    task.optimizer.step()
                    if group is None:
                        step, batch, samples_seen = step + 1, batch + 1, samples_seen + len(targets)
                    else:
                        consumed = next(global_sizes)  # samples this step took from the permutation, all ranks
                        step, sample, samples_seen = step + 1, sample + consumed, samples_seen + consumed
                        batch = math.ceil(sample / cfg.batch_size)
                    rate = (samples_seen - start_samples) / max(time.perf_counter() - started, 1e-9)
                    if step % cfg.log_every == 0:
                        metrics_log.write("step", epoch=epoch, batch=batch, step=step, loss=loss_value,
                                          samples_per_s=round(rate, 1))
                    progress.update(step=step, epoch=epoch, loss=loss_value, samples_per_s=rate)
                    mgr.step_done(epoch=epoch, step=step, samples_seen=samples_seen,
                                  position={"epoch": epoch, "batch": batch} if group is None else
                                  distributed.position(epoch, sample, cfg.batch_size, world_size),
                                  metrics={"loss": loss_value})
                if non_finite is not None:
                    break
                metrics = evaluate(task, val, device) if val is not None else {}
                if task.scheduler is not None:
                    task.scheduler.step()
                epoch, batch, sample = epoch + 1, 0, 0
                metrics_log.write("epoch", epoch=epoch, step=step, **metrics)
                mgr.step_done(epoch=epoch, step=step, samples_seen=samples_seen,
                              position={"epoch": epoch, "batch": 0} if group is None else
                              distributed.position(epoch, 0, cfg.batch_size, world_size),
                              metrics=metrics, epoch_end=True)
        if non_finite is not None:
            mgr.emergency(non_finite, resumable=False)
            raise TrainingFailed(f"{non_finite}; saved an `emergency` checkpoint (not resumable) and kept the last "
                                 "good checkpoint: lower --lr or check the data, then resume", path=run_dir)
        mgr.finish(reason="completed", save=status == "completed" and cfg.save != "never")
        metrics_log.write("end", step=step, status=status)
    except Interrupted as exc:
        metrics_log.write("interrupted", step=step, signal=exc.signal_name,
                          checkpoint=os.fspath(exc.path) if exc.path else None)
        raise
    except (RuntimeError, OSError) as exc:
        metrics_log.write("error", step=step, error=f"{type(exc).__name__}: {exc}")
        raise TrainingFailed(f"training failed at epoch {epoch + 1}, step {step}: {type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else ''}; saved an `emergency` checkpoint and "
                             "kept the resumable ones", path=run_dir) from exc
    finally:
        progress.close()
        metrics_log.close()
        mgr.close()

    return TrainResult(run_dir=os.fspath(run_dir), status=status, config=cfg.to_dict(), epochs_completed=epoch,
                       step=step, samples_seen=samples_seen, metrics=metrics,
                       wall_time_s=round(time.perf_counter() - started, 3),
                       checkpoints_written=mgr.checkpoints_written, resumes=mgr.resumes,
                       resumed_from=os.fspath(info.path) if info is not None else None, config_changes=changes)
