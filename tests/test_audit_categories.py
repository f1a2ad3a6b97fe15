"""Right categories and clean messages from the audit commands (issue 11, class 6)."""

from __future__ import annotations

import pickle
import zipfile

import torch
from click.testing import CliRunner

from reprotrain.audit import verify_paths
from reprotrain.cli import main
from tests.hostile import forge


def _torch_zip(path, *, deflate: bool, extra: list[tuple[str, bytes]] = ()):
    plain = path.with_suffix(".plain")
    torch.save({"w": torch.arange(6.0)}, plain)
    with zipfile.ZipFile(plain) as src, zipfile.ZipFile(path, "w") as out:
        for info in src.infolist():
            out.writestr(info.filename, src.read(info),
                         compress_type=zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED)
        folder = src.infolist()[0].filename.split("/")[0]
        for name, body in extra:
            out.writestr(f"{folder}/{name}", body)
    plain.unlink()
    return path


def test_deflated_torch_zip_that_torch_loads_is_foreign_not_corrupt(tmp_path):
    path = _torch_zip(tmp_path / "deflated.pt", deflate=True)
    assert torch.load(path, weights_only=True)["w"].tolist() == [0, 1, 2, 3, 4, 5]
    [result] = verify_paths([path])
    assert (result.exit_code, result.category) == (3, "pytorch-zip"), result.reason


def test_protocol_0_pickle_in_a_member_not_named_pkl_is_scanned(tmp_path):
    canary = tmp_path / "CANARY"
    payload = pickle.dumps(forge._Payload(__import__("os").system, f"touch {canary}"), protocol=0)
    assert payload[:1] != b"\x80"  # protocol 0: no PROTO opcode, nothing marks it as a pickle
    path = _torch_zip(tmp_path / "member.pt", deflate=False, extra=[("notes", payload)])
    [result] = verify_paths([path])
    assert (result.exit_code, result.category) == (2, "unsafe-pickle"), result.reason
    assert "posix.system" in result.reason and "notes" in result.reason
    assert not canary.exists()


def test_a_file_name_with_a_newline_cannot_forge_an_output_line(tmp_path):
    forged_line = "OK       trusted.pth: ok: integrity verified, manifest valid, environment matches"
    path = tmp_path / f"evil\n{forged_line}\x1b[2K.pth"
    path.write_bytes(b"\x80\x02cposix\nsystem\nq\x00.")  # an unsafe pickle: the verdict is UNSAFE
    result = CliRunner().invoke(main, ["verify", str(path)])
    assert result.exit_code == 2
    lines = result.output.splitlines()
    assert len(lines) == 1 and lines[0].startswith("UNSAFE"), lines
    assert "\\n" in lines[0] and "\x1b" not in result.output and "\\x1b" in lines[0]
    missing = CliRunner().invoke(main, ["inspect", str(tmp_path / "no\nOK such")])
    assert missing.exit_code == 2 and len(missing.output.strip().splitlines()) == 1, missing.output


def test_ls_prints_names_literally_not_as_rich_markup(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "[bold]x\n.pth").write_bytes(b"junk")
    result = CliRunner().invoke(main, ["ls", "--no-digest", str(run)], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "[bold]x\\n.pth" in result.output, result.output


def test_torch_messages_never_advise_weights_only_false():
    from reprotrain.errors import torch_message

    advice = ("Weights only load failed. This file can still be loaded, to do so you have two options, \x1b[1mdo "
              "those steps only if you trust the source of the checkpoint\x1b[0m.\n\t(1) Re-running `torch.load` "
              "with `weights_only` set to `False` will likely succeed")
    assert "False" not in torch_message(RuntimeError(advice)) and "\x1b" not in torch_message(RuntimeError(advice))
    detail = torch_message(RuntimeError(advice + "\n\nWeightsUnpickler error: Unsupported operand 149"))
    assert detail == "Unsupported operand 149"


def test_protocol_4_torch_file_with_globals_fetched_from_the_memo_is_not_unsafe(tmp_path):
    # Protocol 4 memoises every string: keys equal to a global's module and attribute names are pickled first,
    # so the STACK_GLOBAL of the tensor fetches its operands from the memo (BINGET). The scanner must resolve
    # them through its memo, or it would call a plain file unsafe.
    path = tmp_path / "p4.pt"
    torch.save({"torch._utils": 1, "_rebuild_tensor_v2": 2, "w": torch.ones(2)}, path, pickle_protocol=4)
    with zipfile.ZipFile(path) as archive:
        data = archive.read(next(n for n in archive.namelist() if n.endswith("data.pkl")))
    assert b"\x93" in data and (b"h" in data or b"j" in data)  # STACK_GLOBAL, BINGET / LONG_BINGET
    [result] = verify_paths([path])
    assert (result.exit_code, result.category) == (3, "pytorch-zip"), result.reason
