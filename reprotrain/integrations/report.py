"""`reprotrain report`: one self-contained HTML page (inline SVG, no scripts from anywhere) about a run.

Sources: the run directory's metrics.jsonl (loss per step, validation metrics per epoch, start/resume lines)
and the newest valid checkpoint's manifest (lineage segments, environments). The PNG is a screenshot of
the page taken by headless Chromium.
"""

from __future__ import annotations

import html
import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from reprotrain.checkpoint import reader, store
from reprotrain.errors import ReprotrainError

METRICS_FILE = "metrics.jsonl"
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e")


@dataclass
class RunHistory:
    run_dir: str
    steps: dict[int, float] = field(default_factory=dict)               # step -> training loss
    epochs: dict[str, dict[int, float]] = field(default_factory=dict)   # metric -> {step: value}
    lineage: list[dict] = field(default_factory=list)
    markers: list[dict] = field(default_factory=list)                  # {step, kind, label}
    env_changes: list[dict] = field(default_factory=list)               # {segment, differences: [...]}
    run_id: str | None = None

    def to_dict(self) -> dict:
        return {"run_dir": self.run_dir, "run_id": self.run_id, "steps": len(self.steps),
                "metrics": sorted(self.epochs), "lineage": self.lineage, "markers": self.markers,
                "environment_changes": self.env_changes}


def _read_metrics(run_dir) -> list[dict]:
    location = reader.as_location(run_dir) / METRICS_FILE
    try:
        if reader.is_url(location):
            import fsspec

            with fsspec.open(location, "rt", encoding="utf-8") as f:
                text = f.read()
        else:
            text = Path(location).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ReprotrainError(f"no {METRICS_FILE}: not a reprotrain run directory", path=run_dir) from None
    except OSError as exc:
        raise ReprotrainError(f"cannot read {METRICS_FILE}: {exc}", path=run_dir) from None
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except ValueError:
            if number == len(text.splitlines()):
                continue  # a line cut by a crash mid-write
            raise ReprotrainError(f"{METRICS_FILE} line {number} is not JSON", path=run_dir) from None
    return records


def collect(run_dir: str | os.PathLike) -> RunHistory:
    """Everything the report shows, from metrics.jsonl and the checkpoints' manifests."""
    from reprotrain import fingerprint as fp

    history = RunHistory(os.fspath(run_dir))
    for record in _read_metrics(run_dir):
        kind, step = record.get("kind"), record.get("step")
        if kind == "step" and isinstance(step, int) and isinstance(record.get("loss"), (int, float)):
            history.steps[step] = float(record["loss"])  # a resumed run re-logs steps: the later value counts
        elif kind == "epoch" and isinstance(step, int):
            for name, value in record.items():
                if name not in ("kind", "time", "epoch", "step") and isinstance(value, (int, float)):
                    history.epochs.setdefault(name, {})[step] = float(value)
    entries = [e for e in store.list_checkpoints(run_dir) if e.valid]
    if entries:
        manifest = entries[-1].info.manifest
        history.run_id = manifest["run_id"]
        history.lineage = manifest["lineage"]
        environments = manifest["environments"]
        policy = fp.Policy.load()
        for previous, segment in zip(history.lineage, history.lineage[1:]):
            if previous["end_reason"] not in ("running", "completed"):
                history.markers.append({"step": previous["last_step"], "kind": "stop",
                                        "label": f"{previous['end_reason']} (segment {previous['segment']})"})
            history.markers.append({"step": segment["first_step"], "kind": "resume",
                                    "label": f"resumed (segment {segment['segment']})"})
            before, after = environments.get(previous["fingerprint_digest"]), environments.get(segment["fingerprint_digest"])
            if previous["fingerprint_digest"] != segment["fingerprint_digest"] and before and after:
                diffs = fp.compare(before, after, policy).differences
                history.env_changes.append({"segment": segment["segment"], "step": segment["first_step"],
                                            "differences": [{"field": d.field, "recorded": d.recorded,
                                                             "live": d.live, "severity": d.severity} for d in diffs]})
                history.markers.append({"step": segment["first_step"], "kind": "env",
                                        "label": f"environment changed (segment {segment['segment']})"})
    return history


def _svg_chart(title: str, series: dict[str, dict[int, float]], markers: list[dict], *, width=900, height=280) -> str:
    left, right, top, bottom = 60, 20, 30, 40
    points = [(s, v) for values in series.values() for s, v in values.items()]
    if not points:
        return f'<p class="empty">{html.escape(title)}: no data</p>'
    xs = [p[0] for p in points] + [m["step"] for m in markers]
    x0, x1 = min(xs), max(xs) or 1
    y0, y1 = min(p[1] for p in points), max(p[1] for p in points)
    if x1 == x0:
        x1 = x0 + 1
    if y1 == y0:
        y1 = y0 + 1
    sx = lambda x: left + (x - x0) / (x1 - x0) * (width - left - right)  # noqa: E731
    sy = lambda y: top + (1 - (y - y0) / (y1 - y0)) * (height - top - bottom)  # noqa: E731
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
             f'aria-label="{html.escape(title)}">',
             f'<text x="{left}" y="18" class="title">{html.escape(title)}</text>',
             f'<line x1="{left}" y1="{height - bottom}" x2="{width - right}" y2="{height - bottom}" class="axis"/>',
             f'<line x1="{left}" y1="{top}" x2="{left}" y2="{height - bottom}" class="axis"/>']
    for i in range(5):
        y = y0 + (y1 - y0) * i / 4
        x = x0 + (x1 - x0) * i / 4
        parts.append(f'<text x="{left - 6}" y="{sy(y) + 4:.1f}" text-anchor="end" class="tick">{y:.3g}</text>')
        parts.append(f'<text x="{sx(x):.1f}" y="{height - bottom + 16}" text-anchor="middle" class="tick">{x:.0f}</text>')
    parts.append(f'<text x="{width - right}" y="{height - 4}" text-anchor="end" class="tick">step</text>')
    colors = {"stop": "#d62728", "resume": "#2ca02c", "env": "#ff7f0e"}
    for m in markers:
        x = sx(m["step"])
        dash = "6,3" if m["kind"] == "env" else "3,3"
        parts.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{height - bottom}" stroke="{colors[m["kind"]]}" '
                     f'stroke-dasharray="{dash}" class="marker"><title>{html.escape(m["label"])} at step {m["step"]}'
                     f'</title></line>')
    for (name, values), color in zip(series.items(), _COLORS * 4):
        ordered = sorted(values.items())
        path = " ".join(f"{sx(s):.1f},{sy(v):.1f}" for s, v in ordered)
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{path}" class="series">'
                     f'<title>{html.escape(name)}</title></polyline>')
        if len(ordered) < 40:
            parts += [f'<circle cx="{sx(s):.1f}" cy="{sy(v):.1f}" r="2.5" fill="{color}"/>' for s, v in ordered]
    for i, name in enumerate(series):
        parts.append(f'<text x="{width - right - 150}" y="{top + 14 * (i + 1)}" fill="{_COLORS[i % 5]}" '
                     f'class="legend">{html.escape(name)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


_CSS = """body{font-family:sans-serif;margin:24px;color:#222;background:#fff}table{border-collapse:collapse;margin:8px 0 20px}
td,th{border:1px solid #ccc;padding:4px 8px;font-size:13px;text-align:left}th{background:#f3f3f3}
.axis{stroke:#444}.tick,.legend{font-size:11px}.title{font-size:14px;font-weight:bold}
.key span{display:inline-block;margin-right:16px;font-size:12px}.empty{color:#888}"""


def render_html(history: RunHistory) -> str:
    esc = html.escape
    rows = "".join(
        f"<tr><td>{s['segment']}</td><td>{s['first_step']}</td><td>{s['last_step']}</td><td>{esc(s['end_reason'] or '')}</td>"
        f"<td>{esc(s['started'])}</td><td>{esc(s.get('ended') or '')}</td><td>{esc(s.get('host') or '')}</td>"
        f"<td><code>{esc(s['fingerprint_digest'][:19])}</code></td><td>{esc(s.get('resumed_from') or '')}</td></tr>"
        for s in history.lineage)
    env = []
    for change in history.env_changes:
        diff_rows = "".join(f"<tr><td>{esc(d['field'])}</td><td>{esc(str(d['recorded']))}</td><td>{esc(str(d['live']))}</td>"
                            f"<td>{esc(d['severity'])}</td></tr>" for d in change["differences"])
        env.append(f"<h3>Resume into segment {change['segment']} (step {change['step']})</h3>"
                   f"<table><tr><th>field</th><th>before</th><th>after</th><th>severity</th></tr>{diff_rows}</table>")
    charts = [_svg_chart("training loss", {"loss": history.steps}, history.markers)]
    for name, values in sorted(history.epochs.items()):
        charts.append(_svg_chart(name, {name: values}, history.markers))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>reprotrain report: {esc(history.run_dir)}</title>
<style>{_CSS}</style></head><body>
<h1>Run report</h1>
<p>run directory <code>{esc(history.run_dir)}</code>, run id <code>{esc(history.run_id or '-')}</code>,
{len(history.lineage)} lineage segment(s), {len(history.steps)} logged steps</p>
<p class="key"><span style="color:#d62728">- - stopped (interrupted, preempted, lost, error)</span>
<span style="color:#2ca02c">- - resumed</span><span style="color:#ff7f0e">— — environment changed</span></p>
{''.join(f'<div class="chart">{c}</div>' for c in charts)}
<h2>Lineage</h2>
<table id="lineage"><tr><th>segment</th><th>first step</th><th>last step</th><th>end</th><th>started</th><th>ended</th>
<th>host</th><th>fingerprint</th><th>resumed from</th></tr>{rows}</table>
<h2>Environment differences at each resume</h2>
{''.join(env) or '<p>The environment fingerprint did not change between segments.</p>'}
</body></html>
"""


def find_chromium() -> str | None:
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def screenshot(html_path: str | os.PathLike, png_path: str | os.PathLike, *, width: int = 1000) -> None:
    """Render the page with headless Chromium and save a PNG of it."""
    chromium = find_chromium()
    if chromium is None:
        raise ReprotrainError("--png needs Chromium (apt-get install chromium); none found on PATH", path=png_path)
    height = 700 + 300 * Path(html_path).read_text(encoding="utf-8").count("<svg")
    with tempfile.TemporaryDirectory(prefix="reprotrain-chromium-") as profile:
        cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               f"--user-data-dir={profile}", f"--window-size={width},{height}",
               f"--screenshot={os.path.abspath(png_path)}", Path(html_path).resolve().as_uri()]
        try:
            result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        except subprocess.TimeoutExpired:
            raise ReprotrainError("Chromium did not finish the screenshot in 120 s", path=png_path) from None
    if result.returncode != 0 or not Path(png_path).is_file():
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise ReprotrainError(f"Chromium failed to take the screenshot: {last}", path=png_path)


def write_report(run_dir: str | os.PathLike, output: str | os.PathLike = "report.html",
                 png: str | os.PathLike | None = None) -> RunHistory:
    history = collect(run_dir)
    try:
        Path(output).write_text(render_html(history), encoding="utf-8")
    except OSError as exc:
        raise ReprotrainError(f"cannot write the report: {exc.strerror or exc}", path=output) from None
    if png is not None:
        screenshot(output, png)
    return history
