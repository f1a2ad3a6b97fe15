"""Malformed inputs to `env verify` and `report` (issue 11, tracebacks): one line naming the file, exit 2 (or a
reported difference), never a traceback. Library calls for the many shapes, real subprocesses for the CLI line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import REALWORLD, run_cli
from reprotrain.envlock.prefix import read_prefix
from reprotrain.envlock.verify import verify_environment
from reprotrain.errors import InvalidDocumentError, ReprotrainError
from reprotrain.integrations.report import collect

LOCK = REALWORLD / "conda-lock" / "01-ai__Yi__conda-lock.yml"
GOOD = {"name": "zlib", "version": "1.2.13", "build": "h0", "subdir": "linux-64", "files": ["lib/libz.so"],
        "paths_data": {"paths": [{"_path": "lib/libz.so", "sha256": "0" * 64, "path_type": "hardlink"}]}}


def _prefix(root: Path, record=GOOD, *, record_text: bytes | None = None, installer: bytes = b"pip\n",
            record_csv: bytes = b"foo.py,sha256=AAAA,1\n") -> Path:
    (root / "conda-meta").mkdir(parents=True)
    (root / "lib").mkdir()
    (root / "lib" / "libz.so").write_text("x")
    (root / "conda-meta" / "zlib.json").write_bytes(record_text if record_text is not None else
                                                     json.dumps(record).encode())
    dist_info = root / "lib" / "python3.11" / "site-packages" / "foo-1.0.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text("Name: foo\nVersion: 1.0\n\n")
    (dist_info / "INSTALLER").write_bytes(installer)
    (dist_info / "RECORD").write_bytes(record_csv)
    return root


WRONG_TYPES = {
    "not-an-object": ([1, 2], "conda-meta record is not a JSON object (got list)"),
    "name-list": ({**GOOD, "name": ["a"]}, "field 'name' must be a non-empty string, got list"),
    "version-list": ({**GOOD, "version": ["1"]}, "field 'version' must be a string, got list"),
    "build-dict": ({**GOOD, "build": {}}, "field 'build' must be a string, got dict"),
    "paths_data-list": ({**GOOD, "paths_data": [1]}, "field 'paths_data' must be an object, got list"),
    "paths-str": ({**GOOD, "paths_data": {"paths": "abc"}}, "field 'paths_data.paths' must be a list, got str"),
    "paths-entry-int": ({**GOOD, "paths_data": {"paths": [1]}}, "'paths_data.paths[0]' must be an object, got int"),
    "no-_path": ({**GOOD, "paths_data": {"paths": [{"sha256": "0" * 64}]}},
                 "'paths_data.paths[0]._path' must be a non-empty string, got NoneType"),
    "_path-int": ({**GOOD, "paths_data": {"paths": [{"_path": 5}]}}, "'paths_data.paths[0]._path' must be"),
    "sha256-int": ({**GOOD, "paths_data": {"paths": [{"_path": "x", "sha256": 5}]}},
                   "'paths_data.paths[0].sha256' must be a string, got int"),
    "files-int": ({**GOOD, "files": 5}, "field 'files' must be a list of strings, got int"),
    "md5-int": ({**GOOD, "md5": 5}, "field 'md5' must be a string, got int"),
    "no-version": ({"name": "zlib"}, "conda-meta record has no 'version'"),
}


@pytest.mark.parametrize("case", list(WRONG_TYPES))
def test_conda_meta_records_with_wrong_typed_fields_are_invalid_documents(tmp_path, case):
    record, message = WRONG_TYPES[case]
    prefix = _prefix(tmp_path, record)
    with pytest.raises(InvalidDocumentError) as exc:
        read_prefix(prefix)
    assert message in exc.value.message and exc.value.path == str(prefix / "conda-meta" / "zlib.json")
    assert exc.value.exit_code == 2


def test_installer_and_record_that_are_not_utf8_or_are_directories(tmp_path):
    # An INSTALLER that is not UTF-8 is read with replacement characters: not conda's, so the package is pip's.
    assert list(read_prefix(_prefix(tmp_path / "installer", installer=b"\xff\xfe\n")).pip) == ["foo"]
    pytest.importorskip("yaml")
    if not LOCK.exists():
        pytest.skip(f"real-world lock not found at {LOCK}")
    # A RECORD that is not UTF-8 is read with replacement characters (its rows then name no installed file).
    verify_environment(LOCK, _prefix(tmp_path / "record", record_csv=b"\xff\xfe,sha256=AA,1\n"),
                       platform="linux-64", deep=True)
    prefix = _prefix(tmp_path / "dirs")
    record = prefix / "lib" / "python3.11" / "site-packages" / "foo-1.0.dist-info" / "RECORD"
    record.unlink()
    record.mkdir()
    (prefix / "lib" / "libz.so").unlink()
    (prefix / "lib" / "libz.so").mkdir()
    report = verify_environment(LOCK, prefix, platform="linux-64", deep=True)
    details = {d.name: d.detail for d in report.differences if d.kind == "file-modified"}
    assert details["foo"].startswith("RECORD: unreadable (") and "directory" in details["foo"]
    assert details["zlib"].startswith("lib/libz.so: ") and "directory" in details["zlib"]


def test_env_verify_cli_on_a_wrong_typed_record_is_one_line(tmp_path):
    if not LOCK.exists():
        pytest.skip(f"real-world lock not found at {LOCK}")
    prefix = _prefix(tmp_path, {**GOOD, "paths_data": [1]})
    result = run_cli("env", "verify", "--lockfile", str(LOCK), "-p", str(prefix), "--platform", "linux-64", "--deep")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == (f"reprotrain: error: {prefix / 'conda-meta' / 'zlib.json'}: conda-meta record "
                                     "field 'paths_data' must be an object, got list")


METRICS = {
    "not-an-object": (b'[1, 2]\n{"kind": "end"}\n', "metrics.jsonl line 1 is not a JSON object (got list)"),
    "not-utf8": (b'{"kind": "step", "step": 1, "loss": 0.5}\n\xff\xfe\n{"kind": "end"}\n',
                 "metrics.jsonl line 2 is not UTF-8"),
    "deeply-nested": (b"[" * 100000 + b"]" * 100000 + b"\n{}\n", "metrics.jsonl line 1 is nested too deeply"),
    "huge-integer": (b'{"kind": "step", "step": ' + b"9" * 5000 + b', "loss": 1}\n{}\n',
                     "metrics.jsonl line 1 is not JSON"),
    "scalar": (b'"text"\n{}\n', "metrics.jsonl line 1 is not a JSON object (got str)"),
}


@pytest.mark.parametrize("case", list(METRICS))
def test_report_on_malformed_metrics_lines_names_the_line(tmp_path, case):
    data, message = METRICS[case]
    (tmp_path / "metrics.jsonl").write_bytes(data)
    with pytest.raises(ReprotrainError) as exc:
        collect(tmp_path)
    assert exc.value.message == message and exc.value.exit_code == 2


def test_report_plots_only_finite_numbers_and_integer_steps(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("\n".join([
        '{"kind": "step", "step": 1, "loss": NaN}', '{"kind": "step", "step": 2, "loss": 1e999}',
        '{"kind": "step", "step": 3, "loss": true}', '{"kind": "step", "step": "4", "loss": 1}',
        '{"kind": "step", "step": 5, "loss": 0.25}', '{"kind": "epoch", "step": 5, "val_loss": -Infinity, "acc": 0.5}',
        '{"kind": "step", "step": ' + "9" * 40 + ', "loss": 1}']) + "\n")
    history = collect(tmp_path)
    assert history.steps == {5: 0.25} and history.epochs == {"acc": {5: 0.5}}


def test_report_cli_on_a_line_that_is_not_an_object_is_one_line(tmp_path):
    (tmp_path / "metrics.jsonl").write_bytes(METRICS["not-an-object"][0])
    result = run_cli("report", str(tmp_path), "-o", str(tmp_path / "r.html"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == f"reprotrain: error: {tmp_path}: {METRICS['not-an-object'][1]}"
