"""The training configuration: defaults < YAML file < command-line options, resolved to plain JSON types.

The resolved config is stored in every checkpoint. On resume the recorded config is the base, so running the
same short command again continues the same run; options given explicitly are compared with the recorded ones.

A checkpoint never chooses code: the fields that name code to import or build (CODE_FIELDS) come only from the
command line, the config file or the defaults. A recorded value that differs is a config change (refused: it
changes the model), reported before anything it names is imported.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field, fields

from reprotrain.errors import ReprotrainError

# Changing any of these between segments changes parameter shapes, the data or the data order: a resumed run
# would no longer be the run that was started, so resuming with a different value is refused.
SHAPE_OR_DATA_FIELDS = ("task", "model", "data_dir", "batch_size", "seed")
# Fields naming code (`task` may be module:function, imported; `model` picks a constructor): never read from a
# checkpoint, whose config is input like any file.
CODE_FIELDS = ("task", "model")
# Upper bounds keep a hostile or mistyped value from reaching torch as an absurd size (one line, exit 2).
_INT_LIMITS = {"epochs": (1, 10**9), "batch_size": (1, 2**31 - 1), "log_every": (1, 2**31 - 1), "threads": (1, 4096),
               "num_workers": (0, 4096), "keep_last": (0, 10**6), "keep_best": (0, 10**6), "keep_every": (1, 10**9),
               "seed": (-(2**63), 2**64 - 1), "sigterm_exit_code": (1, 255)}


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
    # Under torchrun: ddp (DistributedDataParallel, rank 0 writes one .pth) or fsdp (FSDP2 fully_shard, every rank
    # writes its shards into one sharded .dcp checkpoint; docs/distributed.md). Ignored by a single process.
    strategy: str = "ddp"
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
    # Weights & Biases tracking (optional extra). Credentials come from W&B's own login or environment, never
    # from the config.
    wandb: bool = False
    wandb_project: str = "reprotrain"
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
    except (TypeError, ValueError, OverflowError):  # OverflowError: an int too large for a float (lr: 1e400 as digits)
        kind = "mapping" if isinstance(default, dict) else type(default).__name__ if default is not None else "int"
        raise ReprotrainError(f"{name}: expected {kind}, got {value!r}", path=source) from None


def _validate(cfg: TrainConfig, source) -> TrainConfig:
    """Ranges and finiteness; ``source`` is a path, or a function naming where a field's value came from."""
    where = source if callable(source) else (lambda name: source)
    for name, (low, high) in _INT_LIMITS.items():
        value = getattr(cfg, name)
        if value is None:  # keep_every: off
            continue
        if value < low:
            rule = "must not be negative" if low == 0 else f"must be at least {low}"
            raise ReprotrainError(f"{name} {rule}, got {value}", path=where(name))
        if value > high:
            raise ReprotrainError(f"{name} must be at most {high}, got {value}", path=where(name))
    if cfg.strategy not in ("ddp", "fsdp"):
        raise ReprotrainError(f"strategy must be ddp or fsdp, got {cfg.strategy!r}", path=where("strategy"))
    if not math.isfinite(cfg.lr) or cfg.lr <= 0:
        raise ReprotrainError(f"lr must be a positive finite number, got {cfg.lr}", path=where("lr"))
    _check_finite(cfg.extra, "extra", where("extra"))
    return cfg


def _check_finite(value, where: str, source: str) -> None:
    """NaN and infinities are refused in free-form options too (JSON, metrics.jsonl and manifests cannot hold them)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ReprotrainError(f"{where} is {value}: non-finite numbers are not accepted", path=source)
    if isinstance(value, dict):
        for key, item in value.items():
            _check_finite(item, f"{where}.{key}", source)
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _check_finite(item, f"{where}[{index}]", source)


def load_config_file(path: str | os.PathLike) -> dict:
    """Read a YAML config file into {field: value}; keys may use `-` or `_`. Unknown keys are an error."""
    import yaml

    from reprotrain import safeio

    text = safeio.read_text(path, limit=safeio.LIMITS["config"], what="config file")  # regular files only
    try:
        doc = safeio.load_yaml(text)
    except RecursionError:
        raise ReprotrainError("not valid YAML (nested too deeply)", path=path) from None
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
            options: dict | None = None, recorded_source: str = "recorded config") -> TrainConfig:
    """Build the config: `base` (defaults, or the recorded config on resume) < `file` < explicit `options`.

    `base` is input (a checkpoint's config): its values are checked like any other (exit 2 naming
    `recorded_source`), and its CODE_FIELDS are never used.
    """
    merged = TrainConfig().to_dict()
    if base is not None and not isinstance(base, dict):
        raise ReprotrainError("recorded config is not a mapping", path=recorded_source)
    for name, value in (base or {}).items():
        # A recorded config from a newer version may carry fields this one does not know.
        if name in _FIELDS and name not in CODE_FIELDS:
            merged[name] = _coerce(name, value, recorded_source)
    if base is not None:
        _validate(TrainConfig(**merged), recorded_source)
    sources: dict[str, str] = {}
    if file is not None:
        from_file = load_config_file(file)
        merged.update(from_file)
        sources.update(dict.fromkeys(from_file, os.fspath(file)))
    for name, value in (options or {}).items():
        if name not in _FIELDS:
            raise ReprotrainError(f"unknown training option {name!r}")
        flag = "--" + name.replace("_", "-")
        merged[name] = _coerce(name, value, flag)
        sources[name] = flag
    return _validate(TrainConfig(**merged), lambda name: sources.get(name, "options"))


def config_changes(recorded: dict, live: TrainConfig) -> list[tuple[str, object, object]]:
    """[(field, recorded value, live value)] for every field that differs."""
    live_dict = live.to_dict()
    return [(name, recorded.get(name), live_dict[name]) for name in _FIELDS
            if name in recorded and recorded[name] != live_dict[name]]


def check_resume_config(recorded: dict, live: TrainConfig, *, checkpoint: str) -> list[str]:
    """Refuse a resume whose config changes shapes, data or data order; return messages for allowed changes."""
    changes = config_changes(recorded, live)
    refused = [c for c in changes if c[0] in SHAPE_OR_DATA_FIELDS]
    code = [name for name, _, _ in refused if name in CODE_FIELDS]
    if code:
        detail = "; ".join(f"{name}: {old!r} -> {new!r}" for name, old, new in refused)
        flags = " and ".join(f"--{name}" for name in code)
        raise ReprotrainError(
            f"config change refused on resume ({detail}): code locations ({', '.join(CODE_FIELDS)}) come only from "
            f"the command line or --config, never from a checkpoint; to continue this run, give the {flags} it was "
            "started with (only if you trust that code), or start a new run with --fresh",
            path=checkpoint, exit_code=1)
    if refused:
        detail = "; ".join(f"{name}: {old!r} -> {new!r}" for name, old, new in refused)
        raise ReprotrainError(
            f"config change refused on resume ({detail}): these fields change shapes, the data or the data "
            "order; start a new run with --fresh (add --overwrite to replace this run) or use another --run-dir",
            path=checkpoint, exit_code=1)
    return [f"config changed on resume: {name}: {old!r} -> {new!r}" for name, old, new in changes]
