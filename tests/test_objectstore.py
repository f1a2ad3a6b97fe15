"""Run directories on S3, against a real moto S3 server over HTTP on 127.0.0.1 (a subprocess, not a patch)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

pytest.importorskip("s3fs", reason="s3fs is the S3 protocol for fsspec (extra: reprotrain[s3])")

from conftest import CREDENTIALS, MotoServer, run_cli  # noqa: E402,F401
from reprotrain.checkpoint import CheckpointManager, RetentionPolicy, store  # noqa: E402
from reprotrain.errors import ReprotrainError  # noqa: E402
from reprotrain.checkpoint.storage.fsspec import ObjectRunDirectory, ObjectStoreError  # noqa: E402

@pytest.fixture
def bucket(s3, request):
    name = "t-" + request.node.name.lower().replace("_", "-")[:50].strip("-")
    s3.client().create_bucket(Bucket=name)
    return name


def _manager(url, **kwargs):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return CheckpointManager(url, model, opt, save_policy="never", log=lambda m: None, **kwargs), model


def _save(mgr, model, step):
    with torch.no_grad():
        model.weight.add_(1.0)
    return mgr.save("latest", epoch=0, step=step, samples_seen=step * 8, position={"batch": step})


def test_save_commits_object_then_pointer_and_resume_reads_it_back(s3, bucket):
    url = f"s3://{bucket}/run"
    mgr, model = _manager(url)
    path = _save(mgr, model, 5)
    expected = model.weight.detach().clone()
    mgr.close()
    assert str(path) == f"{url}/step0000000005-latest.pth"
    keys = s3.keys(bucket)
    pointer = json.loads(s3.client().get_object(Bucket=bucket, Key="run/step0000000005-latest.pth.committed")["Body"].read())
    assert pointer["size"] == keys["run/step0000000005-latest.pth"] and len(pointer["sha256"]) == 64
    assert "run/.reprotrain.lease" not in keys  # released
    assert not any("testing" in json.dumps(pointer) for _ in [0])  # no credential in what we write

    mgr2, model2 = _manager(url)
    info = mgr2.resume(required=True)
    mgr2.close()
    assert info.step == 5 and info.position == {"batch": 5}
    assert torch.equal(model2.weight, expected)


def test_retention_deletes_only_after_the_newer_commit(s3, bucket):
    url = f"s3://{bucket}/run"
    mgr, model = _manager(url, retention=RetentionPolicy(keep_last=2, keep_best=0))
    for step in (1, 2, 3, 4):
        _save(mgr, model, step)
    mgr.close()
    names = sorted(k.split("/")[-1] for k in s3.keys(bucket) if k.endswith(".pth"))
    assert names == ["step0000000003-latest.pth", "step0000000004-latest.pth"]
    pointers = sorted(k.split("/")[-1] for k in s3.keys(bucket) if k.endswith(".committed"))
    assert pointers == [n + ".committed" for n in names]


def test_corrupt_object_is_skipped_and_resume_falls_back(s3, bucket):
    url = f"s3://{bucket}/run"
    mgr, model = _manager(url)
    _save(mgr, model, 1)
    _save(mgr, model, 2)
    mgr.close()
    key = "run/step0000000002-latest.pth"
    body = bytearray(s3.client().get_object(Bucket=bucket, Key=key)["Body"].read())
    body[len(body) // 2] ^= 0xFF  # same size: only the integrity check can tell
    s3.client().put_object(Bucket=bucket, Key=key, Body=bytes(body))
    notes = []
    mgr2, _ = _manager(url)
    mgr2.log = notes.append
    info = mgr2.resume(required=True)
    mgr2.close()
    assert info.step == 1
    assert any("skipping damaged checkpoint step0000000002-latest.pth" in n for n in notes)

    # Truncated: the size no longer matches the commit pointer.
    s3.client().put_object(Bucket=bucket, Key=key, Body=bytes(body[:1000]))
    entries = store.list_checkpoints(url)
    bad = [e for e in entries if not e.valid]
    assert len(bad) == 1 and "committed with" in bad[0].problem


def test_object_without_pointer_is_invisible_and_removed_by_the_next_writer(s3, bucket):
    url = f"s3://{bucket}/run"
    mgr, model = _manager(url)
    _save(mgr, model, 1)
    _save(mgr, model, 2)
    mgr.close()
    s3.client().delete_object(Bucket=bucket, Key="run/step0000000002-latest.pth.committed")  # crash before pointer
    assert [e.path.name for e in store.list_checkpoints(url)] == ["step0000000001-latest.pth"]
    notes = []
    rd = ObjectRunDirectory(url, log=notes.append)
    rd.acquire()
    rd.release()
    assert "run/step0000000002-latest.pth" not in s3.keys(bucket)
    assert any("uncommitted checkpoint object" in n for n in notes)


def test_lease_refuses_a_second_writer_and_a_dead_holder_frees_it(s3, bucket):
    url = f"s3://{bucket}/run"
    first = ObjectRunDirectory(url)
    first.acquire()
    with pytest.raises(store.RunDirectoryBusy, match="in use by another writer"):
        ObjectRunDirectory(url).acquire()
    first.release()
    # A lease left by a process that died on this host does not block the next writer.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lease = {"token": "x", "pid": int(dead.stdout), "host": socket.gethostname(), "since": "then",
             "expires": time.time() + 3600}
    s3.client().put_object(Bucket=bucket, Key="run/.reprotrain.lease", Body=json.dumps(lease).encode())
    second = ObjectRunDirectory(url)
    second.acquire()
    second.release()


def test_large_checkpoint_is_a_multipart_upload(s3, bucket):
    url = f"s3://{bucket}/run"
    rd = ObjectRunDirectory(url, part_size=5 << 20)
    rd.acquire()
    payload = os.urandom(12 << 20)
    rd.commit("big.pth", lambda f: [f.write(payload[i:i + (1 << 20)]) for i in range(0, len(payload), 1 << 20)])
    rd.release()
    head = s3.client().head_object(Bucket=bucket, Key="run/big.pth")
    assert head["ContentLength"] == len(payload)
    assert head["ETag"].strip('"').endswith("-3")  # three parts of 5, 5 and 2 MiB


def test_server_stopped_mid_upload_is_a_one_line_error_and_commits_nothing(s3):
    server = MotoServer()  # its own server: this test kills it
    try:
        server.client().create_bucket(Bucket="lost")
        options = {"endpoint_url": server.endpoint,
                   "config_kwargs": {"connect_timeout": 1, "read_timeout": 2, "retries": {"max_attempts": 1}}}
        rd = ObjectRunDirectory("s3://lost/run", storage_options=options, part_size=5 << 20, lease_ttl_s=600)
        rd.acquire()
        rd.commit("step0000000001-latest.pth", lambda f: f.write(b"x" * 1000))
        before = server.keys("lost")
        parts_sent = []

        def write_then_lose_network(f):
            f.write(os.urandom(6 << 20))  # the first 5 MiB part goes out
            parts_sent.append(len(server.client().list_multipart_uploads(Bucket="lost").get("Uploads", [])))
            server.proc.kill()  # the server dies mid-upload
            server.proc.wait(10)
            f.write(os.urandom(6 << 20))

        with pytest.raises(ObjectStoreError) as err:  # an error, not a hang (pytest-timeout bounds the wait)
            rd.commit("step0000000002-latest.pth", write_then_lose_network)
        assert parts_sent == [1]  # it really was mid-way through a multipart upload
        message = str(err.value)
        assert "\n" not in message and message.startswith("s3://lost/run: object store error while uploading")
        assert "previous checkpoints are intact" in message
        # Up to the failure, only the committed checkpoint had a pointer (a half upload is never named).
        assert [k for k in before if k.endswith(".committed")] == ["run/step0000000001-latest.pth.committed"]
        rd._stop.set()
    finally:
        server.stop()


def test_staging_uploads_in_background_and_reports_what_is_not_uploaded(s3, tmp_path):
    server = MotoServer()
    try:
        server.client().create_bucket(Bucket="staged")
        options = {"endpoint_url": server.endpoint,
                   "config_kwargs": {"connect_timeout": 1, "read_timeout": 2, "retries": {"max_attempts": 1}}}
        notes = []
        rd = ObjectRunDirectory("s3://staged/run", storage_options=options, staging_dir=tmp_path,
                                log=notes.append, drain_timeout_s=3, lease_ttl_s=600)
        rd.acquire()
        rd.commit("step0000000001-latest.pth", lambda f: f.write(b"a" * 1000))
        deadline = time.monotonic() + 20
        while rd.pending_uploads() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "run/step0000000001-latest.pth.committed" in server.keys("staged")
        server.proc.send_signal(signal.SIGSTOP)  # network gone: training keeps committing locally
        # Committed locally while the server is stopped: an upload on the commit path would fail here instead.
        local = rd.commit("step0000000002-latest.pth", lambda f: f.write(b"b" * 2000))
        assert local.read_bytes() == b"b" * 2000
        rd.release()
        status = json.loads((local.parent / "upload-status.json").read_text())
        assert status["pending"] == {"step0000000002-latest.pth": 2000}
        assert any(n.startswith("NOT YET UPLOADED to s3://staged/run: step0000000002-latest.pth") for n in notes)
        server.proc.send_signal(signal.SIGCONT)

        # The next start uploads what was left behind.
        rd2 = ObjectRunDirectory("s3://staged/run", storage_options=options, staging_dir=tmp_path,
                                 log=notes.append, lease_ttl_s=600)
        rd2.acquire()
        rd2.release()
        assert "run/step0000000002-latest.pth.committed" in server.keys("staged")
        assert json.loads((local.parent / "upload-status.json").read_text())["pending"] == {}
    finally:
        server.stop()


def test_unknown_protocol_is_one_line_error():
    with pytest.raises(ReprotrainError, match="cannot use this URL"):
        ObjectRunDirectory("nosuchproto://bucket/run")


def test_train_cli_on_s3_saves_resumes_and_mirrors_metrics(s3, bucket):
    env = {**CREDENTIALS, "AWS_ENDPOINT_URL": s3.endpoint}
    url = f"s3://{bucket}/run"
    first = run_cli("train", "--run-dir", url, "--epochs", "1", "--save", "steps:20", "--quiet", env=env)
    assert first.returncode == 0, first.stderr
    again = run_cli("train", "--run-dir", url, "--epochs", "2", "--quiet", "--json", env=env)
    assert again.returncode == 0, again.stderr
    result = json.loads(again.stdout)
    assert result["resumed_from"].startswith(url) and result["epochs_completed"] == 2
    keys = s3.keys(bucket)
    metrics = s3.client().get_object(Bucket=bucket, Key="run/metrics.jsonl")["Body"].read().decode().splitlines()
    kinds = [json.loads(line)["kind"] for line in metrics]
    assert kinds[0] == "start" and "resume" in kinds and kinds.count("epoch") == 2
    assert all(k.endswith((".pth", ".committed", "metrics.jsonl")) for k in keys)
    assert not any("testing" in line for line in metrics)
