"""Accelerate: ``save_state`` directories sealed as reprotrain checkpoints, ``load_state`` gated through its hook.

    from reprotrain.integrations.accelerate import ReprotrainAccelerate

    accelerator = Accelerator()
    model, optimizer = accelerator.prepare(model, optimizer)
    rt = ReprotrainAccelerate(accelerator, "runs/x", save_every=50)
    resumed = rt.resume()                       # newest valid sealed checkpoint_N/, environment-gated, or None
    with rt.guard():                            # SIGINT/SIGTERM -> a sealed `interrupted` checkpoint, exit 130/143
        for ...:
            ...
            rt.step_done(step=step, epoch=epoch, position={"epoch": epoch, "batch": batch})
    rt.finish(step=step, epoch=epoch)

* A load-state pre-hook (``accelerator.register_load_state_pre_hook``) refuses any ``load_state`` of a directory
  that is not sealed, is damaged (every file re-hashed) or was written in an environment the policy refuses; it
  runs before Accelerate unpickles anything from the directory.
* A save-state pre-hook records the directory ``save_state`` writes; ``save()`` seals it right after with
  ``reprotrain-manifest.json`` (fingerprint, lineage, a SHA-256 per file; reprotrain.checkpoint.sealed).
* Retention keeps the newest ``keep_last`` sealed directories; removal unseals first, so a crash while deleting
  leaves a directory that resume ignores.

accelerate is imported only by the caller (this module never imports it). docs/huggingface.md.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

from reprotrain import fingerprint as fp
from reprotrain.checkpoint import sealed, store
from reprotrain.checkpoint.guard import StopRequest
from reprotrain.checkpoint.manager import Interrupted
from reprotrain.errors import ReprotrainError
from reprotrain.integrations.history import EXIT_CODES, SIGNAL_END_REASON, RunHistory, stderr_log

_NAME = re.compile(r"checkpoint_(\d+)")


@dataclass
class Resumed:
    path: Path
    kind: str
    step: int
    epoch: int
    position: dict
    metrics: dict


class ReprotrainAccelerate:
    """Bind an Accelerator to a run directory of sealed ``checkpoint_<step>/`` directories."""

    def __init__(self, accelerator, run_dir: str | os.PathLike, *, save_every: int | None = None,
                 keep_last: int = 3, env_policy: "fp.Policy | None" = None, config: Mapping | None = None,
                 log: Callable[[str], None] | None = None, exit_codes: Mapping[str, int] | None = None):
        self.accelerator = accelerator
        self.run_dir = Path(run_dir)
        self.save_every, self.keep_last = save_every, keep_last
        self.log = log or stderr_log
        self.history = RunHistory(env_policy=env_policy, config=config, log=self.log,
                                  world_size=getattr(accelerator, "num_processes", 1))
        self.exit_codes = {**EXIT_CODES, **dict(exit_codes or {})}
        self.trackers: list = []
        self.last_saved: Path | None = None
        self._saving: str | None = None
        self._verified: set[str] = set()
        self._signals = StopRequest(self.log)
        accelerator.register_save_state_pre_hook(self._save_pre_hook)
        accelerator.register_load_state_pre_hook(self._load_pre_hook)

    # ------------------------------------------------------------------ Accelerate hooks
    def _save_pre_hook(self, models, weights, output_dir) -> None:
        self._saving = os.fspath(output_dir)

    def _load_pre_hook(self, models, input_dir) -> None:
        """Before Accelerate reads a byte of ``input_dir``: sealed, intact, environment allowed; lineage adopted."""
        key = os.path.realpath(input_dir)
        if key in self._verified:
            return
        info = sealed.read_info(input_dir, check_integrity=True)
        self.history.gate(info.manifest, Path(input_dir))
        self.history.adopt(info.manifest, input_dir)

    # ------------------------------------------------------------------ resume
    def newest_valid(self) -> Path | None:
        if not self.run_dir.is_dir():
            return None
        entries = [e for e in store.list_checkpoints(self.run_dir, frameworks=True) if e.path.is_dir()]
        chosen = store.select_for_resume(entries, report=self.log)
        return chosen.path if chosen is not None else None

    def resume(self, path: str | os.PathLike | None = None) -> Resumed | None:
        """Load the newest valid sealed directory (or ``path``) with ``accelerator.load_state``; None if none."""
        target = Path(path) if path is not None else self.newest_valid()
        if target is None:
            return None
        info = sealed.read_info(target, check_integrity=True)
        self.history.gate(info.manifest, target)
        self.history.adopt(info.manifest, target)
        self._verified.add(os.path.realpath(target))
        try:
            self.accelerator.load_state(os.fspath(target))
        finally:
            self._verified.discard(os.path.realpath(target))
        m = info.manifest
        self.log(f"resuming from {target} ({m['kind']}, epoch {m['epoch']}, step {m['step']})")
        return Resumed(target, m["kind"], m["step"], m["epoch"], dict(m["position"]), dict(m["metrics"]))

    # ------------------------------------------------------------------ saving
    def save(self, *, step: int, epoch: int, position: Mapping | None = None, metrics: Mapping | None = None,
             kind: str = "latest", end_reason: str = "running", reason: str | None = None) -> Path | None:
        """``accelerator.save_state`` into ``run_dir/checkpoint_<step>``, then seal it (main process)."""
        target = self.run_dir / f"checkpoint_{step}"
        if target.exists() and self.accelerator.is_main_process:
            self._remove(target)  # an older (unsealed, or superseded at the same step) save of this step
        self.accelerator.wait_for_everyone()
        self._saving = None
        self.accelerator.save_state(os.fspath(target))
        written = Path(self._saving or target)
        if not self.accelerator.is_main_process:
            return None
        manifest = self.history.manifest(kind, step=step, epoch=epoch, end_reason=end_reason, reason=reason,
                                         metrics=metrics, position=position)
        sealed.seal(written, manifest)
        self.last_saved = written
        for tracker in self.trackers:
            tracker.checkpoint(written, kind)
        self._retain()
        return written

    def _remove(self, directory: Path) -> None:
        try:
            (directory / sealed.SIDECAR).unlink()  # unsealed first: a crash below leaves a directory resume ignores
        except FileNotFoundError:
            pass
        shutil.rmtree(directory, ignore_errors=True)

    def _retain(self) -> None:
        if not self.keep_last:
            return
        dirs = sorted((d for d in self.run_dir.iterdir() if _NAME.fullmatch(d.name) and sealed.is_sealed(d)),
                      key=lambda d: int(_NAME.fullmatch(d.name).group(1)))
        for directory in dirs[:-self.keep_last]:
            self._remove(directory)

    # ------------------------------------------------------------------ loop helpers
    @contextlib.contextmanager
    def guard(self):
        """SIGINT/SIGTERM become an `interrupted` checkpoint at the next step_done; a second SIGINT raises
        KeyboardInterrupt at once, without a save (checkpoint.guard.StopRequest). The handlers are restored however
        the block ends."""
        self._signals.install()
        for tracker in self.trackers:
            tracker.start()
        try:
            yield self
        finally:
            self._signals.restore()

    def step_done(self, *, step: int, epoch: int, position: Mapping | None = None,
                  metrics: Mapping | None = None) -> Path | None:
        """Log metrics to trackers; save every ``save_every`` steps; after a signal save `interrupted` and exit."""
        for tracker in self.trackers:
            tracker.log_metrics(step, dict(metrics or {}))
        name = self._signals.pending
        if name is not None:
            path = self.save(step=step, epoch=epoch, position=position, metrics=metrics, kind="interrupted",
                             end_reason=SIGNAL_END_REASON[name], reason=f"received {name}")
            for tracker in self.trackers:
                tracker.end(SIGNAL_END_REASON[name])
            self.log(f"{name}: saved {path}; training stops (Interrupted, exit code {self.exit_codes[name]} when "
                     "uncaught); run it again to resume from there")
            raise Interrupted(name, self.exit_codes[name], path)
        if self.save_every and step % self.save_every == 0:
            return self.save(step=step, epoch=epoch, position=position, metrics=metrics)
        return None

    def finish(self, *, step: int, epoch: int, position: Mapping | None = None,
               metrics: Mapping | None = None) -> Path | None:
        """The final checkpoint, its lineage segment closed as `completed`."""
        if self.last_saved is not None and self.last_saved.name == f"checkpoint_{step}":
            # Nothing trained since that save: seal it again as the end of the segment instead of writing it twice.
            path = self.last_saved
            sealed.seal(path, self.history.manifest("latest", step=step, epoch=epoch, end_reason="completed",
                                                    metrics=metrics, position=position))
        else:
            path = self.save(step=step, epoch=epoch, position=position, metrics=metrics, end_reason="completed")
        for tracker in self.trackers:
            tracker.end("completed")
        return path


__all__ = ["ReprotrainAccelerate", "Resumed", "ReprotrainError"]
