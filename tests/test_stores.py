"""Every command on every store: a local directory, file://, memory:// and s3:// (a real moto S3 server).

One small run is trained per store (module scope) and every command runs on it. `ls`, `verify`, `inspect`, `diff`
and `report` must give the same answers as on a local copy of the same run (paths aside). The audit commands on the
store run as real subprocesses for local, file:// and s3://; memory:// lives inside one process, so there every
command runs in process through Click's CliRunner (a subprocess would see an empty memory filesystem). The
answers on the local copies (the reference) and the `train` commands run in process for every store, to keep the
module fast (a `train` subprocess on s3:// is in test_objectstore.py).
"""

from __future__ import annotations

import json
import os
import sys
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import CREDENTIALS, PROJECT_ROOT, run_cli

pytest.importorskip("s3fs", reason="s3fs is the S3 protocol for fsspec (extra: reprotrain[s3])")

EXAMPLES = PROJECT_ROOT / "examples"
STORES = ["local", "file", "memory", "s3"]
TASK = ["--task", "user_task:make_task", "--lr", "0.02", "--save", "epochs:1", "--keep-last", "3", "--log-every", "5"]


class Store:
    """One store: where runs go, and how to run the CLI against it."""

    def __init__(self, kind: str, root: str, s3=None):
        self.kind, self.root, self.s3 = kind, root, s3

    def url(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *parts])

    def cli(self, *args: str, process: bool = True) -> tuple[int, str, str]:
        """Run the CLI: a real subprocess, or in process (memory://, or ``process=False``)."""
        if self.kind == "memory" or not process:  # memory:// is not shared across processes
            from reprotrain.cli import main

            sys.path.insert(0, str(EXAMPLES))
            try:
                result = CliRunner().invoke(main, list(args), catch_exceptions=False)
            finally:
                sys.path.remove(str(EXAMPLES))
            return result.exit_code, result.stdout, result.stderr
        env = {"PYTHONPATH": os.pathsep.join([str(EXAMPLES), str(PROJECT_ROOT)]),
               "COLUMNS": "100"}  # a 100-column terminal
        if self.s3 is not None:
            env.update(CREDENTIALS, AWS_ENDPOINT_URL=self.s3.endpoint)
        proc = run_cli(*args, env=env, timeout=240)
        return proc.returncode, proc.stdout, proc.stderr

    def copy_to_local(self, run: str, target: Path) -> Path:
        """The run's checkpoints and metrics.jsonl as a plain local directory."""
        from reprotrain.checkpoint.location import Location

        target.mkdir(parents=True)
        location = Location(run)
        if location.is_local:
            names = [p.name for p in location.path.iterdir()]
            read = lambda name: (location.path / name).read_bytes()  # noqa: E731
        else:
            fs, key = location.filesystem()
            fs.invalidate_cache()
            names = [p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(key, detail=False)]
            read = lambda name: fs.cat_file(f"{key}/{name}")  # noqa: E731
        for name in names:
            if name.endswith(".pth") or name == "metrics.jsonl":
                (target / name).write_bytes(read(name))
        return target


@pytest.fixture(scope="module", params=STORES)
def store(request, tmp_path_factory):
    kind = request.param
    if kind == "local":
        yield Store(kind, str(tmp_path_factory.mktemp("local")))
    elif kind == "file":
        yield Store(kind, tmp_path_factory.mktemp("file").as_uri())
    elif kind == "memory":
        yield Store(kind, f"memory://reprotrain-tests-{uuid.uuid4().hex[:8]}")
    else:
        s3 = request.getfixturevalue("s3")
        bucket = f"stores-{uuid.uuid4().hex[:8]}"
        s3.client().create_bucket(Bucket=bucket)
        yield Store(kind, f"s3://{bucket}", s3)


@pytest.fixture(scope="module")
def run(store):
    """A finished two-epoch run with one checkpoint per epoch, trained through the library API."""
    from reprotrain.training import train

    sys.path.insert(0, str(EXAMPLES))
    try:
        result = train(store.url("run"), options={"task": "user_task:make_task", "lr": 0.02, "epochs": 2,
                                                   "save": "epochs:1", "keep_last": 3, "log_every": 5}, quiet=True)
    finally:
        sys.path.remove(str(EXAMPLES))
    assert result.status == "completed" and result.checkpoints_written >= 2
    return store.url("run")


@pytest.fixture(scope="module")
def local_copy(store, run, tmp_path_factory):
    return store.copy_to_local(run, tmp_path_factory.mktemp("copy") / "run")


@pytest.fixture(scope="module")
def names(store, run) -> list[str]:
    """The run's checkpoint names, oldest first (the library's listing)."""
    from reprotrain.checkpoint import list_checkpoints

    return [e.path.name for e in list_checkpoints(run)]


def _json(store: Store, *args: str, expect: int = 0, process: bool = True) -> dict:
    code, out, err = store.cli(*args, "--json", process=process)
    assert code == expect, (args, code, err)
    assert "Traceback" not in err
    return json.loads(out)


def _same(doc: dict, remote: str, local: Path) -> str:
    """The JSON text with the run's location replaced, so a remote and a local answer can be compared."""
    return json.dumps(doc, sort_keys=True).replace(remote.rstrip("/"), "<run>").replace(str(local), "<run>")


def _names(listing: dict) -> list[str]:
    return [row["name"] for row in listing["checkpoints"]]


def test_ls(store, run, local_copy, names):
    remote = _json(store, "ls", run)
    local = _json(store, "ls", str(local_copy), process=False)
    assert _names(remote) == names
    assert len(remote["checkpoints"]) >= 2 and all(row["valid"] for row in remote["checkpoints"])
    assert remote["resume"] == f"{run}/{_names(remote)[-1]}"  # a URL stays a URL (never s3:/...)
    assert all(row["size"] > 0 for row in remote["checkpoints"])
    assert _same(remote, run, local_copy) == _same(local, run, local_copy)


def test_ls_human_fits_100_columns(store, run, names):
    code, out, err = store.cli("ls", run)
    assert code == 0, err
    table = out.splitlines()[1:-1]  # between the title (the run's location) and "resume would pick"
    assert max(len(line) for line in table) <= 100, out
    assert table[0].split() == ["name", "kind", "epoch", "step", "val_accuracy", "size", "created", "valid"]
    assert [line[2:].split()[0] for line in table[1:]] == names  # every name whole, in order
    assert all(line.rstrip().endswith("yes") for line in table[1:])  # one line per checkpoint: nothing wrapped
    assert table[-1].startswith("* " + names[-1])  # resume's pick


def test_verify(store, run, local_copy, names):
    remote = _json(store, "verify", *(f"{run}/{n}" for n in names))
    local = _json(store, "verify", *(str(local_copy / n) for n in names), process=False)
    assert remote["exit_code"] == 0 and [r["category"] for r in remote["results"]] == ["checkpoint"] * len(names)
    assert [r["path"] for r in remote["results"]] == [f"{run}/{n}" for n in names]
    assert all(r["integrity"]["ok"] for r in remote["results"])
    # verify compares with the live environment, which differs between a process that imported torch and one
    # that did not (a static fingerprint): compare the store with its local copy within one process.
    in_process = _json(store, "verify", *(f"{run}/{n}" for n in names), process=False)
    assert _same(in_process, run, local_copy) == _same(local, run, local_copy)


def test_verify_damaged(store, run, names):
    """A damaged copy on the same store is CORRUPT (exit 2), and a missing one is one line, no traceback."""
    from reprotrain.checkpoint.location import Location

    data = bytearray(Location(f"{run}/{names[-1]}").read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged = store.url("damaged", f"{uuid.uuid4().hex[:6]}.pth")
    target = Location(damaged)
    if target.is_local:
        target.path.parent.mkdir(parents=True, exist_ok=True)
        target.path.write_bytes(bytes(data))
    else:
        fs, key = target.filesystem()
        fs.pipe_file(key, bytes(data))
    doc = _json(store, "verify", damaged, expect=2, process=False)
    assert doc["results"][0]["category"] == "corrupt"
    code, out, err = store.cli("verify", store.url("nothing-here.pth"), process=False)
    assert code == 2 and "Traceback" not in err and "nothing-here.pth" in out


def test_signed_checkpoint_verifies_trusted_and_a_same_crc_forgery_does_not(store, tmp_path):
    """Signature format 2 on every store: the tensors' SHA-256 is computed over the bytes read from the store."""
    import torch

    from reprotrain.checkpoint import CheckpointManager, signing
    from reprotrain.checkpoint.location import Location
    from test_signing import _forge_tensor

    key = tmp_path / "key"
    signing.write_key_pair(key)
    mgr = CheckpointManager(store.url("signed", uuid.uuid4().hex[:6]), torch.nn.Linear(8, 4), save_policy="never",
                            signing_key=key, log=lambda m: None)
    signed = str(mgr.save("latest", epoch=0, step=1, samples_seen=4))
    mgr.close()
    doc = _json(store, "verify", signed, "--trusted-key", str(key) + ".pub", "--require-signature", process=False)
    assert doc["results"][0]["signature"]["status"] == "trusted"
    (tmp_path / "signed.pth").write_bytes(Location(signed).read_bytes())
    forged_bytes = _forge_tensor(tmp_path / "signed.pth", tmp_path / "forged.pth").read_bytes()
    forged = Location(store.url("signed", f"forged-{uuid.uuid4().hex[:6]}.pth"))
    if forged.is_local:
        forged.path.write_bytes(forged_bytes)
    else:
        fs, path = forged.filesystem()
        fs.pipe_file(path, forged_bytes)
    doc = _json(store, "verify", str(forged), "--trusted-key", str(key) + ".pub", expect=5, process=False)
    assert doc["results"][0]["category"] == "signature-bad", doc


def test_inspect(store, run, local_copy, names):
    remote = _json(store, "inspect", f"{run}/{names[-1]}")
    local = _json(store, "inspect", str(local_copy / names[-1]), process=False)
    assert remote["integrity"]["ok"] and remote["state_digest"].startswith("sha256:")
    assert _same(remote, run, local_copy) == _same(local, run, local_copy)


def test_diff(store, run, local_copy, names):
    first, last = names[0], names[-1]
    # Two steps of one run: same environment and lineage, other weights (exit 6, tensors differ).
    remote = _json(store, "diff", f"{run}/{first}", f"{run}/{last}", expect=6)
    local = _json(store, "diff", str(local_copy / first), str(local_copy / last), expect=6, process=False)
    mixed = _json(store, "diff", f"{run}/{last}", str(local_copy / last))  # a store and a local file
    assert remote["lineage"]["same_run"] and any(row["field"] == "step" for row in remote["manifest"])
    assert mixed["tensors"]["model_and_optimizer"]["identical"]
    assert _same(remote, run, local_copy) == _same(local, run, local_copy)
    assert mixed["identical_environment_and_lineage"] and mixed["manifest"] == []


def test_report(store, run, local_copy, tmp_path):
    remote = _json(store, "report", run, "-o", str(tmp_path / "remote.html"))
    local = _json(store, "report", str(local_copy), "-o", str(tmp_path / "local.html"), process=False)
    assert remote["steps"] > 0 and len(remote["lineage"]) == 1
    remote.pop("output"), local.pop("output")
    assert _same(remote, run, local_copy) == _same(local, run, local_copy)


def test_train_resume_path(store, run, names):
    first = names[0]
    target = store.url(f"resumed-{uuid.uuid4().hex[:6]}")
    doc = _json(store, "train", "--run-dir", target, *TASK, "--epochs", "2", "--resume", f"{run}/{first}", "--quiet",
                process=False)
    assert doc["status"] == "completed" and doc["epochs_completed"] == 2
    assert doc["resumed_from"] == f"{run}/{first}" and doc["run_dir"] == target


def test_train_fresh_refuses_then_overwrites(store):
    from reprotrain.checkpoint.location import Location

    target = store.url(f"fresh-{uuid.uuid4().hex[:6]}")
    _json(store, "train", "--run-dir", target, *TASK, "--epochs", "1", "--quiet", process=False)
    code, _, err = store.cli("train", "--run-dir", target, *TASK, "--epochs", "1", "--fresh", "--quiet", process=False)
    assert code == 1 and "--overwrite" in err and "Traceback" not in err
    second = _json(store, "train", "--run-dir", target, *TASK, "--epochs", "1", "--fresh", "--overwrite", "--quiet",
                   process=False)
    assert second["status"] == "completed" and second["resumes"] == 0
    metrics = [json.loads(line) for line in (Location(target) / "metrics.jsonl").read_text().splitlines()]
    assert [m["kind"] for m in metrics].count("start") == 1  # the old run was deleted, not continued


def test_library_api(store, run):
    """The library on the same store: list, read, resume into a fresh manager, the one Location type."""
    from reprotrain.checkpoint import CheckpointManager, list_checkpoints, read_valid
    from reprotrain.checkpoint.location import Location
    from reprotrain.checkpoint.storage import RunStorage, open_run_directory

    entries = list_checkpoints(run)
    assert entries and all(isinstance(e.path, Location) and str(e.path).startswith(run) for e in entries)
    assert isinstance(open_run_directory(run), RunStorage)
    info = read_valid(entries[-1].path)
    assert info.step == entries[-1].info.step and info.size == entries[-1].size

    sys.path.insert(0, str(EXAMPLES))
    try:
        from user_task import make_task

        from reprotrain.training.config import resolve
        task = make_task(resolve(info.manifest["config"]))
    finally:
        sys.path.remove(str(EXAMPLES))
    target = store.url(f"lib-{uuid.uuid4().hex[:6]}")
    mgr = CheckpointManager(target, task.model, task.optimizer, save_policy="never", log=lambda m: None)
    try:
        resumed = mgr.resume(entries[-1].path, required=True)
        assert resumed.step == info.step
        saved = mgr.save("latest", epoch=2, step=info.step, samples_seen=0, position={"epoch": 2, "batch": 0})
        assert str(saved) == f"{target}/{saved.name}"
    finally:
        mgr.close()
    assert [e.path.name for e in list_checkpoints(target)] == [saved.name]


def test_a_failed_commit_leaves_no_trace(store):
    """The storage protocol on every store: a commit whose writer dies mid-way names nothing (no pointer, no file),
    and the checkpoint committed before it stays listed and valid."""
    from reprotrain.checkpoint.storage import open_run_directory
    from reprotrain.errors import ReprotrainError

    run = open_run_directory(store.url(f"failed-{uuid.uuid4().hex[:6]}"))
    run.acquire()
    try:
        run.commit("step0000000001-latest.pth", lambda f: f.write(b"x" * 1000))

        def dies_mid_write(f):
            f.write(b"y" * (1 << 20))
            raise RuntimeError("the writer died")

        with pytest.raises((RuntimeError, ReprotrainError), match="the writer died"):  # object stores: one line
            run.commit("step0000000002-latest.pth", dies_mid_write)
        assert not [n for n in run.names() if n.startswith("step0000000002")], run.names()
        assert [p.name for p in run.checkpoint_paths()] == ["step0000000001-latest.pth"]
    finally:
        run.release()


def test_the_lease_is_a_conditional_create(store):
    """Object stores: creating the lease fails when another writer's lease appeared after it was read (the
    If-None-Match / mode="create" path), and the other writer's lease is left as it was."""
    if store.kind in ("local", "file"):
        pytest.skip("local run directories are locked by the kernel (reprotrain.checkpoint.lock), not by a lease")
    from reprotrain.checkpoint.location import Location
    from reprotrain.checkpoint.storage import RunDirectoryBusy
    from reprotrain.checkpoint.storage.fsspec import LEASE_NAME, ObjectRunDirectory

    url = store.url(f"lease-{uuid.uuid4().hex[:6]}")
    fs, key = Location(url).filesystem()
    theirs = json.dumps({"token": "theirs", "pid": 1, "host": "elsewhere", "since": "now", "expires": 4e9}).encode()
    fs.pipe_file(f"{key}/{LEASE_NAME}", theirs)
    mine = ObjectRunDirectory(url)
    mine._lease_token = "mine"
    with pytest.raises(RunDirectoryBusy, match="at the same moment"):
        mine._create_lease()
    fs.invalidate_cache()
    assert fs.cat_file(f"{key}/{LEASE_NAME}") == theirs
