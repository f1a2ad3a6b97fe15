"""`reprotrain fingerprint`: collect, show and compare the environment fingerprint."""

from __future__ import annotations

import sys

import click

from reprotrain.cli import emit_json


def _fingerprint_value(name: str, value) -> str:
    """One value as a person reads it: digests and commits shortened (the JSON keeps them whole)."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if name == "packages" and isinstance(value, list):
        return f"{len(value)} listed"
    if name == "devices" and isinstance(value, list):
        return "; ".join(f"{d['index']}: {d['name']} (sm {d['compute_capability']}, {d['memory_bytes'] / 2**30:.0f} GiB)"
                         for d in value) or "none"
    text = str(value)
    if text.startswith("sha256:") and len(text) == 71:
        return text[:19] + "…"
    if name in ("git_version", "git_commit", "sha256", "content_hash") and len(text) >= 40:
        return text[:12] + "…"
    return text


def _fingerprint_lines(doc: dict, width: int = 100) -> list[str]:
    """The human view of a fingerprint: one wrapped `section  name=value ...  (source)` line per section."""
    import textwrap

    rows = []
    for section, values in doc.items():
        if not isinstance(values, dict) or section == "sources":
            continue
        parts, stack = [], [("", values)]
        while stack:
            prefix, node = stack.pop(0)
            for key, value in node.items():
                if isinstance(value, dict):
                    stack.append((f"{prefix}{key}.", value))
                else:
                    parts.append(f"{prefix}{key}={_fingerprint_value(key, value)}")
        rows.append((section, "  ".join(parts), doc["sources"].get(section, "")))
    label = max(len(section) for section, _, _ in rows) + 2
    lines = [f"fingerprint schema v{doc['schema_version']}, collected {doc['collected_at']}"]
    for section, text, source in rows:
        wrapped = textwrap.wrap(f"{text}  [{source}]", width=width - label, break_long_words=False,
                                break_on_hyphens=False) or [""]
        lines += [f"{section if i == 0 else '':<{label}}{chunk}" for i, chunk in enumerate(wrapped)]
    return lines


def _package_listing(packages: dict) -> list[str]:
    """--full in the human view: every conda package and Python distribution, one per line."""
    lines = []
    for kind, title, columns in (("conda", "conda packages", ("name", "version", "build")),
                                 ("pip", "python distributions", ("name", "version"))):
        listed = packages[kind].get("packages") or []
        lines.append(f"{title} ({len(listed)}):")
        lines += ["  " + "  ".join(str(item.get(c) or "") for c in columns) for item in listed]
    return lines


@click.command("fingerprint")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Also write the fingerprint JSON here (atomically).")
@click.option("--full", is_flag=True, help="List every conda package and Python distribution, not only digests.")
@click.option("--compare", "compare_path", metavar="OTHER.json",
              help="Compare OTHER.json (recorded) with this environment; exit 1 if the policy refuses.")
@click.option("--policy", "policy_path", metavar="FILE", help="Per-field policy overrides (YAML or JSON), with --compare.")
@click.option("--on-mismatch", type=click.Choice(["refuse", "warn", "ignore"]),
              help="Global override, with --compare: every difference refuses, warns, or only informs.")
@click.option("--code-dir", type=click.Path(file_okay=False), default=None,
              help="Directory of the training code whose git commit is recorded (default: working directory).")
def fingerprint_command(as_json, output, full, compare_path, policy_path, on_mismatch, code_dir):
    """Fingerprint this environment, or compare it with a recorded fingerprint.

    \b
    Exit codes: 0 ok (differences allowed by policy), 1 refused by policy (--compare),
    2 unreadable or invalid fingerprint or policy file.
    """
    import os

    from reprotrain import fingerprint as fp

    if compare_path is None and (policy_path is not None or on_mismatch is not None):
        raise click.UsageError("--policy and --on-mismatch apply only with --compare")
    policy = fp.Policy.load(policy_path, on_mismatch=on_mismatch) if compare_path is not None else None
    recorded = fp.load(compare_path) if compare_path is not None else None
    live = fp.collect(full=full, code_dir=code_dir or os.getcwd())
    if output:
        fp.write(live, output)
    if recorded is None:
        if as_json:
            emit_json(live)
        else:
            click.echo("\n".join(_fingerprint_lines(live)))
            if full:
                click.echo("\n".join(_package_listing(live["packages"])))
            click.echo(f"digest {fp.digest(live)}")
        return
    result = fp.compare(recorded, live, policy)
    if as_json:
        emit_json(result.to_json())
    else:
        click.echo(result.table())
    if result.refused:
        click.echo(f"reprotrain: refused by policy; to allow: {result.allow_hint()}", err=True)
        sys.exit(1)
