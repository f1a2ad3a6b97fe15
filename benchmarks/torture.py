"""Crash torture: SIGKILL a real training process at random instants, N times, and check every promise.

    python benchmarks/torture.py [--kills N] [--seed S] [--json] [--run-root DIR]

One zygote process imports torch and the bundled training loop once, then forks a fresh child per trial, so a
kill costs a fork, not an interpreter start. Each child runs `reprotrain.training.train()` on the built-in
digits task (resume first, save by policy, retention), exactly as `reprotrain train` does, and reports its
progress through a pipe. The parent kills it:

  random     SIGKILL after a uniformly random delay (start-up, resume, steps, saves, renames, retention)
  rename     SIGKILL while the child is parked just before or just after `os.replace` of a finished file
  retention  SIGKILL while parked just before or just after a retention delete
  kinds      SIGKILL while parked between two saves of different kinds (latest -> best/periodic and back)
  signal     SIGTERM at a random instant, then SIGKILL 0-80 ms later (kills during the `interrupted` save)

The parking points are monkeypatches installed inside the forked child only (this file is their only user);
the library has no test hook. After every kill, with the real reader: every visible `.pth` file re-hashes
clean, resume picks a valid checkpoint, the pick never goes backwards, everything the child reported as
committed is still there, and the work lost is at most one save interval. Every `--episode` kills the run is
continued to the end and its model+optimizer digest must equal the digest of an uninterrupted run.

Exit code 0 when every check held, 1 otherwise. `--json` prints the report as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import select
import shutil
import signal
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

TRAPS = ("random", "rename", "retention", "kinds", "signal")
# Share of trials per trap: mostly random instants, with every targeted point hit often.
TRAP_WEIGHTS = {"random": 0.55, "rename": 0.12, "retention": 0.12, "kinds": 0.11, "signal": 0.10}
SAVE_EVERY = 3  # steps between saves: the "save interval" that a kill may lose at most
# Three short epochs of digits (23 batches of 64): every epoch ends with a best/periodic/latest save, epoch 2 is
# periodic (kept forever), and keep_last=2 makes retention delete on nearly every save. The task is a small MLP
# with dropout (the restored RNG matters) and a per-epoch scheduler, so that saves, not arithmetic, dominate.
OPTIONS = {"epochs": 3, "batch_size": 64, "save": f"steps:{SAVE_EVERY}+epochs:1", "keep_last": 2, "keep_best": 1,
           "keep_every": 2, "log_every": 1000, "threads": 1, "num_workers": 0, "device": "cpu"}
PARK_TIMEOUT_S = 60.0
_DIGITS: dict = {}


def mlp_digits(cfg):
    """The torture's training task (`--task <this module>:mlp_digits`): digits, loaded once in the zygote."""
    import torch

    from reprotrain.training import Task
    from reprotrain.training.tasks import digits

    if not _DIGITS:
        base = digits(cfg)
        _DIGITS.update(train=base.train_data, val=base.val_data)
    torch.manual_seed(cfg.seed)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Dropout(0.1),
                                torch.nn.Linear(64, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    return Task(model=model, optimizer=optimizer, train_data=_DIGITS["train"], val_data=_DIGITS["val"],
                loss=torch.nn.CrossEntropyLoss(), scheduler=torch.optim.lr_scheduler.StepLR(optimizer, 1, gamma=0.8))


def _options() -> dict:
    return {**OPTIONS, "task": f"{__name__}:mlp_digits"}


@dataclass
class Report:
    kills: int = 0
    kills_by_trap: dict = field(default_factory=lambda: {t: 0 for t in TRAPS})
    trials: int = 0
    completed_before_kill: int = 0
    episodes: int = 0
    bit_identical: int = 0
    checks: int = 0
    max_lost_steps: int = 0
    save_interval_steps: int = SAVE_EVERY
    async_saves: bool = False  # the loop saved in the background: one more interval may be in flight
    partials_seen: int = 0
    violations: list = field(default_factory=list)
    seconds: float = 0.0
    reference_digest: str = ""
    window_s: float = 0.0
    median_first_step_s: float = 0.0  # fork to the first finished step of a trial (start-up + resume)

    @property
    def lost_bound(self) -> int:
        return self.save_interval_steps * (2 if self.async_saves else 1)

    @property
    def ok(self) -> bool:
        return not self.violations and self.episodes == self.bit_identical


# --------------------------------------------------------------------------- the forked child


def _park(pipe: int, what: str) -> None:
    """Tell the parent where we are, then wait to be killed."""
    os.write(pipe, f"park {what}\n".encode())
    while True:
        time.sleep(3600)


def _install_trap(trap: str, variant: str, occurrence: int, pipe: int) -> None:
    from reprotrain.checkpoint import store

    counter = {"n": 0}

    def hit() -> bool:
        counter["n"] += 1
        return counter["n"] == occurrence

    if trap == "rename":
        real_replace = os.replace

        def replace(src, dst, *args, **kwargs):
            if str(src).endswith(store.PARTIAL_SUFFIX) and hit():
                if variant == "before":
                    _park(pipe, "before rename")
                real_replace(src, dst, *args, **kwargs)
                _park(pipe, "after rename, before the directory fsync")
            return real_replace(src, dst, *args, **kwargs)

        os.replace = replace  # this forked child's os module only
    elif trap == "retention":
        real_delete = store.RunDirectory.delete

        def delete(self, name):
            if hit():
                if variant == "before":
                    _park(pipe, f"before retention deletes {name}")
                real_delete(self, name)
                _park(pipe, f"after retention deleted {name}")
            return real_delete(self, name)

        store.RunDirectory.delete = delete
    elif trap == "kinds":
        real_commit = store.RunDirectory.commit
        last = {"kind": None}

        def commit(self, name, write):
            kind = name.rsplit("-", 1)[-1].removesuffix(store.CHECKPOINT_SUFFIX)
            previous, last["kind"] = last["kind"], kind
            changed = previous is not None and kind != previous
            if changed and variant == "before":
                _park(pipe, f"after a {previous} save, before a {kind} save")
            path = real_commit(self, name, write)
            if changed:
                _park(pipe, f"right after a {kind} save that followed another kind")
            return path

        store.RunDirectory.commit = commit


def _child(run_dir: str, trap: str, variant: str, occurrence: int, pipe: int, digest: bool) -> None:
    """Body of a forked trial: resume and train to the end, reporting progress. Never returns."""
    code = 0
    try:
        from reprotrain.checkpoint import manager, store
        from reprotrain.training import train

        real_step_done = manager.CheckpointManager.step_done
        announced: list = []
        real_commit = store.RunDirectory.commit

        def step_done(self, *, step, **kwargs):
            if not announced:
                announced.append(os.write(pipe, f"async {int(bool(getattr(self, '_async', False)))}\n".encode()))
            path = real_step_done(self, step=step, **kwargs)
            os.write(pipe, f"step {step}\n".encode())
            return path

        def commit(self, name, write):
            path = real_commit(self, name, write)
            os.write(pipe, f"committed {name}\n".encode())
            return path

        manager.CheckpointManager.step_done = step_done
        store.RunDirectory.commit = commit
        _install_trap(trap, variant, occurrence, pipe)
        result = train(run_dir, options=_options(), quiet=True, log=lambda message: None)
        if digest:
            os.write(pipe, f"digest {_final_digest(run_dir)} {result.step}\n".encode())
    except SystemExit as exc:  # Interrupted after SIGTERM: the loop saved `interrupted` and exits 143
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        code = 70
        os.write(pipe, ("error " + traceback.format_exc().replace("\n", " | ") + "\n").encode())
    os._exit(code)


def _final_digest(run_dir: str) -> str:
    from reprotrain.checkpoint import list_checkpoints, select_for_resume, state
    from reprotrain.audit import training_state_digest

    pick = select_for_resume(list_checkpoints(run_dir, deep=True))
    return training_state_digest(state.load(pick.path)["state"])


# --------------------------------------------------------------------------- the parent (zygote)


@dataclass
class Trial:
    exit_status: str  # "killed" | "exit N"
    last_step: int  # last step whose step_done returned
    committed: list  # names reported as committed, in order
    parked: str | None
    digest: str | None
    final_step: int | None
    error: str | None
    first_step_s: float | None  # seconds from fork to the first reported step
    async_saves: bool  # the loop's routine saves run in a background thread


def _fork(run_dir: Path, trap: str, variant: str, occurrence: int, digest: bool):
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        _child(str(run_dir), trap, variant, occurrence, write_end, digest)
    os.close(write_end)
    return pid, read_end


class _Lines:
    def __init__(self, fd: int):
        self.fd, self.buffer, self.lines, self.eof = fd, b"", [], False
        self.started = time.monotonic()
        self.first_step_s: float | None = None

    def pump(self, timeout: float) -> None:
        if self.eof:
            return
        ready, _, _ = select.select([self.fd], [], [], max(timeout, 0))
        if not ready:
            return
        chunk = os.read(self.fd, 65536)
        if not chunk:
            self.eof = True
            return
        self.buffer += chunk
        *complete, self.buffer = self.buffer.split(b"\n")
        for raw in complete:
            line = raw.decode()
            if self.first_step_s is None and line.startswith("step "):
                self.first_step_s = time.monotonic() - self.started
            self.lines.append(line)

    def drain(self) -> None:
        while not self.eof:
            self.pump(5.0)

    def parked(self) -> str | None:
        return next((line[5:] for line in self.lines if line.startswith("park ")), None)


def run_trial(run_dir: Path, trap: str, rng: random.Random, window_s: float, *, kill: bool = True,
              digest: bool = False) -> Trial:
    variant = rng.choice(("before", "after"))
    occurrence = rng.randint(1, 3)
    pid, fd = _fork(run_dir, trap if kill else "none", variant, occurrence, digest)
    lines = _Lines(fd)
    try:
        if not kill:
            lines.drain()
        elif trap in ("random", "signal"):
            deadline = time.monotonic() + rng.uniform(0.0, window_s)
            while time.monotonic() < deadline and not lines.eof:
                lines.pump(deadline - time.monotonic())
            if trap == "signal":
                _signal(pid, signal.SIGTERM)
                grace = time.monotonic() + rng.uniform(0.0, 0.08)
                while time.monotonic() < grace and not lines.eof:
                    lines.pump(grace - time.monotonic())
            _signal(pid, signal.SIGKILL)
        else:
            deadline = time.monotonic() + PARK_TIMEOUT_S
            while lines.parked() is None and not lines.eof and time.monotonic() < deadline:
                lines.pump(deadline - time.monotonic())
            _signal(pid, signal.SIGKILL)
        lines.drain()
    finally:
        _, raw_status = os.waitpid(pid, 0)
        os.close(fd)
    if os.WIFSIGNALED(raw_status):
        status = "killed" if os.WTERMSIG(raw_status) == signal.SIGKILL else f"signal {os.WTERMSIG(raw_status)}"
    else:
        status = f"exit {os.WEXITSTATUS(raw_status)}"
    steps = [int(line.split()[1]) for line in lines.lines if line.startswith("step ")]
    committed = [line.split()[1] for line in lines.lines if line.startswith("committed ")]
    digests = [line.split() for line in lines.lines if line.startswith("digest ")]
    errors = [line[6:] for line in lines.lines if line.startswith("error ")]
    return Trial(status, max(steps, default=-1), committed, lines.parked(),
                 digests[0][1] if digests else None, int(digests[0][2]) if digests else None,
                 errors[0] if errors else None, lines.first_step_s, "async 1" in lines.lines)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _step_of(name: str) -> int:
    return int(name[4:14])


def check_after_kill(run_dir: Path, trial: Trial, previous_pick: int, report: Report, label: str) -> int:
    """The promises, checked with the real reader. Returns the step resume will continue from."""
    from reprotrain.checkpoint import list_checkpoints, select_for_resume

    report.checks += 1
    report.partials_seen += sum(1 for p in run_dir.glob(".*.partial"))
    entries = list_checkpoints(run_dir, deep=True) if run_dir.is_dir() else []
    damaged = [(e.path.name, e.problem) for e in entries if not e.valid]
    if damaged:
        report.violations.append(f"{label}: visible damaged checkpoint(s) {damaged}")
    pick = select_for_resume(entries)
    if pick is None:
        if trial.committed:
            report.violations.append(f"{label}: nothing to resume although {trial.committed[-1]} was committed")
        return previous_pick
    step = pick.info.manifest["step"]
    if step < previous_pick:
        report.violations.append(f"{label}: resume went backwards from step {previous_pick} to {step}")
    committed_steps = [_step_of(n) for n in trial.committed if not n.split("-", 1)[1].startswith("emergency")]
    if committed_steps and step < max(committed_steps):
        report.violations.append(f"{label}: committed step {max(committed_steps)} lost; resume picks {step}")
    # The killed process had finished step last_step and may have been inside the next one. With asynchronous
    # saves one save may still be in flight (back-pressure allows one), so the bound is the interval since the
    # last save that was *started*, plus that save's own interval.
    lost = max(0, trial.last_step + 1 - step)
    bound = SAVE_EVERY * (2 if trial.async_saves else 1)
    report.async_saves = report.async_saves or trial.async_saves
    report.max_lost_steps = max(report.max_lost_steps, lost)
    if lost > bound:
        report.violations.append(f"{label}: {lost} steps lost (> {bound}, save every {SAVE_EVERY}): finished step "
                                 f"{trial.last_step}, resume picks step {step}, last commits {trial.committed[-3:]}")
    return step


def _trap_sequence(kills: int, rng: random.Random) -> list[str]:
    traps = []
    for trap, weight in TRAP_WEIGHTS.items():
        traps += [trap] * max(1, round(kills * weight))
    rng.shuffle(traps)
    return traps[:kills] if len(traps) >= kills else traps + ["random"] * (kills - len(traps))


def torture(kills: int, *, seed: int = 0, episode: int = 10, run_root: str | os.PathLike | None = None,
            progress=None) -> Report:
    """Kill N training children; check after each kill; continue every episode to the end and compare."""
    import torch

    torch.set_num_threads(1)  # before any torch work, so that forked children inherit no thread pool
    import reprotrain.audit.digest  # noqa: F401  (imported once here, not per child)
    from reprotrain.training import TrainConfig

    mlp_digits(TrainConfig(**_options()))  # load the data set once, before the first fork

    rng = random.Random(seed)
    report = Report()
    started = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="reprotrain-torture-", dir=run_root))
    try:
        reference_started = time.monotonic()
        reference = run_trial(root / "reference", "none", rng, 0.0, kill=False, digest=True)
        if reference.digest is None:
            raise RuntimeError(f"the uninterrupted reference run failed: {reference.exit_status} {reference.error}")
        report.reference_digest = reference.digest
        # Kill window: from fork to the first step, plus the time a third of the run's steps take, so that a
        # run survives several kills and kills land in start-up, resume, steps and saves alike.
        duration = time.monotonic() - reference_started
        first = reference.first_step_s or 0.2
        window = first + max(duration - first, 0.1) / 3
        report.window_s = round(window, 3)
        traps = _trap_sequence(kills, rng)
        run_dir, pick, in_episode, first_steps = None, 0, 0, []
        while report.kills < kills:
            if run_dir is None:
                run_dir, pick, in_episode = root / f"episode{report.episodes:04d}", 0, 0
            trap = traps[report.kills]
            trial = run_trial(run_dir, trap, rng, window)
            report.trials += 1
            if trial.first_step_s is not None:
                first_steps.append(trial.first_step_s)
            label = f"kill {report.kills + 1} ({trap}{', ' + trial.parked if trial.parked else ''})"
            if trial.error:
                report.violations.append(f"{label}: child failed: {trial.error}")
            # SIGTERM may land before the guard is installed (default action) or end in an `interrupted` save.
            terminated = trial.exit_status == "killed" or (trap == "signal" and trial.exit_status in
                                                             (f"signal {signal.SIGTERM.value}", "exit 143"))
            if terminated:
                report.kills += 1
                report.kills_by_trap[trap] += 1
                in_episode += 1
                pick = check_after_kill(run_dir, trial, pick, report, label)
            elif trial.exit_status == "exit 0":
                report.completed_before_kill += 1
            else:
                report.violations.append(f"{label}: child ended with {trial.exit_status}")
            if progress and terminated and report.kills % 50 == 0:
                progress(f"{report.kills}/{kills} kills, {len(report.violations)} violations, "
                         f"{time.monotonic() - started:.0f} s")
            if in_episode >= episode or report.kills >= kills or trial.exit_status == "exit 0":
                _finish_episode(run_dir, rng, report)
                shutil.rmtree(run_dir, ignore_errors=True)
                run_dir = None
            if len(report.violations) > 50:
                break
        report.median_first_step_s = round(statistics.median(first_steps), 3) if first_steps else 0.0
    finally:
        shutil.rmtree(root, ignore_errors=True)
    report.seconds = round(time.monotonic() - started, 1)
    return report


def _finish_episode(run_dir: Path, rng: random.Random, report: Report) -> None:
    report.episodes += 1
    final = run_trial(run_dir, "none", rng, 0.0, kill=False, digest=True)
    if final.digest is None:
        report.violations.append(f"episode {report.episodes}: continuing to the end failed: "
                                 f"{final.exit_status} {final.error}")
    elif final.digest != report.reference_digest:
        report.violations.append(f"episode {report.episodes}: final state {final.digest} differs from the "
                                 f"uninterrupted run's {report.reference_digest}")
    else:
        report.bit_identical += 1


def rows(report: Report, kills_target: int) -> list[tuple]:
    """Benchmark-table rows: (figure, value, target, baseline, ratio)."""
    return [
        ("torture: SIGKILLs (random/rename/retention/kinds/signal)",
         f"{report.kills} ({'/'.join(str(report.kills_by_trap[t]) for t in TRAPS)})", f">= {kills_target}", "-", "-"),
        ("torture: kills after which resume picked a valid checkpoint", f"{report.checks - _count(report, 'nothing')}"
         f"/{report.checks}", "100 %", "-", "-"),
        ("torture: most steps lost by one kill", str(report.max_lost_steps),
         f"<= {report.lost_bound} ({'2 save intervals: asynchronous saves' if report.async_saves else 'save interval'})",
         "-", "-"),
        ("torture: runs continued to the end bit-identical to an uninterrupted run",
         f"{report.bit_identical}/{report.episodes}", "all", "-", "-"),
        ("torture: violations", str(len(report.violations)), "0", "-", "-"),
        ("torture: kills per second (fork per trial)", f"{report.kills / max(report.seconds, 1e-9):.2f}", "-", "-",
         "-"),
    ]


def _count(report: Report, word: str) -> int:
    return sum(1 for v in report.violations if word in v)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=1000, help="number of SIGKILLs (default 1000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--episode", type=int, default=10, help="kills before a run is continued to the end")
    parser.add_argument("--run-root", default=None, help="where run directories go (default: the temp folder)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    report = torture(args.kills, seed=args.seed, episode=args.episode, run_root=args.run_root,
                     progress=None if args.json else (lambda message: print(message, file=sys.stderr, flush=True)))
    if args.json:
        print(json.dumps({**asdict(report), "ok": report.ok}, indent=2))
    else:
        table = [("figure", "value", "target")] + [r[:3] for r in rows(report, args.kills)]
        widths = [max(len(str(r[i])) for r in table) for i in range(3)]
        for r in table:
            print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())
        for violation in report.violations:
            print(f"VIOLATION: {violation}")
        print(f"{report.trials} trials, {report.completed_before_kill} completed before their kill, "
              f"{report.partials_seen} leftover .partial files seen (removed by the next writer), "
              f"{report.seconds} s, kill window {report.window_s} s, median fork-to-first-step "
              f"{report.median_first_step_s} s, seed {args.seed}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    raise SystemExit(main())
