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


def test_report_bad_input_is_one_line(tmp_path):
    result = run_cli("report", str(tmp_path / "nothing"), "-o", str(tmp_path / "r.html"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0 and "no metrics.jsonl" in result.stderr


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
