"""The CheckpointManager's options, in one place (docs/library.md lists them)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping

from reprotrain.checkpoint.policies import RetentionPolicy, SavePolicy
from reprotrain.errors import ReprotrainError

if TYPE_CHECKING:  # pragma: no cover
    from reprotrain import fingerprint as fp
    from reprotrain.checkpoint.vote import Coordinator


@dataclass
class ManagerOptions:
    """Everything a CheckpointManager needs besides the run directory and the four standard objects.

    ``CheckpointManager(run_dir, model, ..., options=ManagerOptions(...))`` and the same names passed as keyword
    arguments (``CheckpointManager(run_dir, model, save_policy="steps:100")``) are equivalent.
    """

    extra_state: Mapping[str, Any] | None = None      # {name: obj with state_dict()/load_state_dict()}
    config: Mapping | None = None                     # plain values, stored in every manifest (secrets redacted)
    save_policy: SavePolicy | str | None = None       # default epochs:1
    retention: RetentionPolicy | None = None          # default keep the last 2 and the best 1
    monitor: str | None = None                        # metric that ranks `best` checkpoints
    mode: str = "max"                                 # min | max
    env_policy: "fp.Policy | None" = None             # default: the documented default table
    run_id: str | None = None
    log: Callable[[str], None] | None = None          # user-facing messages (default: stderr)
    quiet: bool = False                               # no "saved ..." line per routine save
    interrupt_exit_codes: Mapping[str, int] | None = None  # {"SIGINT": 130, "SIGTERM": 143}
    async_save: bool = False                          # routine saves written by a background thread
    lock_section: dict | None = None                  # the environment lock recorded in the fingerprint
    world_size: int = 1                               # distributed training (docs/distributed.md)
    should_write: bool = True
    coordinator: "Coordinator | None" = None
    signing_key: Any = None                           # signs every checkpoint written (docs/checkpoint-format.md)
    trusted_keys: Any = None                          # resume picks only checkpoints signed by one of them
    write_metrics: bool = True                        # append the metrics given to step_done to metrics.jsonl
    # The CLI's behaviour: a second SIGINT ends the process at once. In-process use (a notebook, your own
    # script) never force-exits the interpreter; there a second SIGINT raises KeyboardInterrupt.
    exit_on_second_interrupt: bool = False
    # Sharded checkpoints (FSDP2 and other DTensor models; docs/checkpoint-format.md section 8): every rank calls the
    # manager, model and optimizer state go through torch.distributed.checkpoint, each rank writes its shards into one
    # `.dcp` directory committed as a unit. Rank and world size come from the initialised process group.
    sharded: bool = False

    def __post_init__(self):
        if self.mode not in ("min", "max"):
            raise ReprotrainError(f"monitor mode must be 'min' or 'max', not {self.mode!r}")

    @classmethod
    def build(cls, options: "ManagerOptions | None", keywords: Mapping[str, Any]) -> "ManagerOptions":
        """``options`` updated by keyword arguments (the constructor's older form); unknown names fail like Python."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(keywords) - known)
        if unknown:
            raise TypeError(f"CheckpointManager() got an unexpected keyword argument {unknown[0]!r}")
        if options is None:
            return cls(**keywords)
        return dataclasses.replace(options, **keywords) if keywords else options
