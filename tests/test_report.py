"""`reprotrain report`: the HTML page, checked in a real headless Chromium, and the PNG."""

from __future__ import annotations

import json
import subprocess

import pytest

from conftest import run_cli
from integrations_runs import run_interrupted_twice
from reprotrain.integrations.report import collect, find_chromium


def test_report_of_a_run_interrupted_twice(tmp_path):
    run_dir = tmp_path / "run"
    run_interrupted_twice(run_dir)
    history = collect(run_dir)
    assert len(history.lineage) == 3 and sorted(history.steps) == list(range(1, 16))
    assert [(m["kind"], m["step"]) for m in history.markers] == [("stop", 5), ("resume", 5), ("stop", 10),
                                                                 ("resume", 10)]
    out = tmp_path / "report.html"
    result = run_cli("report", str(run_dir), "-o", str(out), "--json")
    assert result.returncode == 0, result.stderr
    page = out.read_text()
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "") and "<script" not in page
    assert page.count("<svg") == 3 and page.count('class="marker"') == 12
    assert json.loads(result.stdout)["lineage"][2]["end_reason"] == "completed"


def test_report_bad_input_is_one_line_saying_what_is_missing(tmp_path):
    result = run_cli("report", str(tmp_path / "nothing"), "-o", str(tmp_path / "r.html"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0 and "no such run directory" in result.stderr
    (tmp_path / "empty").mkdir()
    empty = run_cli("report", str(tmp_path / "empty"), "-o", str(tmp_path / "r.html"))
    assert empty.returncode == 2 and empty.stderr.strip().count("\n") == 0
    assert "no metrics.jsonl and no valid checkpoint (no checkpoint files)" in empty.stderr
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "step0000000001-latest.pth").write_bytes(b"PK\x03\x04 not really")
    broken = run_cli("report", str(tmp_path / "broken"), "-o", str(tmp_path / "r.html"))
    assert broken.returncode == 2 and broken.stderr.strip().count("\n") == 0
    assert "1 checkpoint file(s), none valid (step0000000001-latest.pth: " in broken.stderr


def library_run(run_dir, **options):
    """A hand-written loop with a CheckpointManager only: no MetricsLog of its own."""
    import torch

    from reprotrain.checkpoint import CheckpointManager

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(32, 3), torch.randn(32, 1)
    for segment in range(2):  # stopped after epoch 1 (no finish), resumed, finished
        mgr = CheckpointManager(run_dir, model, opt, save_policy="epochs:1", log=lambda m: None, **options)
        info = mgr.resume()
        step = info.step if info else 0
        for epoch in range(segment, segment + 1):
            for _ in range(4):
                loss = ((model(x) - y) ** 2).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                step += 1
                mgr.step_done(epoch=epoch, step=step, samples_seen=32 * step, metrics={"loss": loss.item()})
            mgr.step_done(epoch=epoch + 1, step=step, samples_seen=32 * step, metrics={"val_loss": loss.item() / 2},
                          epoch_end=True)
        if segment == 0:
            mgr.close()
        else:
            mgr.finish()


@pytest.mark.parametrize("where", ["local", "memory"])
def test_report_of_a_library_only_run(tmp_path, where):
    run_dir = str(tmp_path / "run") if where == "local" else f"memory://reports-{tmp_path.name}/run"
    library_run(run_dir)
    history = collect(run_dir)
    assert sorted(history.steps) == list(range(1, 9)) and sorted(history.epochs) == ["val_loss"]
    assert sorted(history.epochs["val_loss"]) == [4, 8]
    assert len(history.lineage) == 2 and history.notes == []
    assert [(m["kind"], m["step"]) for m in history.markers] == [("stop", 4), ("resume", 4)]
    if where == "local":
        out = tmp_path / "report.html"
        result = run_cli("report", run_dir, "-o", str(out))
        assert result.returncode == 0, result.stderr
        assert out.read_text().count("<svg") == 2


def test_report_without_metrics_jsonl_uses_the_manifests_and_says_so(tmp_path):
    library_run(tmp_path / "run", write_metrics=False)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
    history = collect(tmp_path / "run")
    assert sorted(history.epochs["val_loss"]) == [4, 8]  # the epoch-end checkpoints kept by retention
    assert len(history.notes) == 1 and "no metrics.jsonl" in history.notes[0] and "2 checkpoint(s)" in history.notes[0]
    result = run_cli("report", str(tmp_path / "run"), "-o", str(tmp_path / "r.html"))
    assert result.returncode == 0 and "note: no metrics.jsonl" in result.stderr


def test_report_renders_in_headless_chromium_and_png(tmp_path):
    chromium = find_chromium()
    if chromium is None:
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    run_dir = tmp_path / "run"
    run_interrupted_twice(run_dir)
    out, png = tmp_path / "report.html", tmp_path / "report.png"
    result = run_cli("report", str(run_dir), "-o", str(out), "--png", str(png))
    assert result.returncode == 0, result.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    # The browser's own DOM after layout: the lineage table has its three segments, the charts are drawn.
    dom = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'p'}",
                          "--dump-dom", out.as_uri()], capture_output=True, text=True, timeout=120).stdout
    assert dom.count("<tr><td>") == 3 and dom.count("<polyline") == 3


def test_png_is_drawn_by_matplotlib_without_a_browser(tmp_path):
    import os

    import numpy as np
    from matplotlib.image import imread

    run_dir = tmp_path / "run"
    run_interrupted_twice(run_dir)
    png = tmp_path / "report.png"
    # PATH without any browser: the PNG no longer needs Chromium.
    result = run_cli("report", str(run_dir), "-o", str(tmp_path / "report.html"), "--png", str(png),
                     env={"PATH": os.path.dirname(os.sys.executable)})
    assert result.returncode == 0, result.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = imread(png)[..., :3]
    history = collect(run_dir)
    assert pixels.shape[1] == 1000 and pixels.shape[0] > 280 * (1 + len(history.epochs))

    def has(color: str) -> bool:
        rgb = np.array([int(color[i:i + 2], 16) / 255 for i in (1, 3, 5)])
        return bool((np.abs(pixels - rgb).max(axis=-1) < 0.02).any())

    # the loss curve and the stop and resume markers are drawn
    assert has("#1f77b4") and has("#d62728") and has("#2ca02c")
