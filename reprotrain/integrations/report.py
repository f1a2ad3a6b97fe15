"""`reprotrain report`: one self-contained HTML page (inline SVG, no scripts from anywhere) about a run.

Sources: the run directory's metrics.jsonl (loss per step, validation metrics per epoch, start/resume lines),
written by the bundled loop or by a CheckpointManager in your own loop (the metrics given to step_done), and the
newest valid checkpoint's manifest (lineage segments, environments). Without metrics.jsonl the curves come from
the metrics recorded in the checkpoints' manifests, and the report says so. The PNG draws the same charts
with matplotlib (the `png` extra); no browser is needed. `find_chromium()` remains for the tests that check
the HTML in a real browser.
"""

from __future__ import annotations

import html
import json
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from reprotrain.checkpoint import store
from reprotrain.checkpoint.location import Location
from reprotrain.checkpoint.storage.base import METRICS_FILE
from reprotrain.errors import ReprotrainError, os_error_message

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
    notes: list[str] = field(default_factory=list)                      # what the report could not show

    def to_dict(self) -> dict:
        return {"run_dir": self.run_dir, "run_id": self.run_id, "steps": len(self.steps),
                "metrics": sorted(self.epochs), "lineage": self.lineage, "markers": self.markers,
                "environment_changes": self.env_changes, "notes": self.notes}


_NOT_METRICS = frozenset({"kind", "time", "epoch", "step", "batch", "samples_seen", "samples_per_s", "world_size"})
_LINE_LIMIT = 1 << 20  # safeio.LIMITS["metrics-line"]


def _read_metrics(run_dir) -> list[dict] | None:
    """The records of metrics.jsonl; None when the run directory has none."""
    location = Location.of(run_dir) / METRICS_FILE
    try:
        if location.is_local:
            from reprotrain import safeio

            if not os.path.lexists(location.path):
                raise FileNotFoundError(location.path)
            # A regular file only (a FIFO named metrics.jsonl must not hang the report), at most the metrics limit;
            # decoded line by line, so that a bad line is named.
            data = safeio.read_regular(location.path, limit=safeio.LIMITS["metrics"], what=METRICS_FILE)
        else:
            data = location.read_bytes()
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ReprotrainError(f"cannot read {METRICS_FILE}: {os_error_message(exc)}", path=run_dir) from None
    records = []
    lines = data.split(b"\n")
    while lines and not lines[-1].strip():
        lines.pop()
    for number, line in enumerate(lines, 1):
        if len(line) > _LINE_LIMIT:
            raise ReprotrainError(f"{METRICS_FILE} line {number} is longer than {_LINE_LIMIT} bytes", path=run_dir)
        if not line.strip():
            continue
        try:
            record = _parse_line(line)
        except ValueError as exc:
            if number == len(lines):
                continue  # a line cut by a crash mid-write
            raise ReprotrainError(f"{METRICS_FILE} line {number} {exc}", path=run_dir) from None
        records.append(record)
    return records


def _parse_line(line: bytes) -> dict:
    """One metrics.jsonl record; ValueError saying what is wrong with the line."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("is not UTF-8") from None
    try:
        record = json.loads(text)
    except RecursionError:
        raise ValueError("is nested too deeply") from None
    except ValueError:
        raise ValueError("is not JSON") from None
    if not isinstance(record, dict):
        raise ValueError(f"is not a JSON object (got {type(record).__name__})")
    return record


def _number(value) -> float | None:
    """A finite number from a record, else None (bools, strings, NaN, infinities and overflowing ints do not plot)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        value = float(value)
    except OverflowError:
        return None
    return value if math.isfinite(value) else None


def _step(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63 else None


def collect(run_dir: str | os.PathLike) -> RunHistory:
    """Everything the report shows, from metrics.jsonl and the checkpoints' manifests."""
    from reprotrain import fingerprint as fp

    history = RunHistory(os.fspath(run_dir))
    records = _read_metrics(run_dir)
    if records is None and Location.of(run_dir).is_local and not os.path.isdir(Location.of(run_dir).path):
        raise ReprotrainError("no such run directory", path=run_dir)
    every = store.list_checkpoints(run_dir)
    entries = [e for e in every if e.valid]
    if records is None and not entries:
        if every:
            problems = "; ".join(f"{e.path.name}: {e.problem}" for e in every[:3]) + ("; ..." if len(every) > 3 else "")
            found = f"{len(every)} checkpoint file(s), none valid ({problems})"
        else:
            found = "no checkpoint files"
        raise ReprotrainError(f"nothing to report: no {METRICS_FILE} and no valid checkpoint ({found}); a run "
                              "directory written by `reprotrain train` or a CheckpointManager has both", path=run_dir)
    for record in records or []:
        kind, step = record.get("kind"), _step(record.get("step"))
        if kind == "step" and step is not None:
            for name, value in record.items():
                value = _number(value)
                if value is None or name in _NOT_METRICS:
                    continue
                if name == "loss":
                    history.steps[step] = value  # a resumed run re-logs steps: the later value counts
                else:
                    history.epochs.setdefault(name, {})[step] = value
        elif kind == "epoch" and step is not None:
            for name, value in record.items():
                if name not in _NOT_METRICS and _number(value) is not None:
                    history.epochs.setdefault(name, {})[step] = _number(value)
    if records is None:
        newest_run = entries[-1].info.manifest["run_id"]
        kept = [e.info.manifest for e in entries if e.info.manifest["run_id"] == newest_run]
        for manifest in kept:
            for name, value in (manifest.get("metrics") or {}).items():
                if _number(value) is not None:
                    target = history.steps if name == "loss" else history.epochs.setdefault(name, {})
                    target[manifest["step"]] = _number(value)
        history.notes.append(f"no {METRICS_FILE} in this run directory: the curves show only the metrics recorded "
                             f"in the {len(kept)} checkpoint(s) that retention kept (pass metrics to step_done, or "
                             f"keep the CheckpointManager's write_metrics on, for every step)")
    elif not history.steps and not history.epochs:
        history.notes.append(f"{METRICS_FILE} holds no metric values: pass metrics={{...}} to step_done "
                             "(e.g. {'loss': loss.item()}) to get curves")
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
{''.join(f'<p class="note">{esc(note)}</p>' for note in history.notes)}
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


_MARKER_COLORS = {"stop": "#d62728", "resume": "#2ca02c", "env": "#ff7f0e"}


def render_png(history: RunHistory, png_path: str | os.PathLike, *, width_px: int = 1000) -> None:
    """Draw the report's charts (training loss, each validation metric, the interruption/resume/environment
    markers) and the lineage summary with matplotlib into a PNG. No browser: the `png` extra."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=True)  # no display, no GUI toolkit
        from matplotlib.figure import Figure
    except ImportError:
        raise ReprotrainError("--png needs matplotlib: pip install 'reprotrain[png]'", path=png_path) from None
    charts = [("training loss", history.steps)] + sorted(history.epochs.items())
    dpi = 100
    figure = Figure(figsize=(width_px / dpi, 1.2 + 2.8 * len(charts)), dpi=dpi)
    title = f"reprotrain run {history.run_id or ''}".strip() + f" - {len(history.lineage)} segment(s)"
    figure.suptitle(title, fontsize=12, fontweight="bold")
    for index, (name, values) in enumerate(charts):
        axes = figure.add_subplot(len(charts), 1, index + 1)
        ordered = sorted(values.items())
        if ordered:
            axes.plot([s for s, _ in ordered], [v for _, v in ordered], color=_COLORS[index % len(_COLORS)],
                      linewidth=1.5, marker="o" if len(ordered) < 40 else None, markersize=3, label=name)
        for marker in history.markers:
            axes.axvline(marker["step"], color=_MARKER_COLORS[marker["kind"]], linewidth=1.2,
                         linestyle=(0, (6, 3)) if marker["kind"] == "env" else (0, (3, 3)))
        axes.set_title(name, fontsize=10, loc="left")
        axes.set_xlabel("step", fontsize=9)
        axes.tick_params(labelsize=8)
        axes.grid(alpha=0.3)
        if not ordered:
            axes.text(0.5, 0.5, "no data", transform=axes.transAxes, ha="center", color="#888888")
    figure.tight_layout(rect=(0, 0, 1, 0.97))
    try:
        figure.savefig(os.fspath(png_path), format="png", dpi=dpi, facecolor="white")
    except OSError as exc:
        raise ReprotrainError(f"cannot write the PNG: {exc.strerror or exc}", path=png_path) from None


def write_report(run_dir: str | os.PathLike, output: str | os.PathLike = "report.html",
                 png: str | os.PathLike | None = None) -> RunHistory:
    history = collect(run_dir)
    try:
        Path(output).write_text(render_html(history), encoding="utf-8")
    except OSError as exc:
        raise ReprotrainError(f"cannot write the report: {os_error_message(exc)}", path=output) from None
    if png is not None:
        render_png(history, png)
    return history
