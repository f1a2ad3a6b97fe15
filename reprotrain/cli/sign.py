"""`reprotrain sign` and `reprotrain keygen`: Ed25519 signatures of checkpoints (docs/checkpoint-format.md)."""

from __future__ import annotations

import sys

import click

from reprotrain.cli import emit_json, quote


@click.command("sign")
@click.argument("paths", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--key", "key_file", required=True, type=click.Path(dir_okay=False), metavar="FILE",
              help="Ed25519 private key (PEM or OpenSSH, permissions 0600; reprotrain keygen writes one).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document with every result.")
def sign_command(paths, key_file, as_json):
    """Sign existing checkpoints in place, atomically, without rewriting their tensors.

    Each file is checked in full first (a damaged file is never signed), copied up to its trailer,
    signed and renamed over itself; in a run directory the run's writer lock is held (refused while
    a training process owns it). A signature by another key is replaced.

    \b
    Exit codes (several files: the worst, 2 > 5 > 3 > 0): 0 signed, 2 unreadable, corrupt or
    a bad key file, 3 not a reprotrain checkpoint, 5 the file's signature by this key does
    not match (changed after signing: not re-signed).
    """
    from reprotrain.audit import worst_exit_code
    from reprotrain.checkpoint import signing
    from reprotrain.errors import ReprotrainError

    key = signing.SigningKey.load(key_file)  # a bad or too-open key fails every file: once, up front
    results = []
    for path in paths:
        try:
            verdict = signing.sign_file(path, key)
            results.append({"path": path, "exit_code": 0, "key_id": verdict.key_id, "time": verdict.time,
                            "message": verdict.message})
        except ReprotrainError as exc:
            results.append({"path": path, "exit_code": exc.exit_code, "key_id": key.key_id, "time": None,
                            "message": exc.message})
    code = worst_exit_code(r["exit_code"] for r in results)
    if as_json:
        emit_json({"exit_code": code, "results": results})
    else:
        for r in results:
            if r["exit_code"] == 0:
                click.echo(quote(f"{r['path']}: {r['message']}"))
            else:
                click.echo(quote(f"reprotrain: error: {r['path']}: {r['message']}"), err=True)
    sys.exit(code)


@click.command("keygen")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the key id and file names as JSON.")
def keygen_command(path, as_json):
    """Create an Ed25519 key pair: PATH (private, mode 0600) and PATH.pub (public).

    Sign with `reprotrain train --sign-key PATH` or `reprotrain sign CKPT --key PATH`; check with
    `reprotrain verify CKPT --trusted-key PATH.pub`. Existing files are never overwritten.

    \b
    Exit codes: 0 written, 2 a file exists or cannot be written.
    """
    from reprotrain.checkpoint import signing

    key = signing.write_key_pair(path)
    doc = {"key_id": key.key_id, "private_key": path, "public_key": f"{path}.pub"}
    if as_json:
        emit_json(doc)
    else:
        click.echo(quote(f"key id {key.key_id}: private key {path} (keep it secret, mode 0600), public key {path}.pub"))
