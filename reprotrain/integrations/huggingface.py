"""Hugging Face Trainer: each ``checkpoint-N/`` sealed as a reprotrain checkpoint, resume from the newest valid one.

    from reprotrain.integrations.huggingface import ReprotrainCallback

    callback = ReprotrainCallback()
    trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[callback])
    trainer.train(resume_from_checkpoint=callback.resume_checkpoint(args.output_dir))
    callback.exit_if_interrupted()            # 130 after SIGINT, 143 after SIGTERM, once the checkpoint is sealed

* ``on_save`` seals the directory the Trainer has just written with ``reprotrain-manifest.json`` (fingerprint,
  lineage, a SHA-256 per file; reprotrain.checkpoint.sealed), written last: a directory without it is not resumed.
* ``resume_checkpoint(output_dir)`` returns the newest *valid* sealed directory (every file re-hashed; damaged or
  unsealed newer ones are reported and skipped, unlike ``resume_from_checkpoint=True``), after the environment
  gate: a refused environment raises EnvironmentRefused (exit code 1).
* SIGINT/SIGTERM during ``train()``: the step in flight finishes, the Trainer saves ``checkpoint-N/``, it is sealed
  as ``interrupted`` (lineage end ``interrupted`` / ``preempted``) and training stops.

transformers is imported only by this module (``reprotrain --help`` never imports it). docs/huggingface.md.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Mapping

from transformers import TrainerCallback

from reprotrain import fingerprint as fp
from reprotrain.checkpoint import reader, sealed, store
from reprotrain.checkpoint.guard import StopRequest
from reprotrain.errors import ReprotrainError
from reprotrain.integrations.history import EXIT_CODES, SIGNAL_END_REASON, RunHistory, stderr_log


def newest_valid_checkpoint(output_dir: str | os.PathLike, *, history: RunHistory | None = None,
                            env_policy: "fp.Policy | None" = None, log: Callable[[str], None] | None = None):
    """The newest sealed, intact, resumable checkpoint directory under ``output_dir`` (a str, for
    ``resume_from_checkpoint``), gated by the environment policy; None when there is none.

    ``history``: continue its lineage from the chosen checkpoint (the callback passes its own).
    """
    log = log or stderr_log
    if not os.path.isdir(output_dir):
        return None
    history = history or RunHistory(env_policy=env_policy, log=log)
    entries = [e for e in store.list_checkpoints(output_dir, frameworks=True) if e.path.is_dir()]
    chosen = store.select_for_resume(entries, report=log)
    if chosen is None:
        return None
    history.gate(chosen.info.manifest, chosen.path)
    history.adopt(chosen.info.manifest, chosen.path)
    log(f"resuming from {chosen.path} ({chosen.info.manifest['kind']}, step {chosen.info.manifest['step']})")
    return os.fspath(chosen.path)


class ReprotrainCallback(TrainerCallback):
    """Seal every checkpoint the Trainer writes; turn SIGINT/SIGTERM into a sealed `interrupted` checkpoint."""

    def __init__(self, *, env_policy: "fp.Policy | None" = None, config: Mapping | None = None,
                 log: Callable[[str], None] | None = None, handle_signals: bool = True,
                 exit_codes: Mapping[str, int] | None = None):
        self.log = log or stderr_log
        self.history = RunHistory(env_policy=env_policy, config=config, log=self.log)
        self.handle_signals = handle_signals
        self.exit_codes = {**EXIT_CODES, **dict(exit_codes or {})}
        self.stopped_by: str | None = None  # SIGINT / SIGTERM once an interrupted checkpoint was sealed
        self.last_sealed: Path | None = None
        self.trackers: list = []  # e.g. a WandbTracker: told about segments and saves
        self._signals = StopRequest(self.log)
        self._resumed = False

    # ------------------------------------------------------------------ resume
    def resume_checkpoint(self, output_dir: str | os.PathLike):
        """The directory to pass as ``trainer.train(resume_from_checkpoint=...)``, or None for a fresh start."""
        found = newest_valid_checkpoint(output_dir, history=self.history, log=self.log)
        self._resumed = found is not None
        return found

    # ------------------------------------------------------------------ Trainer events
    def on_train_begin(self, args, state, control, **kwargs):
        if not self._resumed and state.global_step > 0:
            # Resumed without resume_checkpoint(): take the history from the directory the Trainer loaded.
            candidate = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if sealed.is_sealed(candidate):
                info = reader.read_info(candidate)
                self.history.gate(info.manifest, candidate)
                self.history.adopt(info.manifest, candidate)
        for tracker in self.trackers:
            tracker.start()
        if self.handle_signals:
            self._signals.install()

    def on_step_end(self, args, state, control, **kwargs):
        if self._signals.pending is not None:
            control.should_save = True
            control.should_training_stop = True
        return control

    def on_epoch_end(self, args, state, control, **kwargs):
        if self.stopped_by is not None:  # already saved at this step: no second save of the same directory
            control.should_save = False
            control.should_evaluate = False
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        for tracker in self.trackers:
            tracker.log_metrics(state.global_step, dict(logs or {}))

    def on_save(self, args, state, control, **kwargs):
        directory = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if not args.should_save or not directory.is_dir():
            return control
        pending = self._signals.pending
        if pending is not None:
            kind, end, reason = "interrupted", SIGNAL_END_REASON[pending], f"received {pending}"
        else:
            done = state.max_steps and state.global_step >= state.max_steps
            kind, end, reason = "latest", "completed" if done else "running", None
        metrics = next((dict(e) for e in reversed(state.log_history) if "loss" in e), {})
        manifest = self.history.manifest(kind, step=state.global_step, epoch=int(state.epoch or 0),
                                         samples_seen=int(state.global_step * args.train_batch_size
                                                          * args.gradient_accumulation_steps),
                                         end_reason=end, reason=reason, metrics=metrics,
                                         position={"epoch": int(state.epoch or 0), "trainer_epoch": float(state.epoch or 0)})
        try:
            sealed.seal(directory, manifest)
        except ReprotrainError as exc:
            self.log(f"could not seal {directory}: {exc.message}")
            raise
        self.last_sealed = directory
        for tracker in self.trackers:
            tracker.checkpoint(directory, kind)
        if pending is not None:
            self.stopped_by = pending
            self.log(f"{pending}: saved {directory}; training stops")
            for tracker in self.trackers:
                tracker.end(end)
        return control

    def on_train_end(self, args, state, control, **kwargs):
        self._signals.restore()
        if self.stopped_by is None:
            for tracker in self.trackers:
                tracker.end("completed")

    # ------------------------------------------------------------------ after train()
    @property
    def exit_code(self) -> int:
        return self.exit_codes[self.stopped_by] if self.stopped_by else 0

    def exit_if_interrupted(self) -> None:
        """SystemExit(130 / 143) when training stopped on a signal (the checkpoint is sealed by then)."""
        if self.stopped_by is not None:
            self.log(f"stopped by {self.stopped_by} (saved {self.last_sealed}); run the same command again to resume")
            raise SystemExit(self.exit_code)
