"""The library API without surprises (docs/library.md): what each call pattern saves, the lock and the signal
handlers given back however a loop ends, messages that fit where they are printed, metrics.jsonl, finish().

In-process, real objects: real signals (signal.raise_signal), real files, the garbage collector, a real child
interpreter for interpreter exit.
"""

from __future__ import annotations

import gc
import json
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import torch

from reprotrain.checkpoint import CheckpointManager, Interrupted, RetentionPolicy, list_checkpoints
from reprotrain.checkpoint.manager import ManagerOptions
from reprotrain.checkpoint.store import RunDirectoryBusy
from reprotrain.errors import ReprotrainError

ROOT = Path(__file__).parents[1]


def manager(run_dir, messages=None, **options):
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 1)
    options.setdefault("retention", RetentionPolicy(keep_last=100))
    return CheckpointManager(run_dir, model, torch.optim.SGD(model.parameters(), lr=0.1),
                             log=(messages.append if messages is not None else lambda m: None), **options)


def saved_steps(run_dir) -> list[tuple[int, str]]:
    return sorted((e.info.manifest["step"], e.info.manifest["kind"]) for e in list_checkpoints(run_dir) if e.valid)


# A real manager over the call patterns of docs/library.md (3 epochs of 2 steps); the steps that get a file.
CALLS = {
    "per-step": [dict(epoch=(s - 1) // 2, step=s) for s in range(1, 7)],
    "per-epoch": [dict(epoch=e, step=2 * e, epoch_end=True) for e in range(1, 4)],
    "both": [c for e in range(3) for c in (dict(epoch=e, step=2 * e + 1), dict(epoch=e, step=2 * e + 2),
                                          dict(epoch=e + 1, step=2 * e + 2, epoch_end=True))],
    "one-step-per-epoch": [dict(epoch=e, step=e, epoch_end=True) for e in range(1, 4)],
}
EXPECTED = {
    ("steps:1", "per-step"): [1, 2, 3, 4, 5, 6], ("steps:1", "per-epoch"): [2, 4, 6],
    ("steps:1", "both"): [1, 2, 3, 4, 5, 6], ("steps:1", "one-step-per-epoch"): [1, 2, 3],
    ("epochs:1", "per-step"): [3, 5], ("epochs:1", "per-epoch"): [2, 4, 6], ("epochs:1", "both"): [2, 4, 6],
    ("epochs:1", "one-step-per-epoch"): [1, 2, 3],
    ("steps:2", "one-step-per-epoch"): [2], ("steps:4+epochs:3", "both"): [4, 6],
}


@pytest.mark.parametrize("policy, pattern", sorted(EXPECTED))
def test_a_real_manager_saves_what_the_policy_says_for_each_call_pattern(tmp_path, policy, pattern):
    mgr = manager(tmp_path, save_policy=policy, retention=RetentionPolicy(keep_last=100, keep_best=0))
    for call in CALLS[pattern]:
        mgr.step_done(samples_seen=call["step"], **call)
    mgr.close()
    assert sorted({step for step, _ in saved_steps(tmp_path)}) == EXPECTED[(policy, pattern)]


def test_the_issues_lbfgs_pattern_with_steps_1_saves_every_step(tmp_path):
    # The report: save_policy="steps:1" with one step_done(epoch_end=True) per step saved only "best" steps.
    mgr = manager(tmp_path, save_policy="steps:1", monitor="loss", mode="min")
    for step, loss in enumerate([3.0, 2.0, 2.5, 2.6, 1.0], start=1):
        mgr.step_done(epoch=step, step=step, samples_seen=step, metrics={"loss": loss}, epoch_end=True)
    mgr.close()
    assert [s for s, _ in saved_steps(tmp_path)] == [1, 2, 3, 4, 5]


def test_a_configuration_that_can_never_save_is_reported_at_the_first_step(tmp_path):
    messages = []
    mgr = manager(tmp_path, messages, save_policy="at-steps:2,3")
    mgr.save("latest", epoch=0, step=5, samples_seen=5)
    mgr.close()
    messages.clear()
    again = manager(tmp_path, messages, save_policy="at-steps:2,3")
    again.resume()
    again.step_done(epoch=0, step=6, samples_seen=6)
    again.step_done(epoch=0, step=7, samples_seen=7)
    warnings = [m for m in messages if "can never save" in m]
    assert len(warnings) == 1 and "at steps 2, 3" in warnings[0]
    again.close()
    assert saved_steps(tmp_path) == [(5, "latest")]  # the points behind the resumed step are not saved again


def test_a_monitor_never_reported_at_an_epoch_end_is_reported_once(tmp_path):
    messages = []
    mgr = manager(tmp_path, messages, save_policy="never", monitor="val_acc")
    for epoch in (1, 2):
        mgr.step_done(epoch=epoch, step=epoch, samples_seen=epoch, metrics={"loss": 1.0}, epoch_end=True)
    mgr.close()
    warned = [m for m in messages if "monitor 'val_acc' is not among the metrics" in m]
    assert len(warned) == 1 and "(loss)" in warned[0]


@pytest.mark.parametrize("async_save", [False, True])
def test_one_line_per_save_unless_quiet(tmp_path, async_save):
    messages = []
    mgr = manager(tmp_path / "loud", messages, save_policy="steps:2", async_save=async_save)
    for step in range(1, 6):
        mgr.step_done(epoch=0, step=step, samples_seen=step)
    mgr.finish()
    said = [m for m in messages if m.startswith("saved ")]
    assert [m.split()[1].rsplit("/", 1)[-1] for m in said] == [
        "step0000000002-latest.pth", "step0000000004-latest.pth", "step0000000005-latest.pth"]
    quiet = []
    mgr = manager(tmp_path / "quiet", quiet, options=ManagerOptions(save_policy="steps:2", quiet=True))
    for step in range(1, 6):
        mgr.step_done(epoch=0, step=step, samples_seen=step)
    mgr.finish()
    assert not [m for m in quiet if m.startswith("saved ")] and mgr.checkpoints_written == 3


def test_options_dataclass_and_keywords_are_the_same_and_unknown_names_fail(tmp_path):
    mgr = manager(tmp_path, options=ManagerOptions(save_policy="steps:3", monitor="acc"), mode="min")
    assert mgr.save_policy.describe() == "every 3 steps" and (mgr.monitor, mgr.mode) == ("acc", "min")
    mgr.close()
    with pytest.raises(TypeError, match="unexpected keyword argument 'save_polcy'"):
        CheckpointManager(tmp_path, torch.nn.Linear(2, 2), save_polcy="steps:1")


def handlers():
    return signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)


def test_an_exception_leaving_guard_saves_emergency_gives_back_handlers_and_lock(tmp_path):
    before, messages = handlers(), []
    mgr = manager(tmp_path, messages)
    with pytest.raises(RuntimeError, match="broken batch"):
        with mgr.guard():
            mgr.step_done(epoch=0, step=1, samples_seen=1)
            assert handlers() != before
            raise RuntimeError("broken batch")
    assert handlers() == before and mgr.closed
    assert [k for _, k in saved_steps(tmp_path)] == ["emergency"]
    with pytest.raises(ReprotrainError, match="this CheckpointManager is closed"):
        mgr.step_done(epoch=0, step=2, samples_seen=2)
    # The lock is free: a new manager on the same directory is not an "earlier manager left open" takeover.
    again = manager(tmp_path, messages)
    assert not any("left open" in m for m in messages)
    again.close()


def test_sigint_then_a_step_boundary_saves_interrupted_and_releases_everything(tmp_path):
    before, messages = handlers(), []
    mgr = manager(tmp_path, messages, save_policy="never")
    with pytest.raises(Interrupted) as stopped:
        with mgr.guard():
            mgr.step_done(epoch=0, step=1, samples_seen=1)
            signal.raise_signal(signal.SIGINT)  # a real signal, handled by the guard's handler
            mgr.step_done(epoch=0, step=2, samples_seen=2)
    assert stopped.value.exit_code == 130 and stopped.value.path.name == "step0000000002-interrupted.pth"
    assert handlers() == before and mgr.closed
    assert not any("exiting with code" in m for m in messages)  # nothing exits: this is not the CLI
    assert any("(interrupt again to stop at once without saving)" in m for m in messages)
    manager(tmp_path).close()


def test_interrupted_in_the_plain_call_form_releases_too(tmp_path):
    before = handlers()
    mgr = manager(tmp_path, save_policy="never").start()  # no `with`, no re-indented loop
    assert handlers() != before
    mgr.step_done(epoch=0, step=1, samples_seen=1)
    signal.raise_signal(signal.SIGTERM)
    with pytest.raises(Interrupted) as stopped:
        mgr.step_done(epoch=0, step=2, samples_seen=2)
    assert stopped.value.exit_code == 143 and handlers() == before and mgr.closed


def test_plain_call_form_finish_restores_handlers_and_decorator_form_saves_emergency(tmp_path):
    before = handlers()
    mgr = manager(tmp_path / "plain", save_policy="never").start()
    mgr.step_done(epoch=0, step=1, samples_seen=1)
    mgr.finish()
    assert handlers() == before and saved_steps(tmp_path / "plain") == [(1, "latest")]

    mgr = manager(tmp_path / "decorated", save_policy="never")

    @mgr.guarded
    def train():
        mgr.step_done(epoch=0, step=1, samples_seen=1)
        raise ValueError("bad value")

    with pytest.raises(ValueError):
        train()
    assert handlers() == before and mgr.closed
    assert saved_steps(tmp_path / "decorated") == [(1, "emergency")]


def test_a_second_sigint_in_process_stops_at_once_without_saving_and_never_exits(tmp_path):
    before, messages = handlers(), []
    mgr = manager(tmp_path, messages, save_policy="never")
    with pytest.raises(KeyboardInterrupt) as stopped:
        with mgr.guard():
            mgr.step_done(epoch=0, step=1, samples_seen=1)
            signal.raise_signal(signal.SIGINT)
            signal.raise_signal(signal.SIGINT)  # raises here, mid-step, in this very process
            mgr.step_done(epoch=0, step=2, samples_seen=2)
    assert type(stopped.value) is KeyboardInterrupt and "stopped without a checkpoint" in str(stopped.value)
    assert saved_steps(tmp_path) == []  # neither interrupted nor emergency
    assert handlers() == before and mgr.closed
    assert any("SIGINT again: stopping now without a checkpoint" in m for m in messages)


SECOND_SIGINT_CHILD = """
import signal, sys, torch
from reprotrain.checkpoint import CheckpointManager
mgr = CheckpointManager(sys.argv[1], torch.nn.Linear(2, 1), save_policy="never", log=lambda m: None)
try:
    with mgr.guard():
        mgr.step_done(epoch=0, step=1, samples_seen=1)
        signal.raise_signal(signal.SIGINT)
        signal.raise_signal(signal.SIGINT)
except KeyboardInterrupt:
    print("the interpreter is still here")
"""


def test_a_second_sigint_never_ends_the_interpreter_of_a_library_user(tmp_path):
    """In its own process, so that a forced exit (os._exit) shows as a failure here instead of ending pytest."""
    child = subprocess.run([sys.executable, "-c", SECOND_SIGINT_CHILD, str(tmp_path / "run")], capture_output=True,
                           text=True, timeout=240)
    assert child.returncode == 0 and "the interpreter is still here" in child.stdout, (child.returncode,
                                                                                        child.stderr[-2000:])


def test_a_guard_block_that_ends_normally_gives_back_the_handlers_and_keeps_the_manager_open(tmp_path):
    before = handlers()
    mgr = manager(tmp_path, save_policy="never")
    with mgr.guard():
        assert handlers() != before
        mgr.step_done(epoch=0, step=1, samples_seen=1)
    assert handlers() == before and not mgr.closed
    mgr.finish()
    assert saved_steps(tmp_path) == [(1, "latest")]


def test_sigterm_messages_never_mention_ctrl_c(tmp_path):
    messages = []
    mgr = manager(tmp_path, messages, save_policy="never")
    with pytest.raises(Interrupted):
        with mgr.guard():
            signal.raise_signal(signal.SIGTERM)
            signal.raise_signal(signal.SIGTERM)
            mgr.step_done(epoch=0, step=1, samples_seen=1)
    sigterm = [m for m in messages if "SIGTERM" in m]
    assert len(sigterm) == 3, sigterm  # received, again, saved
    assert not any("Ctrl-C" in m or "exiting with code" in m for m in sigterm)
    assert "still due" in sigterm[1]


def test_the_garbage_collector_gives_back_lock_and_handlers(tmp_path):
    before, messages = handlers(), []
    mgr = manager(tmp_path, save_policy="never", async_save=True).start()
    mgr.step_done(epoch=0, step=1, samples_seen=1)
    mgr.save("latest", epoch=0, step=1, samples_seen=1)  # starts the background thread
    mgr.wait()
    del mgr
    gc.collect()
    assert handlers() == before
    again = manager(tmp_path, messages)
    assert not any("left open" in m for m in messages)
    again.close()


def test_close_joins_the_background_save_thread(tmp_path):
    """No daemon thread outlives close(): one still running when the interpreter finalizes is unwound inside
    torch's C++ and aborts the process (docs/distributed.md, "Ending the process")."""
    import time

    def slow_exit(frame, event, arg):  # the worker's last step takes a while: only a join waits for it
        if event == "return" and frame.f_code.co_name == "_loop":
            time.sleep(0.3)

    mgr = manager(tmp_path, save_policy="never", async_save=True).start()
    threading.setprofile(slow_exit)  # for threads started from here on: the save thread
    try:
        mgr.save("latest", epoch=0, step=1, samples_seen=1)  # starts the background thread
    finally:
        threading.setprofile(None)
    worker = next(t for t in threading.enumerate() if t.name == "reprotrain-save")
    mgr.close()
    assert not worker.is_alive()


def test_a_manager_left_open_is_taken_over_in_the_same_process_but_not_inside_its_guard(tmp_path):
    messages = []
    first = manager(tmp_path, messages)
    first.step_done(epoch=0, step=1, samples_seen=1)  # a notebook cell that ended without finish()
    second = manager(tmp_path, messages)
    assert first.closed and any("left open" in m and "this one takes over" in m for m in messages)
    with second.guard():
        with pytest.raises(RunDirectoryBusy, match="inside its guard"):
            manager(tmp_path)
    second.close()


def test_interpreter_exit_releases_the_lock_and_restores_handlers(tmp_path):
    script = textwrap.dedent(f"""
        import atexit, signal

        def after():  # atexit runs last-in first-out: registered first, this runs after every finaliser
            from reprotrain.checkpoint.lock import WriterLock
            lock = WriterLock({str(tmp_path / '.reprotrain.lock')!r})
            lock.acquire()
            print("lock free", signal.getsignal(signal.SIGINT) is signal.default_int_handler, flush=True)
            lock.release()

        atexit.register(after)
        import torch
        from reprotrain.checkpoint import CheckpointManager
        mgr = CheckpointManager({str(tmp_path)!r}, torch.nn.Linear(2, 2), save_policy="never").start()
        mgr.step_done(epoch=0, step=1, samples_seen=1)
        keep = [mgr]  # still referenced at exit: only the interpreter's exit can release it
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "lock free True"


def test_finish_at_a_step_already_saved_writes_no_second_file(tmp_path):
    mgr = manager(tmp_path, save_policy="epochs:1", monitor="acc", mode="max")
    for epoch, acc in ((1, 0.5), (2, 0.7)):
        mgr.step_done(epoch=epoch, step=2 * epoch, samples_seen=2 * epoch, metrics={"acc": acc}, epoch_end=True)
    mgr.finish()
    assert saved_steps(tmp_path) == [(2, "best"), (4, "best")]  # no step-4 `latest` beside the step-4 `best`
    [last] = [e for e in list_checkpoints(tmp_path) if e.info.manifest["step"] == 4]
    assert last.info.manifest["lineage"][-1]["end_reason"] == "completed"


def test_a_changed_config_is_reported_on_resume(tmp_path):
    mgr = manager(tmp_path, config={"lr": 0.1, "batch": 32, "token": "s3cr3t"})
    mgr.save("latest", epoch=0, step=1, samples_seen=1)
    mgr.close()
    messages = []
    again = manager(tmp_path, messages, config={"lr": 0.2, "batch": 32, "token": "other"})
    info = again.resume()
    again.close()
    assert info.config_changes == ["config changed on resume: lr: 0.1 -> 0.2"]  # secrets stay redacted: no change
    assert "config changed on resume: lr: 0.1 -> 0.2" in messages


def test_metrics_given_to_step_done_go_to_metrics_jsonl(tmp_path):
    mgr = manager(tmp_path, save_policy="never")
    mgr.step_done(epoch=0, step=1, samples_seen=4, metrics={"loss": torch.tensor(0.5)})
    mgr.step_done(epoch=0, step=2, samples_seen=8)  # no metrics: no line
    mgr.step_done(epoch=1, step=2, samples_seen=8, metrics={"acc": 0.75, "loss": float("nan")}, epoch_end=True)
    mgr.finish()
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["kind"], r.get("step")) for r in lines] == [("start", None), ("step", 1), ("epoch", 2), ("end", 2)]
    assert lines[1]["loss"] == 0.5 and lines[2]["acc"] == 0.75 and lines[2]["loss"] is None


class EpochSampler(torch.utils.data.Sampler):
    """docs/library.md's own sampler: the order of an epoch from (seed, epoch), the position as state."""

    def __init__(self, n, seed):
        self.n, self.seed, self.epoch, self.index = n, seed, 0, 0

    def __iter__(self):
        order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 1000 + self.epoch))
        while self.index < self.n:
            self.index += 1
            yield int(order[self.index - 1])
        self.epoch, self.index = self.epoch + 1, 0

    def __len__(self):
        return self.n - self.index

    def state_dict(self):
        return {"epoch": self.epoch, "index": self.index}

    def load_state_dict(self, state):
        self.epoch, self.index = state["epoch"], state["index"]


def test_an_own_sampler_and_a_stateful_dataloader_bound_through_extra_state_continue_exactly(tmp_path):
    stateful = pytest.importorskip("torchdata.stateful_dataloader", reason="torchdata is in the [test] extra")
    data = list(range(24))

    def loaders():
        sampler = EpochSampler(len(data), seed=3)
        mine = torch.utils.data.DataLoader(data, batch_size=4, sampler=sampler)
        theirs = stateful.StatefulDataLoader(data, batch_size=4, shuffle=True,
                                             generator=torch.Generator().manual_seed(5))
        return sampler, mine, theirs

    sampler, mine, theirs = loaders()
    mgr = manager(tmp_path, extra_state={"sampler": sampler, "loader": theirs}, save_policy="never")
    first_mine, first_theirs = iter(mine), iter(theirs)
    for _ in range(2):
        next(first_mine), next(first_theirs)
    mgr.save("latest", epoch=0, step=2, samples_seen=8)
    mgr.close()
    rest_mine = [b.tolist() for b in first_mine]
    rest_theirs = [b.tolist() for b in first_theirs]

    sampler, mine, theirs = loaders()
    again = manager(tmp_path, extra_state={"sampler": sampler, "loader": theirs})
    again.resume()
    again.close()
    assert [b.tolist() for b in mine] == rest_mine and len(rest_mine) == 4
    assert [b.tolist() for b in theirs] == rest_theirs and len(rest_theirs) == 4


def test_async_save_holds_the_state_of_the_moment_save_returned(tmp_path):
    """The snapshot is a copy taken on the training thread: an optimizer step right after save() returns (the
    background thread still writing) does not reach the checkpoint, and the copies carry no autograd graph."""
    import time

    def slow_start(frame, event, arg):  # the save thread starts writing only after the step below
        if event == "call" and frame.f_code.co_name == "_run":
            time.sleep(0.3)

    mgr = manager(tmp_path, save_policy="never", async_save=True).start()
    model = mgr.model
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    threading.setprofile(slow_start)  # for threads started from here on: the save thread
    try:
        mgr.save("latest", epoch=0, step=1, samples_seen=1)
    finally:
        threading.setprofile(None)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(1.0)  # training goes on while the save is in flight
    mgr.wait()
    path = mgr.last_saved
    mgr.close()
    saved = torch.load(path, weights_only=True)["state"]["model"]
    assert all(torch.equal(saved[k], before[k]) for k in before)
    assert not any(t.requires_grad or t.grad_fn is not None for t in saved.values())


def test_a_snapshot_copy_carries_no_autograd_graph():
    # A state tree may hold tensors that require grad (a Parameter in a user's extra state): the copy must be a plain
    # tensor, never a graph node that would hold the live parameter alive or refuse to pickle.
    from reprotrain.checkpoint.state import Snapshot

    parameter = torch.nn.Parameter(torch.randn(3))
    copy = Snapshot().take({"p": parameter})["p"]
    assert torch.equal(copy, parameter.detach())
    assert not copy.requires_grad and copy.grad_fn is None
