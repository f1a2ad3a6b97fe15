"""Distributed data-parallel training under torchrun (docs/distributed.md).

torchrun starts one process per rank with RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT set; `train()`
sees them and runs DistributedDataParallel. Here:

- the process group: gloo for CPU tensors, and nccl for CUDA tensors when CUDA is available (one group, both
  backends), so the small control messages below never touch a GPU;
- the fingerprint of every rank is gathered and compared with rank 0's under the resume policy;
- the checkpoint manager's coordinator: a signal received by ANY rank stops all ranks at the same step boundary
  (a tiny all-reduce each step), rank 0's save decision is everyone's, and a save is committed only when every
  rank votes for it (rank 0 writes; the others never touch the run directory);
- the data order: one permutation of the training set per (seed, epoch), cut into global batches of
  `batch_size * world_size` samples; rank r takes the r-th `batch_size` slice of each. The position saved is the
  sample offset into the permutation, so a resume at any world size continues the same epoch order with no sample
  skipped or repeated.
"""

from __future__ import annotations

import datetime
import math
import os
import signal
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Sampler

from reprotrain import fingerprint as fp
from reprotrain.checkpoint import process_exit
from reprotrain.errors import EnvironmentRefused, ReprotrainError
from reprotrain.training import data

LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
_SIGNAL_CODES = {None: 0, "SIGINT": 1, "SIGTERM": 2}  # SIGTERM wins: it asks for the larger exit code
_SIGNAL_NAMES = {code: name for name, code in _SIGNAL_CODES.items()}


def launched() -> bool:
    """True in a process started by torchrun (or any launcher that sets the same variables)."""
    return all(os.environ.get(name) for name in LAUNCH_VARIABLES)


class Group:
    """This process's place in the run: rank, world size, device; and the collectives the loop needs."""

    def __init__(self, timeout_s: float | None = None):
        try:
            self.rank = int(os.environ["RANK"])
            self.world_size = int(os.environ["WORLD_SIZE"])
            self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        except ValueError:
            raise ReprotrainError("RANK, WORLD_SIZE and LOCAL_RANK must be integers", path="torchrun environment") \
                from None
        self.cuda = torch.cuda.is_available()
        if self.cuda:
            torch.cuda.set_device(self.local_rank % torch.cuda.device_count())
        self.backend = "cpu:gloo,cuda:nccl" if self.cuda else "gloo"
        kwargs = {"timeout": datetime.timedelta(seconds=timeout_s)} if timeout_s else {}
        # torchrun keeps one store across restarts of the group: without a per-attempt prefix a restarted rank can
        # read the address a killed rank published and fail to connect to it.
        store, _, _ = next(dist.rendezvous("env://"))
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        dist.init_process_group(self.backend, store=dist.PrefixStore(f"reprotrain/attempt{attempt}", store),
                                rank=self.rank, world_size=self.world_size, **kwargs)

    @property
    def is_writer(self) -> bool:
        return self.rank == 0

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()
        process_exit.quiesce()  # a DDP/FSDP model still holds the group: its workers outlive destroy_process_group

    def device(self, name: str) -> torch.device | None:
        """The device for `--device NAME` on this rank: `auto` and `cuda` mean this rank's local GPU."""
        if name in ("auto", "cuda") and self.cuda:
            return torch.device("cuda", torch.cuda.current_device())
        return None  # the single-process rules apply

    # ------------------------------------------------------------------ collectives on CPU tensors (gloo)
    def _all_reduce_max(self, values: list[int]) -> list[int]:
        tensor = torch.tensor(values, dtype=torch.int64)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return tensor.tolist()

    def any(self, flag: bool) -> bool:
        return bool(self._all_reduce_max([int(flag)])[0])

    def gather(self, obj) -> list:
        """OBJ from every rank, in rank order (JSON-like values only: never unpickle anything else)."""
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def together(self, action, *, path=None):
        """Run ACTION on this rank; if it fails on any rank, every rank raises (the failing ones their own error)."""
        error = None
        try:
            result = action()
        except ReprotrainError as exc:
            error = exc
        outcomes = self.gather(None if error is None else
                               {"message": str(exc_message(error)), "exit_code": error.exit_code})
        if error is not None:
            raise error
        failed = [(rank, o) for rank, o in enumerate(outcomes) if o is not None]
        if failed:
            rank, outcome = failed[0]
            raise ReprotrainError(f"stopped because rank {rank} failed: {outcome['message'].splitlines()[0]}",
                                  path=path, exit_code=outcome["exit_code"])
        return result

    # ------------------------------------------------------------------ CheckpointManager coordinator
    def step(self, pending_signal: str | None, save_due: bool) -> tuple[str | None, bool]:
        code, due = self._all_reduce_max([_SIGNAL_CODES[pending_signal], int(save_due and self.is_writer)])
        return _SIGNAL_NAMES[code], bool(due)

    def vote(self, ok: bool, what: str) -> None:
        ballots = [0] * self.world_size
        ballots[self.rank] = 0 if ok else 1
        against = [rank for rank, no in enumerate(self._all_reduce_max(ballots)) if no]
        if against and ok:
            raise ReprotrainError(f"{what} was not committed: rank {', '.join(map(str, against))} could not "
                                  "complete it; the previous checkpoint stays the resumable one")

    # ------------------------------------------------------------------ environment
    def check_fingerprints(self, fingerprint: dict, policy: fp.Policy, *, log, path=None) -> list[dict]:
        """Gather every rank's fingerprint and compare each with rank 0's under POLICY.

        A refused difference stops every rank (exit 1) naming the ranks; warned ones are reported by rank 0.
        """
        prints = self.gather(fingerprint)
        comparisons = {rank: fp.compare(prints[0], prints[rank], policy) for rank in range(1, self.world_size)}
        differing = {rank: c for rank, c in comparisons.items()
                     if any(d.severity in ("refuse", "warn") for d in c.differences)}
        refused = [rank for rank, c in differing.items() if c.refused]
        tables = "\n".join(f"rank {rank} (RECORDED = rank 0, LIVE = rank {rank}):\n{c.table()}"
                           for rank, c in differing.items())
        if refused:
            hint = "; ".join(comparisons[rank].allow_hint() for rank in refused[:1])
            raise EnvironmentRefused(
                f"rank {', '.join(map(str, refused))} differ{'s' if len(refused) == 1 else ''} from rank 0 and the "
                f"policy refuses it; all ranks must run the same environment\n{tables}\nto allow it: {hint}",
                path=path)
        if differing and self.is_writer:
            log(f"rank {', '.join(map(str, differing))} differ{'s' if len(differing) == 1 else ''} from rank 0 "
                f"(warnings):\n{tables}")
        return prints

    def resume(self, mgr, *, path, required: bool, where):
        """Rank 0 picks the checkpoint (the newest valid one, or PATH); every rank loads that same file, each under
        the policy against its own fingerprint. A refusal on any rank stops every rank."""
        info = self.together(lambda: mgr.resume(path=path, required=required) if self.is_writer else None, path=where)
        chosen = self.gather(str(info.path) if info is not None else None)[0]
        return self.together(lambda: info if self.is_writer else (mgr.resume(path=chosen) if chosen else None),
                             path=where)

    # ------------------------------------------------------------------ model and data
    def wrap(self, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        from torch.nn.parallel import DistributedDataParallel

        if device.type == "cuda":
            return DistributedDataParallel(model, device_ids=[device.index])
        return DistributedDataParallel(model)

    def shard(self, task, device: torch.device) -> None:
        """FSDP2: shard every direct child module that has parameters, then the root (fully_shard in place). The
        task's optimizer was built on the unsharded parameters: its parameter groups are pointed at the sharded ones
        (its state is still empty; resume loads it through torch.distributed.checkpoint)."""
        from torch.distributed.fsdp import fully_shard

        model = task.model
        names = {id(p): n for n, p in model.named_parameters()}
        for child in model.children():
            if any(True for _ in child.parameters()):
                fully_shard(child)
        fully_shard(model)
        sharded = dict(model.named_parameters())
        if task.optimizer is not None:
            for group in task.optimizer.param_groups:
                group["params"] = [sharded[names[id(p)]] for p in group["params"]]

    def stop_on_sigterm_after_save(self) -> None:
        """After the interrupted checkpoint: torchrun sends SIGTERM to the ranks still running when one exits; the
        save is done, so let this rank finish its exit (with its own exit code) instead of dying mid-cleanup."""
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


def exc_message(exc: BaseException) -> str:
    return getattr(exc, "message", None) or str(exc)


class GlobalBatchSampler(Sampler):
    """This rank's batches of one epoch, from sample offset `start` of the (seed, epoch) permutation on.

    Global batch g covers samples [start + g*B*W, start + (g+1)*B*W) of the permutation; rank r takes its r-th
    slice of B. The last global batch is split as evenly as possible; when it has fewer samples than ranks, a rank
    left empty repeats the first sample of the batch (every rank must take part in every step).
    """

    def __init__(self, n: int, batch_size: int, *, seed: int, epoch: int, start: int, rank: int, world_size: int):
        self.n, self.batch_size, self.seed, self.epoch = n, batch_size, seed, epoch
        self.start, self.rank, self.world_size = min(start, n), rank, world_size

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world_size

    def __len__(self) -> int:
        return math.ceil((self.n - self.start) / self.global_batch)

    def global_sizes(self):
        """The number of samples each step consumes from the permutation (all ranks together)."""
        for begin in range(self.start, self.n, self.global_batch):
            yield min(self.global_batch, self.n - begin)

    def __iter__(self):
        order = torch.randperm(self.n, generator=torch.Generator().manual_seed(data.derive_seed(self.seed, self.epoch)))
        for begin in range(self.start, self.n, self.global_batch):
            chunk = order[begin:begin + self.global_batch]
            if len(chunk) == self.global_batch:
                mine = chunk[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]
            else:
                mine = torch.tensor_split(chunk, self.world_size)[self.rank]
                if len(mine) == 0:
                    mine = chunk[:1]
            yield mine.tolist()


def train_loader(dataset, *, batch_size: int, seed: int, epoch: int, start: int, rank: int, world_size: int,
                 num_workers: int, pin_memory: bool = False) -> tuple[DataLoader, GlobalBatchSampler]:
    sampler = GlobalBatchSampler(len(dataset), batch_size, seed=seed, epoch=epoch, start=start, rank=rank,
                                 world_size=world_size)
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers, pin_memory=pin_memory,
                        generator=torch.Generator().manual_seed(data.derive_seed(seed, epoch, "loader", rank, start)),
                        worker_init_fn=data._seed_worker if num_workers else None)
    return loader, sampler


def seed_step(seed: int, epoch: int, sample: int, rank: int) -> None:
    """Seed torch's global RNG (dropout, ...) from the step's place in the data order and the rank: each rank draws
    differently, and a resume at the same world size draws exactly what the uninterrupted run drew, without
    needing every rank's RNG state in the checkpoint (only rank 0 writes it)."""
    torch.manual_seed(data.derive_seed(seed, epoch, sample, rank, "step"))


def start_sample(position: dict, batch_size: int) -> int:
    """The sample offset into the epoch's permutation a recorded position continues at (single-process checkpoints
    record only whole batches of `batch_size`)."""
    if "sample" in position:
        return int(position["sample"])
    return int(position.get("batch", 0)) * batch_size


def position(epoch: int, sample: int, batch_size: int, world_size: int) -> dict:
    """What a distributed run records. `batch` is in single-process batches (rounded up at the epoch's end), so that
    a plain `reprotrain train` resumes a distributed checkpoint at the same place."""
    return {"epoch": epoch, "batch": math.ceil(sample / batch_size), "sample": sample, "world_size": world_size}


def world_size_note(recorded_position: dict, *, world_size: int, batch_size: int, n: int) -> str | None:
    """The message at a resume with another world size (None when it is the same)."""
    recorded = int(recorded_position.get("world_size", 1))
    if recorded == world_size:
        return None
    sample = min(start_sample(recorded_position, batch_size), n)
    return (f"world size changes from {recorded} to {world_size}: the effective batch goes from {batch_size}x{recorded}"
            f" = {batch_size * recorded} to {batch_size}x{world_size} = {batch_size * world_size} samples per step "
            f"(same learning rate); epoch {int(recorded_position.get('epoch', 0)) + 1} continues at sample {sample} of "
            f"{n} in the same order, no sample skipped or repeated; steps from here are not bit-identical to a run "
            f"that kept world size {recorded}")


class NoMetrics:
    """metrics.jsonl on ranks other than 0: rank 0 writes the run's one file."""

    def write(self, kind: str, **fields) -> None:
        pass

    def close(self) -> None:
        pass
