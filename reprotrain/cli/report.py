"""`reprotrain report`: one HTML page of a run's curves, interruptions and environment changes."""

from __future__ import annotations


import click

from reprotrain.cli import emit_json, quote


@click.command("report")
@click.argument("run_dir")
@click.option("-o", "--output", default="report.html", show_default=True, type=click.Path(dir_okay=False),
              help="The self-contained HTML page to write.")
@click.option("--png", type=click.Path(dir_okay=False), default=None, help="Also a PNG of the charts (matplotlib: pip install 'reprotrain[png]').")
@click.option("--json", "as_json", is_flag=True, help="Print what the report shows as JSON.")
def report(run_dir, output, png, as_json) -> None:
    """Loss and metric curves across all lineage segments of RUN_DIR (a path or an fsspec URL such as
    s3://bucket/run), with interruption, resume and environment-change markers, as one HTML page.

    \b
    Exit codes: 0 written, 2 bad input (neither metrics.jsonl nor a valid checkpoint, unreadable run
    directory, no matplotlib for --png).
    """
    from reprotrain.integrations.report import write_report

    history = write_report(run_dir, output, png)
    if as_json:
        emit_json({**history.to_dict(), "output": output, "png": png})
        return
    for note in history.notes:
        click.echo(quote(f"note: {note}"), err=True)
    click.echo(quote(f"{output}: {len(history.lineage)} segment(s), {len(history.steps)} steps, "
                     f"{len(history.env_changes)} environment change(s)" + (f"; PNG {png}" if png else "")))
