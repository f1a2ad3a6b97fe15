"""The fingerprint document: schema, validation, reading, atomic writing and digest."""

from __future__ import annotations

import json
import os

import jsonschema
import pytest

from fingerprint_docs import gpu_doc, with_value
from reprotrain import fingerprint as fp
from reprotrain.errors import InvalidDocumentError


def test_schema_is_a_valid_draft_2020_12_schema_with_the_version():
    schema = fp.schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["properties"]["schema_version"] == {"const": fp.SCHEMA_VERSION}


def test_reference_and_collected_documents_are_valid():
    assert fp.validate(gpu_doc()) == gpu_doc()
    fp.validate(fp.collect())


@pytest.mark.parametrize("mutate, expected", [
    (lambda d: d.pop("torch"), "'torch' is a required property"),
    (lambda d: d["python"].pop("version"), "python"),
    (lambda d: d["torch"].update(version=2.14), "torch.version"),
    (lambda d: d["accelerators"].update(device_count=-1), "accelerators.device_count"),
    (lambda d: d["accelerators"]["devices"][0].update(compute_capability="sm90"), "compute_capability"),
    (lambda d: d["packages"]["pip"].update(digest="md5:abc"), "packages.pip.digest"),
    (lambda d: d["sources"].update(torch="guessed"), "sources.torch"),
    (lambda d: d["determinism"].update(float32_matmul_precision="fast"), "float32_matmul_precision"),
    (lambda d: d["code"].update(git_commit="not-a-sha"), "code.git_commit"),
    (lambda d: d.update(secrets={"token": "x"}), "'secrets' was unexpected"),
    (lambda d: d["host"].update(ip="10.0.0.1"), "host"),
    (lambda d: d.update(schema_version="1"), "schema_version"),
])
def test_invalid_documents_are_refused_with_the_field_named(mutate, expected):
    doc = gpu_doc()
    mutate(doc)
    with pytest.raises(InvalidDocumentError) as err:
        fp.validate(doc, source="run/fingerprint.json")
    message = str(err.value)
    assert message.startswith("run/fingerprint.json: invalid fingerprint: ")
    assert expected in message
    assert "\n" not in message
    assert err.value.exit_code == 2


def test_newer_schema_version_is_a_clear_error():
    with pytest.raises(InvalidDocumentError, match=r"x.json: fingerprint schema_version 2 is not supported"):
        fp.validate(with_value(gpu_doc(), "schema_version", 2), source="x.json")


def test_top_level_must_be_an_object():
    with pytest.raises(InvalidDocumentError, match="the top level is list"):
        fp.validate([gpu_doc()], source="x.json")


def test_lock_section_accepts_fields_added_by_the_lock_layer_but_checks_the_known_ones():
    doc = gpu_doc()
    doc["lock"]["categories"] = ["main"]
    fp.validate(doc)
    with pytest.raises(InvalidDocumentError, match="lock.matches"):
        fp.validate(with_value(gpu_doc(), "lock.matches", "yes"))


@pytest.mark.parametrize("content, expected", [
    (b"{not json", "invalid JSON at line 1 column 2"),
    (b"\xff\xfe\x00garbage", "not UTF-8"),
    (b"[]", "the top level is list"),
    (b'{"schema_version": 1}', "is a required property"),
])
def test_load_bad_files_gives_one_line_naming_the_file(tmp_path, content, expected):
    path = tmp_path / "fingerprint.json"
    path.write_bytes(content)
    with pytest.raises(InvalidDocumentError) as err:
        fp.load(path)
    assert str(err.value).startswith(f"{path}: ")
    assert expected in str(err.value)


def test_load_missing_file(tmp_path):
    with pytest.raises(InvalidDocumentError, match="cannot read fingerprint: No such file"):
        fp.load(tmp_path / "absent.json")


def test_write_is_atomic_and_round_trips(tmp_path):
    path = tmp_path / "fp.json"
    path.write_text("previous content")
    fp.write(gpu_doc(), path)
    assert fp.load(path) == gpu_doc()
    assert os.listdir(tmp_path) == ["fp.json"]  # no temporary file left behind


def test_write_refuses_an_invalid_document_and_keeps_the_old_file(tmp_path):
    path = tmp_path / "fp.json"
    fp.write(gpu_doc(), path)
    with pytest.raises(InvalidDocumentError):
        fp.write(with_value(gpu_doc(), "torch.cuda", 12.4), path)
    assert fp.load(path) == gpu_doc()
    assert os.listdir(tmp_path) == ["fp.json"]


def test_write_into_a_missing_directory_is_a_clear_error(tmp_path):
    with pytest.raises(InvalidDocumentError, match="cannot write fingerprint"):
        fp.write(gpu_doc(), tmp_path / "no" / "such" / "fp.json")


def test_digest_ignores_when_where_and_how_but_not_what():
    base = fp.digest(gpu_doc())
    assert base.startswith("sha256:") and len(base) == 7 + 64
    same_environment = gpu_doc()
    same_environment["collected_at"] = "2030-01-01T00:00:00Z"
    same_environment["host"]["name"] = "another-node"
    same_environment["sources"]["torch"] = "static"
    same_environment["packages"]["conda"]["prefix"] = "/elsewhere/env"
    same_environment["packages"]["pip"]["packages"] = [{"name": "numpy", "version": "1.26.4"}]
    same_environment["code"]["repository"] = "/another/checkout"
    assert fp.digest(same_environment) == base
    # key order does not matter either
    assert fp.digest(json.loads(json.dumps(gpu_doc(), sort_keys=True))) == base
    for field, value in [("torch.version", "2.14.2"), ("packages.pip.digest", "sha256:" + "0" * 64),
                         ("determinism.cudnn_benchmark", True), ("code.git_dirty", True)]:
        assert fp.digest(with_value(gpu_doc(), field, value)) != base, field
