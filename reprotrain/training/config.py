"""The training configuration: defaults < YAML file < command-line options, resolved to plain JSON types.

The resolved config is stored in every checkpoint. On resume the recorded config is the base, so running the
same short command again continues the same run; options given explicitly are compared with the recorded ones.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field, fields

from reprotrain.errors import ReprotrainError

# Changing any of these between segments changes parameter shapes, the data or the data order: a resumed run
# would no longer be the run that was started, so resuming with a different value is refused.
SHAPE_OR_DATA_FIELDS = ("task", "model", "data_dir", "batch_size", "seed")


@dataclass
class TrainConfig:
    """Everything that decides what a training run computes and how it is kept safe."""

    task: str = "digits"                 # built-in task name or `module:function`
    model: str = "cnn"                   # `cnn` (built-in small CNN) or a torchvision model name (resnet18, ...)
    data_dir: str | None = None          # dataset root for torchvision datasets and ImageFolder
    download: bool = False               # let torchvision download a missing dataset into data_dir
    epochs: int = 12
    batch_size: int = 32
    lr: float = 2e-3
    seed: int = 0
    num_workers: int = 0
    device: str = "auto"                 # auto | cpu | cuda | cuda:N | mps
    # CPU intra-op threads. Fixed rather than "all cores": CPU reductions can round differently with another
    # thread count, and a small model on a busy machine runs many times slower with threads competing for cores.
    threads: int = 1
    # Save policy (reprotrain.checkpoint.SavePolicy). Young/Daly: the interval follows the measured save cost for
    # a one-hour mean time between failures, so the overhead stays small for any model size.
    save: str = "adaptive:1h"
    keep_last: int = 2
    keep_best: int = 0                   # > 0 also saves a `best` checkpoint at every epoch end that improves
    keep_every: int | None = None
    monitor: str = "val_accuracy"        # metric for best-K retention and the `best` checkpoint
    log_every: int = 10                  # steps between metrics.jsonl step lines
    sigterm_exit_code: int = 143         # some schedulers requeue only on a particular exit code
    # MLflow tracking (optional extra). The tracking URI comes from MLFLOW_TRACKING_URI, never from the config,
    # so that credentials in it never reach a checkpoint.
    mlflow: bool = False
    mlflow_experiment: str = "reprotrain"
    extra: dict = field(default_factory=dict)  # free-form options passed through to user tasks

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


_FIELDS = {f.name: f for f in fields(TrainConfig)}


def _coerce(name: str, value, source: str):
    """Check and convert one value to the type of its field; `source` names the file or `--option` for errors."""
    default = getattr(TrainConfig(), name)
    if value is None:
        if name in ("data_dir", "keep_every"):
            return None
        raise ReprotrainError(f"{name} must not be empty", path=source)
    try:
        if isinstance(default, bool):
            if isinstance(value, bool):
                return value
            raise TypeError
        if isinstance(default, int) or name == "keep_every":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise TypeError
            return int(value)
        if isinstance(default, float):
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        if isinstance(default, dict):
            if not isinstance(value, dict):
                raise TypeError
            return dict(value)
        if isinstance(value, (dict, list, bool)):
            raise TypeError
        if name == "data_dir":
            return os.fspath(value)
        return str(value)
    except (TypeError, ValueError):
        kind = "mapping" if isinstance(default, dict) else type(default).__name__ if default is not None else "int"
        raise ReprotrainError(f"{name}: expected {kind}, got {value!r}", path=source) from None


def _validate(cfg: TrainConfig, source: str) -> TrainConfig:
    for name in ("epochs", "batch_size", "log_every", "threads"):
        if getattr(cfg, name) < 1:
            raise ReprotrainError(f"{name} must be at least 1, got {getattr(cfg, name)}", path=source)
    for name in ("num_workers", "keep_last", "keep_best"):
        if getattr(cfg, name) < 0:
            raise ReprotrainError(f"{name} must not be negative, got {getattr(cfg, name)}", path=source)
    if cfg.lr <= 0:
        raise ReprotrainError(f"lr must be positive, got {cfg.lr}", path=source)
    if not 1 <= cfg.sigterm_exit_code <= 255:
        raise ReprotrainError(f"sigterm_exit_code must be 1..255, got {cfg.sigterm_exit_code}", path=source)
    return cfg


def load_config_file(path: str | os.PathLike) -> dict:
    """Read a YAML config file into {field: value}; keys may use `-` or `_`. Unknown keys are an error."""
    import yaml

    try:
        with open(path, encoding="utf-8") as fh:
            doc = yaml.safe_load(fh)
    except OSError as exc:
        raise ReprotrainError(f"cannot read config file: {exc.strerror}", path=path) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ReprotrainError(f"not valid YAML{where}", path=path) from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise ReprotrainError("config file must be a mapping of option names to values", path=path)
    out = {}
    for key, value in doc.items():
        name = str(key).replace("-", "_")
        if name not in _FIELDS:
            known = ", ".join(sorted(_FIELDS))
            raise ReprotrainError(f"unknown option {key!r} (known: {known})", path=path)
        out[name] = _coerce(name, value, os.fspath(path))
    return out


def resolve(base: dict | None = None, *, file: str | os.PathLike | None = None,
            options: dict | None = None) -> TrainConfig:
    """Build the config: `base` (defaults, or the recorded config on resume) < `file` < explicit `options`."""
    merged = TrainConfig().to_dict()
    for name, value in (base or {}).items():
        if name in _FIELDS:  # a recorded config from a newer version may carry fields this one does not know
            merged[name] = _coerce(name, value, "recorded config")
    if file is not None:
        merged.update(load_config_file(file))
    for name, value in (options or {}).items():
        if name not in _FIELDS:
            raise ReprotrainError(f"unknown training option {name!r}")
        merged[name] = _coerce(name, value, "--" + name.replace("_", "-"))
    return _validate(TrainConfig(**merged), os.fspath(file) if file is not None else "options")


def config_changes(recorded: dict, live: TrainConfig) -> list[tuple[str, object, object]]:
    """[(field, recorded value, live value)] for every field that differs."""
    live_dict = live.to_dict()
    return [(name, recorded.get(name), live_dict[name]) for name in _FIELDS
            if name in recorded and recorded[name] != live_dict[name]]


def check_resume_config(recorded: dict, live: TrainConfig, *, checkpoint: str) -> list[str]:
    """Refuse a resume whose config changes shapes, data or data order; return messages for allowed changes."""
    changes = config_changes(recorded, live)
    refused = [c for c in changes if c[0] in SHAPE_OR_DATA_FIELDS]
    if refused:
        detail = "; ".join(f"{name}: {old!r} -> {new!r}" for name, old, new in refused)
        raise ReprotrainError(
            f"config change refused on resume ({detail}): these fields change shapes, the data or the data "
            "order; start a new run with --fresh (add --overwrite to replace this run) or use another --run-dir",
            path=checkpoint, exit_code=1)
    return [f"config changed on resume: {name}: {old!r} -> {new!r}" for name, old, new in changes]
