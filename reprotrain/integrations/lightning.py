"""Lightning: reprotrain checkpoints through a CheckpointIO plugin, a safe ``ckpt_path="last"``, signals saved.

    from reprotrain.integrations.lightning import ReprotrainCheckpointIO, ReprotrainModelCheckpoint

    checkpoint = ReprotrainModelCheckpoint(dirpath="runs/x", save_last=True, every_n_train_steps=50)
    trainer = L.Trainer(callbacks=[checkpoint], plugins=[ReprotrainCheckpointIO()])
    trainer.fit(model, ckpt_path="last")   # the newest *valid* checkpoint, environment-gated; None: a fresh start

* ``ReprotrainCheckpointIO`` writes every checkpoint Lightning saves as a reprotrain checkpoint (the same
  ``.ckpt`` name; docs/checkpoint-format.md): fingerprint, lineage, integrity trailer, atomic commit, any store
  (local or an fsspec URL, through reprotrain.checkpoint.store). Loading re-checks every byte, applies the
  environment policy (a refused environment raises EnvironmentRefused, exit 1) and continues the lineage. The
  Lightning dictionary is converted to plain values (dict subclasses such as AttributeDict become dicts, numpy
  scalars numbers, paths strings); anything else (a class instance in ``hyper_parameters`` or in a callback's state)
  is refused with one line naming its key: nothing is ever pickled.
* ``ReprotrainModelCheckpoint`` is a ModelCheckpoint whose ``ckpt_path="last"`` resolves to the newest valid
  resumable checkpoint of its directory (damaged newer files are reported and skipped; Lightning alone takes the
  newest ``last*.ckpt`` by modification time). SIGINT/SIGTERM during fit: the batch in flight finishes, an
  ``interrupted`` checkpoint is committed (lineage end ``interrupted`` / ``preempted``) and the process exits 130 /
  143. The end of fit writes ``last.ckpt`` with the lineage end ``completed``.

Lightning is imported only by this module (``reprotrain --help`` never imports it). docs/lightning.md.
"""

from __future__ import annotations

import enum
import os
from collections import OrderedDict
from pathlib import PurePath
from typing import Any, Callable, Mapping

import torch

# The unified `lightning` package (`import lightning as L`). Callbacks and plugins must come from the package the
# Trainer comes from: with the standalone `pytorch_lightning`, use its Trainer's classes (not supported here).
from lightning.fabric.plugins.io.checkpoint_io import CheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint

from reprotrain import fingerprint as fp
from reprotrain.checkpoint import format as ckformat, reader, rng, state as ckstate, store
from reprotrain.checkpoint.manifest import NotACheckpoint
from reprotrain.checkpoint.guard import StopRequest
from reprotrain.checkpoint.manager import Interrupted
from reprotrain.checkpoint.state import UnsafeState
from reprotrain.errors import ReprotrainError
from reprotrain.integrations.history import EXIT_CODES, SIGNAL_END_REASON, RunHistory, stderr_log

_PLAIN_LEAVES = (str, int, float, bool, type(None), bytes, complex, torch.dtype, torch.device, torch.Size)


def to_plain(value: Any, where: str = "checkpoint") -> Any:
    """A copy of ``value`` that the weights-only unpickler reads back: tensors, plain containers and numbers.

    Converted: dict subclasses (AttributeDict, defaultdict) to dict, list/tuple subclasses other than named tuples to
    list/tuple, numpy scalars to numbers, paths to strings, plain-valued enums to their value. Anything else raises
    UnsafeState naming the key, e.g. ``checkpoint['hyper_parameters']['loss'] is a torch.nn...CrossEntropyLoss``.
    """
    if isinstance(value, torch.Tensor):
        if type(value) is torch.Tensor or isinstance(value, torch.nn.Parameter):
            return value.detach() if isinstance(value, torch.nn.Parameter) else value
        raise UnsafeState(f"{where} is a {type(value).__name__} (a tensor subclass); store a plain tensor")
    if type(value) in _PLAIN_LEAVES:
        return value
    if isinstance(value, enum.Enum) and type(value.value) in (str, int, float, bool):
        return value.value
    if isinstance(value, (str, int, float, bool)) and not isinstance(value, enum.Enum):
        return _base(value)(value)  # a subclass (numpy.str_, TorchVersion) pickles as its own class
    if isinstance(value, PurePath):
        return str(value)
    if type(value).__module__ == "numpy":
        import numpy as np

        if isinstance(value, np.generic) and value.shape == ():
            return value.item()
    if isinstance(value, Mapping):
        out = OrderedDict() if isinstance(value, OrderedDict) else {}
        for key, item in value.items():
            if type(key) not in (str, int, float, bool, type(None)):
                key = to_plain(key, f"{where} key {key!r}")
                if type(key) not in (str, int, float, bool, type(None)):
                    raise UnsafeState(f"{where} has a key of type {type(key).__name__}; use str or int keys")
            out[key] = to_plain(item, f"{where}[{key!r}]")
        return out
    if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
        items = [to_plain(item, f"{where}[{i}]") for i, item in enumerate(value)]
        return items if isinstance(value, list) else tuple(items)
    raise UnsafeState(f"{where} is a {type(value).__module__}.{type(value).__qualname__} instance; checkpoints hold "
                      "only tensors and plain values (save_hyperparameters(ignore=[...]) or convert it)")


def _base(value) -> type:
    for kind in (bool, int, float, str):
        if isinstance(value, kind):
            return kind
    raise TypeError(type(value))


def _split(path) -> tuple[str, str]:
    text = os.fspath(path)
    if reader.is_url(text):
        parent, _, name = text.rstrip("/").rpartition("/")
        return parent, name
    return os.path.dirname(os.path.abspath(text)), os.path.basename(text)


def newest_valid_checkpoint(dirpath, *, log: Callable[[str], None] | None = None) -> str | None:
    """The newest intact, resumable reprotrain checkpoint in ``dirpath`` (every byte re-checked), or None."""
    log = log or stderr_log
    if not reader.is_url(os.fspath(dirpath)) and not os.path.isdir(dirpath):
        return None
    entries = [e for e in store.list_checkpoints(dirpath, frameworks=True)
               if not (e.path.is_local and e.path.is_dir())]
    chosen = store.select_for_resume(entries, report=log)
    return str(chosen.path) if chosen is not None else None


class ReprotrainCheckpointIO(CheckpointIO):
    """Lightning's checkpoint files written and read as reprotrain checkpoints (see the module docstring)."""

    def __init__(self, *, env_policy: "fp.Policy | None" = None, config: Mapping | None = None,
                 log: Callable[[str], None] | None = None):
        self.log = log or stderr_log
        self.history = RunHistory(env_policy=env_policy, config=config, log=self.log)
        self.trackers: list = []
        self._next: tuple[str, str, str | None] | None = None  # (kind, end reason, reason) of the next save only
        self._dirs: dict[str, Any] = {}
        self.last_saved: str | None = None

    def mark_next_save(self, kind: str, end_reason: str, reason: str | None = None) -> None:
        """The next save is of this kind and closes the lineage segment with this end reason."""
        self._next = (kind, end_reason, reason)

    def _run_dir(self, parent: str):
        run_dir = self._dirs.get(parent)
        if run_dir is None:
            run_dir = store.open_run_directory(parent, log=self.log)
            run_dir.acquire()
            self._dirs[parent] = run_dir
        return run_dir

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        kind, end_reason, reason = self._next or ("latest", "running", None)
        self._next = None
        lightning = {k: v for k, v in checkpoint.items() if k not in ("state_dict", "optimizer_states")}
        state = {"model": to_plain(checkpoint.get("state_dict", {}), "checkpoint['state_dict']"),
                 "optimizer": to_plain(checkpoint.get("optimizer_states", []), "checkpoint['optimizer_states']"),
                 "extra": {"lightning": to_plain(lightning, "checkpoint")}, "rng": rng.capture()}
        ckstate.check_tree(state)
        records, nbytes = ckstate.tensor_stats(state)
        step = int(checkpoint.get("global_step", 0))
        manifest = self.history.manifest(kind, step=step, epoch=int(checkpoint.get("epoch", 0)),
                                         end_reason=end_reason, reason=reason,
                                         position={"epoch": int(checkpoint.get("epoch", 0)), "global_step": step},
                                         state={"components": sorted(state), "tensor_records": records,
                                                "tensor_bytes": nbytes},
                                         torch_version=str(torch.__version__))
        parent, name = _split(path)
        committed = self._run_dir(parent).commit(name, lambda f: ckformat.write(f, manifest, state))
        self.last_saved = os.fspath(committed)
        for tracker in self.trackers:
            tracker.checkpoint(self.last_saved, kind)

    def load_checkpoint(self, path, map_location: Any | None = None, weights_only: bool | None = None) -> dict:
        with reader.open_checkpoint(path) as opened:
            manifest = opened.info.manifest
            self.history.gate(manifest, opened.info.path)
            # Every byte checked against the integrity trailer while it is loaded (one pass over the file).
            obj = ckstate.load(opened, map_location=map_location or "cpu", verify=True)
        state = obj["state"]
        if "lightning" not in state.get("extra", {}):
            raise NotACheckpoint("a reprotrain checkpoint, but not one written by Lightning "
                                        "(no state['extra']['lightning'])", path=path, exit_code=2)
        self.history.adopt(manifest, path)
        for note in rng.restore(state.get("rng", {})):
            self.log(note)
        self.log(f"resuming from {path} ({manifest['kind']}, epoch {manifest['epoch']}, step {manifest['step']})")
        return {**state["extra"]["lightning"], "state_dict": state["model"], "optimizer_states": state["optimizer"]}

    def remove_checkpoint(self, path) -> None:
        parent, name = _split(path)
        run_dir = self._dirs.get(parent)
        if run_dir is not None:
            run_dir.delete(name)
        elif not reader.is_url(os.fspath(path)):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

    def teardown(self) -> None:
        dirs, self._dirs = self._dirs, {}
        for run_dir in dirs.values():
            run_dir.release()


class ReprotrainModelCheckpoint(ModelCheckpoint):
    """ModelCheckpoint with a safe ``ckpt_path="last"`` and signals turned into `interrupted` checkpoints.

    If the Trainer has no ReprotrainCheckpointIO, one is installed at setup (with ``env_policy`` and ``config``).
    """

    def __init__(self, *args, env_policy: "fp.Policy | None" = None, config: Mapping | None = None,
                 log: Callable[[str], None] | None = None, handle_signals: bool = True,
                 exit_codes: Mapping[str, int] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._log = log or stderr_log
        self._env_policy, self._config = env_policy, config
        self.handle_signals = handle_signals
        self.exit_codes = {**EXIT_CODES, **dict(exit_codes or {})}
        self.trackers: list = []
        self.io: ReprotrainCheckpointIO | None = None
        self._signals = StopRequest(self._log, unit="batch")

    # ------------------------------------------------------------------ resume
    def _find_last_checkpoints(self, trainer) -> set[str]:
        dirpath = self.dirpath or self._ModelCheckpoint__resolve_ckpt_dir(trainer)
        found = newest_valid_checkpoint(dirpath, log=self._log)
        return {found} if found else set()

    def setup(self, trainer, pl_module, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        io = trainer.strategy.checkpoint_io
        if not isinstance(io, ReprotrainCheckpointIO):
            io = ReprotrainCheckpointIO(env_policy=self._env_policy, config=self._config, log=self._log)
            trainer.strategy.checkpoint_io = io
        self.io = io
        io.trackers = self.trackers

    # ------------------------------------------------------------------ signals
    def on_train_start(self, trainer, pl_module) -> None:
        for tracker in self.trackers:
            tracker.start()
        if self.handle_signals:
            self._signals.install()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        for tracker in self.trackers:
            tracker.log_metrics(trainer.global_step, {k: v for k, v in trainer.callback_metrics.items()})
        name = self._signals.pending
        if name is None:
            return
        path = os.path.join(self.dirpath, f"step{trainer.global_step:010d}-interrupted{self.FILE_EXTENSION}") \
            if not reader.is_url(os.fspath(self.dirpath)) else \
            f"{os.fspath(self.dirpath).rstrip('/')}/step{trainer.global_step:010d}-interrupted{self.FILE_EXTENSION}"
        self.io.mark_next_save("interrupted", SIGNAL_END_REASON[name], f"received {name}")
        trainer.save_checkpoint(path)
        self._signals.restore()
        for tracker in self.trackers:
            tracker.end(SIGNAL_END_REASON[name])
        self._log(f"{name}: saved {path}; training stops (Interrupted, exit code {self.exit_codes[name]} when "
                  "uncaught); run it again to resume from there")
        raise Interrupted(name, self.exit_codes[name], path)

    def on_train_end(self, trainer, pl_module) -> None:
        super().on_train_end(trainer, pl_module)
        self._signals.restore()
        if self.io is not None and trainer.global_step > 0 and self.save_last:
            self.io.mark_next_save("latest", "completed")
            path = self.format_checkpoint_name({}, self.CHECKPOINT_NAME_LAST)
            trainer.save_checkpoint(path)
            self.last_model_path = path
        for tracker in self.trackers:
            tracker.end("completed")

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._signals.restore()


__all__ = ["ReprotrainCheckpointIO", "ReprotrainModelCheckpoint", "newest_valid_checkpoint", "to_plain",
           "ReprotrainError"]
