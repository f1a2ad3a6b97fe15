"""Sharded checkpoint directories (reprotrain/checkpoint/sharded.py, docs/checkpoint-format.md section 8).

Fast tests run one process (DCP without a process group); the torchrun tests run a user's own FSDP2 loop
(tests/scripts/fsdp_loop.py) on CPU with gloo: 2 processes, and 4 for a resume at another world size. Background
sharded saves (async_save=True) are tested both ways.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import PROJECT_ROOT, run_cli
from reprotrain.checkpoint import CheckpointManager, sharded, store
from reprotrain.checkpoint.manifest import CorruptCheckpoint
from reprotrain.checkpoint.policies import RetentionPolicy

LOOP = PROJECT_ROOT / "tests" / "scripts" / "fsdp_loop.py"


# ------------------------------------------------------------------------------------------------ one process
def _manager(run_dir, **kw):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    kw.setdefault("retention", RetentionPolicy(keep_last=5, keep_best=0))
    return model, opt, CheckpointManager(run_dir, model, opt, sharded=True, log=lambda m: None, **kw)


def _train_and_save(run_dir, steps=(1, 2)):
    model, opt, mgr = _manager(run_dir)
    for step in steps:
        model(torch.randn(2, 4)).sum().backward()
        opt.step()
        mgr.save(epoch=0, step=step, samples_seen=step * 2)
    mgr.close()
    return model, opt


def test_saved_directory_is_one_sealed_unit_that_resumes_the_exact_state(tmp_path):
    model, opt = _train_and_save(tmp_path / "run")
    names = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert names == [".reprotrain.lock", "step0000000001-latest.dcp", "step0000000002-latest.dcp"]
    newest = tmp_path / "run" / "step0000000002-latest.dcp"
    doc = json.loads((newest / "reprotrain-manifest.json").read_text())
    assert {f["path"] for f in doc["files"]} == {".metadata", "__0_0.distcp"}
    seg = doc["manifest"]["lineage"][-1]
    assert seg["world_size"] == 1 and seg["rank_fingerprints"] == [doc["manifest"]["fingerprint_digest"]]
    entries = store.list_checkpoints(tmp_path / "run", deep=True)
    assert [e.valid for e in entries] == [True, True]
    assert store.select_for_resume(entries).path == newest

    model2, opt2, mgr2 = _manager(tmp_path / "run")
    info = mgr2.resume()
    mgr2.close()
    assert info.step == 2 and info.path == newest
    assert torch.equal(model2.weight, model.weight) and torch.equal(model2.bias, model.bias)
    assert torch.equal(opt2.state_dict()["state"][0]["momentum_buffer"], opt.state_dict()["state"][0]["momentum_buffer"])


@pytest.mark.parametrize("damage, problem", [
    ("flip", "__0_0.distcp: content differs from the sealed SHA-256"),
    ("truncate", "__0_0.distcp: size"),
    ("remove", "__0_0.distcp: missing"),
    ("add", "extra.bin: not sealed"),
    ("unseal", "sharded checkpoint without its reprotrain-manifest.json"),
])
def test_damaged_directory_is_exit_2_and_resume_takes_the_previous_one(tmp_path, damage, problem):
    _train_and_save(tmp_path / "run")
    newest = tmp_path / "run" / "step0000000002-latest.dcp"
    shard = newest / "__0_0.distcp"
    if damage == "flip":
        data = bytearray(shard.read_bytes())
        data[len(data) // 2] ^= 0x01
        shard.write_bytes(bytes(data))
    elif damage == "truncate":
        shard.write_bytes(shard.read_bytes()[:-1])
    elif damage == "remove":
        shard.unlink()
    elif damage == "add":
        (newest / "extra.bin").write_bytes(b"x")
    else:
        (newest / "reprotrain-manifest.json").unlink()
    result = run_cli("verify", str(newest))
    assert result.returncode == 2, result.stdout + result.stderr
    assert problem in result.stdout + result.stderr
    if damage == "flip":
        assert run_cli("inspect", str(newest)).returncode == 2

    logs = []
    model, opt = torch.nn.Linear(4, 3), None
    mgr = CheckpointManager(tmp_path / "run", model, sharded=True, log=logs.append)
    info = mgr.resume()
    mgr.close()
    assert info.step == 1, logs
    assert any(("skipping damaged checkpoint step0000000002-latest.dcp" in m
                or "skipping unreadable file step0000000002-latest.dcp" in m) and problem in m for m in logs), logs
    with pytest.raises(CorruptCheckpoint, match=problem.split(":")[0]):
        sharded.check(newest)


def test_retention_deletes_whole_directories_and_a_leftover_partial_goes_at_the_next_start(tmp_path):
    run = tmp_path / "run"
    model, opt, mgr = _manager(run, retention=RetentionPolicy(keep_last=2, keep_best=0))
    for step in (1, 2, 3):
        mgr.save(epoch=0, step=step, samples_seen=step)
    mgr.close()
    assert sorted(p.name for p in run.glob("*.dcp")) == ["step0000000002-latest.dcp", "step0000000003-latest.dcp"]
    assert not list(run.glob(".*partial"))
    # What a crash mid-save leaves: a partial directory with shard files and no sidecar. Never listed; removed.
    leftover = run / ".step0000000004-latest.dcp.partial"
    leftover.mkdir()
    (leftover / "__0_0.distcp").write_bytes(b"half")
    assert [e.path.name for e in store.list_checkpoints(run)] == ["step0000000002-latest.dcp",
                                                                 "step0000000003-latest.dcp"]
    _, _, mgr = _manager(run)
    mgr.close()
    assert not leftover.exists()


def test_a_plain_manager_skips_sharded_checkpoints_with_a_word(tmp_path):
    _train_and_save(tmp_path / "run", steps=(1,))
    logs = []
    mgr = CheckpointManager(tmp_path / "run", torch.nn.Linear(4, 3), log=logs.append)
    assert mgr.resume() is None
    mgr.close()
    assert any("resume it with CheckpointManager(..., sharded=True)" in m for m in logs), logs


def test_ls_and_diff_accept_sharded_directories(tmp_path):
    _train_and_save(tmp_path / "run")
    result = run_cli("ls", str(tmp_path / "run"), "--json")
    assert result.returncode == 0, result.stderr
    assert "step0000000002-latest.dcp" in result.stdout
    a, b = (str(tmp_path / "run" / f"step000000000{i}-latest.dcp") for i in (1, 2))
    result = run_cli("diff", a, b)
    assert result.returncode == 0, result.stderr  # same run, same environment; tensors are not compared
    assert "checkpoint directories: tensors not compared (manifests only)" in result.stdout


# ------------------------------------------------------------------------------------------------ async_save, one process
def _slow_writes(monkeypatch, seconds: float, fail: bool = False) -> list[str]:
    """Every DCP item write of the background save thread sleeps SECONDS (and raises OSError with FAIL); the
    caller's thread writes at full speed. Returns the writing threads' names."""
    import threading

    from torch.distributed.checkpoint import filesystem

    original, threads = filesystem._write_item, []

    def write_item(*args, **kwargs):
        threads.append(threading.current_thread().name)
        if threads[-1] == "reprotrain-save":
            time.sleep(seconds)
            if fail:
                raise OSError(28, "injected write failure")
        return original(*args, **kwargs)

    monkeypatch.setattr(filesystem, "_write_item", write_item)
    return threads


def test_async_sharded_save_stages_the_state_and_commits_it_in_the_background(tmp_path, monkeypatch):
    run = tmp_path / "run"
    model, opt, mgr = _manager(run, async_save=True)
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    threads = _slow_writes(monkeypatch, 0.05)
    started = time.perf_counter()
    path = mgr.save(epoch=0, step=1, samples_seen=2)
    returned = time.perf_counter() - started
    assert path == run / "step0000000001-latest.dcp" and not path.exists()  # not committed yet: in the background
    assert mgr.checkpoints_written == 0 and mgr.last_saved is None
    with torch.no_grad():  # the training thread goes on at once: the save holds the values it was given
        model.weight.add_(1.0)
    mgr.wait()
    assert set(threads) == {"reprotrain-save"} and returned < 0.05 * len(threads)
    assert mgr.checkpoints_written == 1 and mgr.last_saved == path
    assert [e.path.name for e in store.list_checkpoints(run, deep=True) if e.valid] == [path.name]
    mgr.close()

    model2, _, mgr2 = _manager(run)
    info = mgr2.resume()
    mgr2.close()
    assert info.step == 1 and all(torch.equal(v, saved[k]) for k, v in model2.state_dict().items())


def test_async_sharded_saves_commit_in_order_a_synchronous_save_waits_for_the_one_in_flight(tmp_path, monkeypatch):
    run = tmp_path / "run"
    model, opt, mgr = _manager(run, async_save=True)
    threads = _slow_writes(monkeypatch, 0.1)
    mgr.save(epoch=0, step=1, samples_seen=2)
    # Not a routine kind: written on the caller's thread (at full speed), after the background save in flight has
    # committed.
    interrupted = mgr.save("interrupted", epoch=0, step=2, samples_seen=4)
    assert "MainThread" in threads and "reprotrain-save" in threads
    assert mgr.last_saved == interrupted and mgr.checkpoints_written == 2
    mgr.close()
    assert [e.path.name for e in store.list_checkpoints(run, deep=True) if e.valid] == [
        "step0000000001-latest.dcp", "step0000000002-interrupted.dcp"]


def test_async_sharded_next_save_waits_for_the_one_in_flight_before_staging_over_its_buffers(tmp_path, monkeypatch):
    run = tmp_path / "run"
    model, opt, mgr = _manager(run, async_save=True)
    _slow_writes(monkeypatch, 0.05)
    expected = {}
    for step in (1, 2, 3):
        with torch.no_grad():
            model.weight.fill_(float(step))
        expected[step] = model.weight.detach().clone()
        mgr.save(epoch=0, step=step, samples_seen=step)  # the staging buffers are reused from one save to the next
    mgr.close()
    monkeypatch.undo()
    for step, weight in expected.items():
        model2, _, mgr2 = _manager(run)
        mgr2.resume(run / f"step000000000{step}-latest.dcp")
        mgr2.close()
        assert torch.equal(model2.weight, weight), step


def test_async_sharded_save_failure_is_raised_at_the_next_save_and_the_previous_checkpoint_stays(tmp_path,
                                                                                               monkeypatch):
    run = tmp_path / "run"
    model, opt, mgr = _manager(run, async_save=True)
    mgr.save(epoch=0, step=1, samples_seen=2)
    mgr.wait()
    _slow_writes(monkeypatch, 0.0, fail=True)
    mgr.save(epoch=0, step=2, samples_seen=4)  # returns: the failure happens in the background
    deadline = time.monotonic() + 30
    while mgr._saver._error is None:  # the background save has failed (not waited for: that would raise it)
        assert time.monotonic() < deadline
        time.sleep(0.01)
    mgr.step_done(epoch=0, step=3, samples_seen=6)  # a sharded run raises it at the next save, wait() or close()
    with pytest.raises(CorruptCheckpoint, match=r"saving step0000000002-latest.dcp failed: dcp.save: "
                                                r"rank 0: \[Errno 28\] injected write failure"):
        mgr.save(epoch=0, step=3, samples_seen=6)
    assert not (run / "step0000000003-latest.dcp").exists()  # the save that raised it did not start
    monkeypatch.undo()
    assert mgr.checkpoints_written == 1 and mgr.last_saved == run / "step0000000001-latest.dcp"
    assert not list(run.glob(".*partial")) and not (run / "step0000000002-latest.dcp").exists()
    mgr.save(epoch=0, step=4, samples_seen=8)  # the manager goes on
    mgr.close()
    assert [e.path.name for e in store.list_checkpoints(run, deep=True) if e.valid] == [
        "step0000000001-latest.dcp", "step0000000004-latest.dcp"]


# ------------------------------------------------------------------------------------------------ torchrun
def _torchrun(nproc: int, run_dir: Path, steps: int, *extra: str, **env) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
           "--max-restarts", "0", "--monitor-interval", "0.2", str(LOOP), str(run_dir), str(steps), *extra]
    full = {**os.environ, **{k: str(v) for k, v in env.items()}}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=full,
                            cwd=PROJECT_ROOT)


def _finish(proc, timeout=240) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def _losses(run_dir: Path, rank: int = 0) -> list[dict]:
    return [json.loads(x) for x in (run_dir / f"loss-rank{rank}.jsonl").read_text().splitlines()]


def _valid(run_dir: Path) -> list[store.Entry]:
    return [e for e in store.list_checkpoints(run_dir, deep=True) if e.valid]


def test_fsdp_damaged_shard_is_detected_by_verify_and_skipped_by_resume(tmp_path):
    run = tmp_path / "run"
    code, out = _finish(_torchrun(2, run, 6))
    assert code == 0, out
    newest = run / "step0000000006-latest.dcp"
    doc = json.loads((newest / "reprotrain-manifest.json").read_text())
    assert sorted(f["path"] for f in doc["files"]) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    seg = doc["manifest"]["lineage"][-1]
    assert seg["world_size"] == 2 and len(seg["rank_fingerprints"]) == 2
    assert all(d in doc["manifest"]["environments"] for d in seg["rank_fingerprints"])
    shard = newest / "__1_0.distcp"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    result = run_cli("verify", str(newest))
    assert result.returncode == 2 and "__1_0.distcp: content differs" in result.stdout + result.stderr

    code, out = _finish(_torchrun(2, run, 8))
    assert code == 0, out
    assert "skipping damaged checkpoint step0000000006-latest.dcp: __1_0.distcp: content differs" in out
    assert "resuming from" in out and "step0000000004-latest.dcp" in out
    losses = _losses(run)
    first, again = losses[:6], losses[6:]
    assert [x["step"] for x in again] == [5, 6, 7, 8]
    assert again[:2] == first[4:6]  # steps 5 and 6 redone from the step-4 shards: the same losses, bit for bit


def test_fsdp_sigterm_to_one_rank_then_resume_at_world_size_4_and_back_to_2_reshards(tmp_path):
    run, pids = tmp_path / "run", tmp_path / "pids"
    pids.mkdir()
    proc = _torchrun(2, run, 40, FSDP_TEST_PID_DIR=pids, FSDP_TEST_DELAY="0.2")
    deadline = time.monotonic() + 180
    while not (run / "step0000000004-latest.dcp").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read() if proc.poll() else "timeout"
        time.sleep(0.05)
    os.kill(int((pids / "rank1.pid").read_text()), signal.SIGTERM)
    code, out = _finish(proc)
    assert code == 1, out  # both workers exit 143; torchrun reports failed workers with 1
    # A library loop: the manager says it stops the loop (Interrupted); "exiting with code" is the CLI's wording.
    assert out.count("stopping the loop (Interrupted)") == 2, out
    interrupted = [e for e in _valid(run) if e.info.manifest["kind"] == "interrupted"]
    assert len(interrupted) == 1, out
    stopped = interrupted[0].info.manifest
    assert 4 <= stopped["step"] < 40 and stopped["lineage"][-1]["end_reason"] == "preempted"

    end = stopped["step"] + 4
    code, out = _finish(_torchrun(4, run, end))
    assert code == 0, out
    assert f"resuming from {interrupted[0].path}" in out
    assert "world size changes from 2 to 4: model and optimizer state are resharded" in out
    done = max(_valid(run), key=lambda e: e.info.manifest["step"]).info.manifest
    assert done["step"] == end and [s["world_size"] for s in done["lineage"]] == [2, 4]
    assert len(done["lineage"][-1]["rank_fingerprints"]) == 4
    resumed = [x for x in _losses(run) if x["world"] == 4]
    assert [x["step"] for x in resumed] == list(range(stopped["step"] + 1, end + 1))
    # The loss continues: the same global batches as at world size 2, within float reduction-order noise.
    reference = {x["step"]: x["loss"] for x in _losses(run) if x["world"] == 2}
    if stopped["step"] + 1 in reference:  # a step taken at world size 2 before the signal arrived between saves
        assert reference[stopped["step"] + 1] == pytest.approx(resumed[0]["loss"], rel=1e-4)
    assert all(x["loss"] < 10 for x in resumed)

    # And back to world size 2: 2 -> 4 -> 2.
    code, out = _finish(_torchrun(2, run, end + 2))
    assert code == 0, out
    assert "world size changes from 4 to 2: model and optimizer state are resharded" in out
    done = max(_valid(run), key=lambda e: e.info.manifest["step"]).info.manifest
    assert done["step"] == end + 2 and [s["world_size"] for s in done["lineage"]] == [2, 4, 2]


def test_fsdp_rank_killed_mid_save_leaves_the_previous_checkpoint_valid(tmp_path):
    run = tmp_path / "run"
    code, out = _finish(_torchrun(2, run, 8, FSDP_TEST_KILL_RANK1_AT_SAVE="2"))
    assert code != 0, out
    valid = _valid(run)
    assert [e.path.name for e in valid] == ["step0000000002-latest.dcp"], out
    assert not (run / "step0000000004-latest.dcp").exists()
    assert store.select_for_resume(store.list_checkpoints(run)).path.name == "step0000000002-latest.dcp"
    assert run_cli("verify", str(valid[0].path)).returncode == 0


def test_train_strategy_fsdp_sigterm_to_one_rank_then_resume(tmp_path):
    from test_distributed import N_TRAIN, STEPS_W2, TASK, finish, metrics, pid_of, reached_step, torchrun, wait_for

    run, pids, saves = tmp_path / "run", tmp_path / "pids", tmp_path / "saves"
    pids.mkdir()
    saves.mkdir()
    proc = torchrun(2, "--run-dir", str(run), "--epochs", "1", "--strategy", "fsdp", *TASK,
                    REPROTRAIN_TEST_PID_DIR=pids, REPROTRAIN_TEST_DELAY="0.002", REPROTRAIN_TEST_SAVE_LOG=saves)
    wait_for(reached_step(run, 7), proc, "step 7")
    os.kill(pid_of(pids, 1), signal.SIGTERM)
    code, out = finish(proc)
    assert code == 1, out
    assert out.count("exiting with code 143") == 2, out
    interrupted = [e for e in _valid(run) if e.info.manifest["kind"] == "interrupted"]
    assert len(interrupted) == 1 and interrupted[0].path.suffix == ".dcp", out
    stopped = interrupted[0].info.manifest
    assert 7 <= stopped["step"] < STEPS_W2 and stopped["lineage"][-1]["end_reason"] == "preempted"
    assert len(stopped["lineage"][-1]["rank_fingerprints"]) == 2

    code, out = finish(torchrun(2, "--run-dir", str(run), "--strategy", "fsdp", *TASK, REPROTRAIN_TEST_SAVE_LOG=saves))
    assert code == 0, out
    assert f"resuming from {interrupted[0].path}" in out
    # Routine saves were committed by each rank's background saver, the interrupted one by the training thread.
    for rank in (0, 1):
        committed = [line.split() for line in (saves / f"saves-rank{rank}.txt").read_text().splitlines()]
        assert any(thread == "reprotrain-save" and not name.endswith("-interrupted.dcp")
                   for thread, name in committed), committed
        assert [thread for thread, name in committed if name.endswith("-interrupted.dcp")] == ["MainThread"]
    done = max(_valid(run), key=lambda e: e.info.manifest["step"]).info.manifest
    assert done["step"] == STEPS_W2 and done["samples_seen"] == N_TRAIN
    assert [(s["world_size"], s["end_reason"]) for s in done["lineage"]] == [(2, "preempted"), (2, "completed")]
    assert [m for m in metrics(run) if m["kind"] == "resume"][0]["step"] == stopped["step"]


_SAVER = """
import sys, torch
from reprotrain.checkpoint import CheckpointManager
from reprotrain.checkpoint.policies import RetentionPolicy
torch.manual_seed(0)
model = torch.nn.Linear(256, 256)
mgr = CheckpointManager(sys.argv[1], model, sharded=True, log=lambda m: None,
                        retention=RetentionPolicy(keep_last=2, keep_best=0))
info = mgr.resume()
step = info.step if info else 0
while True:
    step += 1
    with torch.no_grad():
        model.weight.add_(1.0)
    mgr.save(epoch=0, step=step, samples_seen=step)
    if step == (info.step if info else 0) + 1:
        print("ready", flush=True)  # one save committed: the kills land among the saves and deletions that follow
"""


def test_crash_torture_sigkill_at_random_instants_of_sharded_saves(tmp_path):
    """SIGKILL a process that saves sharded checkpoints (and deletes old ones) in a loop, at random instants; after
    every kill each listed checkpoint is whole, resume picks one, and its weights are those of its step."""
    import random

    run = tmp_path / "run"
    rng = random.Random(14)
    kills = interrupted_saves = 0
    for _ in range(5):
        proc = subprocess.Popen([sys.executable, "-c", _SAVER, str(run)], stdout=subprocess.PIPE, text=True,
                                cwd=PROJECT_ROOT, env={**os.environ, "PYTHONWARNINGS": "ignore"})
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.0, 1.0))
        proc.kill()
        proc.wait()
        kills += 1
        entries = store.list_checkpoints(run, deep=True)
        assert all(e.valid for e in entries), [(e.path.name, e.problem) for e in entries]
        assert not any(p.suffix == ".dcp" and not p.is_dir() for p in run.iterdir())
        interrupted_saves += bool(list(run.glob(".*partial")))
        assert entries
        if True:
            model = torch.nn.Linear(256, 256)
            mgr = CheckpointManager(run, model, sharded=True, log=lambda m: None)
            info = mgr.resume()
            mgr.close()
            torch.manual_seed(0)
            expected = torch.nn.Linear(256, 256).weight.detach().clone()
            for _ in range(info.step):  # the saver's own sequence of additions
                expected.add_(1.0)
            assert torch.equal(model.weight, expected), info.path
            assert not list(run.glob(".*partial"))  # the resume's writer removed what the kill left
    assert kills == 5 and interrupted_saves >= 1  # not vacuous: some kills landed inside a save or a deletion


# ------------------------------------------------------------------------------------------------ async_save, torchrun
def _saves(run_dir: Path, rank: int) -> list[dict]:
    return [json.loads(x) for x in (run_dir / f"saves-rank{rank}.jsonl").read_text().splitlines()]


def _shard_digests(directory: Path) -> dict:
    doc = json.loads((directory / "reprotrain-manifest.json").read_text())
    return {f["path"]: f["sha256"] for f in doc["files"] if f["path"] != ".metadata"}  # .metadata has a save id


def test_fsdp_async_saves_run_in_the_background_on_their_own_group_and_resume_what_a_sync_run_saves(tmp_path):
    background, sync = tmp_path / "async", tmp_path / "sync"
    code, out = _finish(_torchrun(2, background, 6, FSDP_TEST_ASYNC=1))
    assert code == 0, out
    code, out = _finish(_torchrun(2, sync, 6))
    assert code == 0, out
    for rank in (0, 1):
        records = _saves(background, rank)
        saves = [r for r in records if "name" in r]
        assert [r["name"] for r in saves] == [f"step000000000{s}-latest.dcp" for s in (2, 4, 6, 6)]  # 6: finish()
        assert all(r["thread"] == "reprotrain-save" and r["own_group"] for r in saves), records
        collectives = [r for r in records if "collective" in r]
        assert collectives and all(r["own_group"] for r in collectives), records  # DCP's and reprotrain's
        assert all(r["thread"] == "MainThread" and not r["own_group"] for r in _saves(sync, rank) if "name" in r)
        groups = [r for r in records if "groups_after_close" in r]  # the manager's own group is given back
        assert groups and groups[0]["groups_after_close"] == groups[0]["groups_before_manager"], records
    # The same shards, byte for byte, as the synchronous path writes at the same steps.
    for step in (4, 6):
        name = f"step000000000{step}-latest.dcp"
        assert _shard_digests(background / name) == _shard_digests(sync / name)
        assert run_cli("verify", str(background / name)).returncode == 0
    assert _losses(background) == _losses(sync)

    # Resumed from step 4, steps 5 and 6 are redone bit for bit.
    code, out = _finish(_torchrun(2, background, 6, "--resume", str(background / "step0000000004-latest.dcp"),
                                  FSDP_TEST_ASYNC=1))
    assert code == 0, out
    losses = _losses(background)
    assert [x["step"] for x in losses] == [1, 2, 3, 4, 5, 6, 5, 6] and losses[6:] == losses[4:6]


def test_fsdp_async_save_failure_on_one_rank_fails_it_on_every_rank_and_keeps_the_previous_checkpoint(tmp_path):
    run = tmp_path / "run"
    # Rank 1's 2nd background save (step 4) raises while writing its shard; it surfaces at the next save (step 6).
    code, out = _finish(_torchrun(2, run, 8, FSDP_TEST_ASYNC=1, FSDP_TEST_FAIL_RANK1_AT_SAVE=2))
    assert code == 1, out
    message = ("saving step0000000004-latest.dcp failed: rank 0: dcp.save: rank 1: [Errno 28] injected write "
               "failure")
    assert out.count(f"CorruptCheckpoint: {run}: {message}") == 2, out  # every rank
    assert [x["step"] for x in _losses(run)] == [1, 2, 3, 4, 5, 6]
    assert [e.path.name for e in _valid(run)] == ["step0000000002-latest.dcp"], out
    assert sorted(p.name for p in run.iterdir() if p.name.startswith("step") or p.name.startswith(".step")) == [
        "step0000000002-latest.dcp"]  # no partial directory, nothing of steps 4 or 6
    assert store.select_for_resume(store.list_checkpoints(run)).path.name == "step0000000002-latest.dcp"

    code, out = _finish(_torchrun(2, run, 4, FSDP_TEST_ASYNC=1))
    assert code == 0, out
    assert f"resuming from {run / 'step0000000002-latest.dcp'}" in out
    assert [e.path.name for e in _valid(run)] == ["step0000000002-latest.dcp", "step0000000004-latest.dcp"]


def test_fsdp_async_sigterm_to_one_rank_gives_one_interrupted_checkpoint_that_resumes(tmp_path):
    run, pids = tmp_path / "run", tmp_path / "pids"
    pids.mkdir()
    # Slow shard writes: a background save is in flight most of the time, so the signal lands during one.
    proc = _torchrun(2, run, 60, FSDP_TEST_ASYNC=1, FSDP_TEST_PID_DIR=pids, FSDP_TEST_DELAY="0.05",
                     FSDP_TEST_SLOW_WRITE="0.02")
    deadline = time.monotonic() + 120
    while not (run / "step0000000004-latest.dcp").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read() if proc.poll() else "timeout"
        time.sleep(0.05)
    os.kill(int((pids / "rank1.pid").read_text()), signal.SIGTERM)
    code, out = _finish(proc)
    assert code == 1, out  # both workers exit 143
    assert out.count("stopping the loop (Interrupted)") == 2, out
    interrupted = [e for e in _valid(run) if e.info.manifest["kind"] == "interrupted"]
    assert len(interrupted) == 1, out
    stopped = interrupted[0].info.manifest
    assert 4 <= stopped["step"] < 60 and stopped["lineage"][-1]["end_reason"] == "preempted"
    assert not list(run.glob(".*partial"))
    # The routine save in flight when the signal came committed before the interrupted one, on both ranks.
    for rank in (0, 1):
        names = [r["name"] for r in _saves(run, rank) if "name" in r]
        assert names[-1] == interrupted[0].path.name and all("latest" in n for n in names[:-1]), names
        groups = [r for r in _saves(run, rank) if "groups_after_close" in r]
        assert groups and groups[0]["groups_after_close"] == groups[0]["groups_before_manager"]
    assert all(e.valid for e in store.list_checkpoints(run, deep=True))

    end = stopped["step"] + 4
    code, out = _finish(_torchrun(2, run, end, FSDP_TEST_ASYNC=1))
    assert code == 0, out
    assert f"resuming from {interrupted[0].path}" in out
    done = max(_valid(run), key=lambda e: e.info.manifest["step"]).info.manifest
    assert done["step"] == end and [s["end_reason"] for s in done["lineage"]] == ["preempted", "completed"]
    assert [x["step"] for x in _losses(run)][-4:] == list(range(stopped["step"] + 1, end + 1))
