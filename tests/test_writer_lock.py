"""The writer lock: every destructive run-directory operation holds it; it works without fcntl (issues 11, 13)."""

from __future__ import annotations

import ast
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from conftest import PROJECT_ROOT, run_cli
from reprotrain.checkpoint import CheckpointManager, list_checkpoints
from reprotrain.checkpoint.lock import LOCK_NAME, RunDirectoryBusy, WriterLock, mechanism
from reprotrain.checkpoint.store import RunDirectory, WriterLockNotHeld

TESTS_DIR = Path(__file__).resolve().parent
SLOW_TRAIN = ["train", "--task", "test_training_faults:slow_digits", "--epochs", "1", "--batch-size", "64", "--save",
              "steps:5", "--keep-last", "100", "--quiet"]


def _snapshot(run_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(run_dir.glob("*.pth"))}


def _start_and_stop_a_trainer(run_dir: Path) -> subprocess.Popen:
    """A real trainer holding RUN_DIR, stopped (SIGSTOP) after its first committed checkpoint."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")])}
    first = subprocess.Popen([sys.executable, "-m", "reprotrain", *SLOW_TRAIN, "--run-dir", str(run_dir)], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not list(run_dir.glob("*.pth")) and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert first.poll() is None, first.communicate()
    os.kill(first.pid, signal.SIGSTOP)  # hold it inside its run, whatever the machine's load
    return first


def test_a_second_trainer_of_any_kind_is_refused_and_deletes_nothing(tmp_path):
    """Issue 11: `train --fresh --overwrite` on a run directory in use exited 0 and deleted the first trainer's
    checkpoints. Now every second writer is refused (exit 2, naming the holder) before it decides anything."""
    run_dir = tmp_path / "run"
    first = _start_and_stop_a_trainer(run_dir)
    try:
        before = _snapshot(run_dir)
        metrics_before = (run_dir / "metrics.jsonl").read_bytes()
        seconds = {" ".join(args) or "resume": run_cli(*SLOW_TRAIN, "--run-dir", str(run_dir), *args,
                                                         env={"PYTHONPATH": str(TESTS_DIR)})
                   for args in (["--fresh", "--overwrite"], ["--fresh"], [])}
        after = _snapshot(run_dir)
        metrics_after = (run_dir / "metrics.jsonl").read_bytes()
    finally:
        os.kill(first.pid, signal.SIGCONT)
    out, err = first.communicate(timeout=300)
    for name, second in seconds.items():
        assert second.returncode == 2, (name, second.stderr)
        assert second.stderr.count("\n") == 1 and "Traceback" not in second.stderr, name
        assert f"in use by another writer (pid {first.pid} on {os.uname().nodename} since " in second.stderr, name
    assert before and after == before and metrics_after == metrics_before  # nothing deleted, nothing written
    assert first.returncode == 0, err
    entries = list_checkpoints(run_dir, deep=True)
    assert all(e.valid for e in entries) and set(before) <= {e.path.name for e in entries}
    kinds = [json.loads(line)["kind"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert kinds.count("start") == 1 and "resume" not in kinds


def test_fresh_overwrite_with_no_other_writer_still_replaces_the_run(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text('{"kind": "start"}\n')
    (run_dir / "step0000000001-latest.pth").write_bytes(b"old")
    (run_dir / "notes").mkdir()
    result = run_cli("train", "--run-dir", str(run_dir), "--fresh", "--overwrite", "--epochs", "1", "--save", "never",
                     "--quiet", "--json")
    assert result.returncode == 0, result.stderr
    assert "deleted the earlier run" in result.stderr
    assert not (run_dir / "notes").exists() and not (run_dir / "step0000000001-latest.pth").exists()
    assert (run_dir / LOCK_NAME).exists()


def test_fresh_in_a_directory_that_is_not_a_run_is_refused_without_leaving_a_lock(tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    result = run_cli("train", "--run-dir", str(tmp_path), "--fresh", "--overwrite", "--epochs", "1", "--quiet")
    assert result.returncode == 1 and "not a reprotrain run directory" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["precious.txt"]


def test_every_destructive_operation_needs_the_lock(tmp_path):
    """commit, delete, removal of partials and clearing refuse without the lock, and delete nothing."""
    (tmp_path / "step0000000001-latest.pth").write_bytes(b"x")
    (tmp_path / ".step0000000002-latest.pth.1.ab.partial").write_bytes(b"half")
    before = sorted(p.name for p in tmp_path.iterdir())
    run = RunDirectory(tmp_path)
    for operation in (lambda: run.delete("step0000000001-latest.pth"), run.remove_partials, run.clear,
                      lambda: run.commit("step0000000003-latest.pth", lambda f: f.write(b"new"))):
        with pytest.raises(WriterLockNotHeld, match="without holding the writer lock"):
            operation()
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    run.acquire()  # held: partials go, and the others work
    try:
        assert not list(tmp_path.glob("*.partial"))
        run.delete("step0000000001-latest.pth")
        assert run.clear() == []  # only the lock is left, and clear keeps it
        assert [p.name for p in tmp_path.iterdir()] == [LOCK_NAME]
    finally:
        run.release()


def test_the_lock_is_per_open_and_names_its_holder(tmp_path):
    first = WriterLock(tmp_path / LOCK_NAME)
    with first:
        assert first.held and first.acquire() is first  # re-acquiring a held lock is a no-op
        with pytest.raises(RunDirectoryBusy, match=rf"in use by another writer \(pid {os.getpid()} on "):
            WriterLock(tmp_path / LOCK_NAME).acquire()
        assert first.holder().startswith(f"pid {os.getpid()} on ")
    WriterLock(tmp_path / LOCK_NAME).acquire().release()  # released: a new writer gets in


def test_no_module_of_reprotrain_imports_fcntl_at_module_level():
    offenders = []
    for path in sorted((PROJECT_ROOT / "reprotrain").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:  # module level only: function bodies import it lazily where it exists
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) else []
            if any(name and name.split(".")[0] in ("fcntl", "msvcrt") for name in names):
                offenders.append(f"{path.relative_to(PROJECT_ROOT)}:{node.lineno}")
    assert offenders == []


SECOND_WRITER = textwrap.dedent("""
    import sys
    sys.modules["fcntl"] = None
    import torch
    from reprotrain.checkpoint import CheckpointManager, lock
    try:
        CheckpointManager(sys.argv[1], torch.nn.Linear(4, 4), save_policy="never", log=lambda m: None)
    except lock.RunDirectoryBusy as exc:
        print(exc.message)
    else:
        raise SystemExit("a second writer got in")
""")

NO_FCNTL = textwrap.dedent("""
    import sys
    SECOND_WRITER = sys.argv[3]
    sys.modules["fcntl"] = None  # `import fcntl` now raises ImportError, as on a platform without it
    import json, os, socket, torch
    from reprotrain.checkpoint import CheckpointManager, lock
    import reprotrain.training  # the whole training layer imports without fcntl too
    assert lock.mechanism() == "exclusive-file", lock.mechanism()
    run_dir, dead_pid = sys.argv[1], int(sys.argv[2])
    lock_file = os.path.join(run_dir, lock.LOCK_NAME)

    def manager():
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 4)
        return CheckpointManager(run_dir, model, torch.optim.SGD(model.parameters(), lr=0.1), save_policy="never",
                                 log=lambda m: None), model

    mgr, model = manager()
    with torch.no_grad():
        model.weight.add_(1.0)
    mgr.save("latest", epoch=0, step=3, samples_seen=12, position={"batch": 3})
    # A second writer is another process (in this one, a manager left open is taken over: issue 18's notebooks).
    import subprocess
    second = subprocess.run([sys.executable, "-c", SECOND_WRITER, run_dir], capture_output=True, text=True,
                            timeout=240)
    assert second.returncode == 0 and f"pid {os.getpid()} on " in second.stdout, (second.stdout, second.stderr)
    mgr.close()
    assert not os.path.exists(lock_file)  # released: the file that was the lock is gone
    mgr, fresh_model = manager()
    info = mgr.resume(required=True)
    assert info.step == 3 and torch.equal(fresh_model.weight, model.weight)
    mgr.close()
    # A lock file left by a holder that died on this host is taken over; one from another host is not.
    with open(lock_file, "w") as f:
        json.dump({"pid": dead_pid, "host": socket.gethostname(), "since": "then"}, f)
    manager()[0].close()
    with open(lock_file, "w") as f:
        json.dump({"pid": dead_pid, "host": "elsewhere.invalid", "since": "then"}, f)
    try:
        manager()
        raise SystemExit("a lock held on another host was taken")
    except lock.RunDirectoryBusy as exc:
        assert f"pid {dead_pid} on elsewhere.invalid since then" in exc.message, exc.message
    print("ok")
""")


def test_checkpoint_layer_saves_resumes_and_excludes_writers_without_fcntl(tmp_path):
    """Issue 13: no fcntl at module level; on a platform without fcntl (and msvcrt) the lock is an exclusive file."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    result = subprocess.run([sys.executable, "-c", NO_FCNTL, str(tmp_path), dead.stdout.strip(), SECOND_WRITER],
                            capture_output=True,
                            text=True, timeout=240)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_platform_mechanism_here_is_the_kernel_lock():
    assert mechanism() == ("msvcrt" if os.name == "nt" else "flock")


def test_manager_refuses_while_another_process_holds_the_directory(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys
        from reprotrain.checkpoint.lock import WriterLock
        lock = WriterLock({str(tmp_path / LOCK_NAME)!r}).acquire()
        print("locked", flush=True)
        sys.stdin.readline()
    """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunDirectoryBusy, match=rf"pid {holder.pid} on "):
            CheckpointManager(tmp_path, torch.nn.Linear(2, 2))
    finally:
        holder.kill()
        holder.wait()


def test_object_store_deletes_need_the_lease_and_fresh_overwrite_waits_for_it():
    """The same rule on an fsspec run directory (fsspec's in-memory file system: real fsspec code, one process):
    clearing, removing uncommitted objects and deleting need the lease; `--fresh --overwrite` while another writer
    holds it is refused and deletes nothing."""
    import fsspec

    from reprotrain.checkpoint.storage.fsspec import ObjectRunDirectory, ObjectStoreError
    from reprotrain.training import train

    url = f"memory://lease-{os.getpid()}-{time.monotonic_ns()}"
    fs = fsspec.filesystem("memory")
    root = url[len("memory://"):]
    fs.pipe_file(f"{root}/metrics.jsonl", b'{"kind": "start"}\n')
    fs.pipe_file(f"{root}/step0000000001-latest.pth", b"object")
    fs.pipe_file(f"{root}/step0000000001-latest.pth.committed", b"{}")
    before = sorted(fs.find(root))
    stranger = ObjectRunDirectory(url)
    for operation in (stranger.clear, stranger.remove_partials, lambda: stranger.delete("step0000000001-latest.pth")):
        with pytest.raises(ObjectStoreError, match="not acquired"):
            operation()
    holder = ObjectRunDirectory(url)
    holder.acquire()
    holder.acquire()  # idempotent: train acquires first, then the checkpoint manager acquires the same object
    try:
        with pytest.raises(RunDirectoryBusy, match=rf"in use by another writer \(pid {os.getpid()} on "):
            train(url, options={"epochs": 1}, fresh=True, overwrite=True, quiet=True, log=lambda m: None)
        assert sorted(p for p in fs.find(root) if not p.endswith(".reprotrain.lease")) == before
        holder.clear()  # the holder itself may clear: everything but its lease goes
        assert [p.rsplit("/", 1)[-1] for p in fs.find(root)] == [".reprotrain.lease"]
    finally:
        holder.release()
