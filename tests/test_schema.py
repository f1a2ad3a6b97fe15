"""reprotrain.schema decides validity exactly as jsonschema does, for the manifest and fingerprint schemas, on
real documents and on documents mutated at random (hypothesis): the fast path can never call valid what
jsonschema calls invalid, nor the reverse."""

from __future__ import annotations

import copy
import json

import jsonschema
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from reprotrain import fingerprint as fp, schema
from reprotrain.checkpoint import CheckpointManager, reader
from reprotrain.checkpoint.manifest import CorruptCheckpoint, manifest_schema_text, validate_manifest
from reprotrain.fingerprint import document


@pytest.fixture(scope="module")
def documents(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    mgr = CheckpointManager(run, torch.nn.Linear(3, 2), save_policy="never", config={"lr": 0.1, "epochs": 2},
                            log=lambda message: None)
    path = mgr.save(epoch=0, step=1, samples_seen=4, metrics={"loss": 0.5})
    mgr.close()
    manifest = reader.read_info(path).manifest
    return {"manifest": (manifest_schema_text(), manifest),
            "fingerprint": (document._schema_text(), fp.collect())}


def _agree(text: str, doc) -> None:
    expected = not any(True for _ in jsonschema.Draft202012Validator(json.loads(text)).iter_errors(doc))
    assert schema.is_valid(text, doc) == expected, json.dumps(doc, default=str)[:400]


def test_real_documents_are_valid_for_both(documents):
    for text, doc in documents.values():
        assert schema.is_valid(text, doc)
        _agree(text, doc)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 2**40) | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from([0, 1, -1, 0.0, 1.0, 2.5, True, False, "", "sha256:" + "a" * 64, "latest", "max", "running",
                       "1.2.3", "x" * 70])
    | st.text(max_size=12),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=6)


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, prefix + (key,))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _paths(value, prefix + (i,))


@st.composite
def mutations(draw, doc):
    doc = copy.deepcopy(doc)
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p in _paths(doc) if p]
        path = draw(st.sampled_from(paths))
        parent = doc
        for part in path[:-1]:
            parent = parent[part]
        action = draw(st.sampled_from(["replace", "delete", "add"]))
        if action == "replace":
            parent[path[-1]] = draw(json_values)
        elif action == "delete" and isinstance(parent, dict):
            del parent[path[-1]]
        elif action == "add" and isinstance(parent, dict):
            parent[draw(st.text(max_size=8))] = draw(json_values)
    return doc


@pytest.mark.parametrize("which", ["manifest", "fingerprint"])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_documents_get_the_same_verdict(documents, which, data):
    text, doc = documents[which]
    _agree(text, data.draw(mutations(doc)))


@pytest.mark.parametrize("value, valid", [(True, False), (1, True), (1.0, True), (1.5, False), (-1, False),
                                          (None, False), ("1", False)])
def test_integer_and_minimum_semantics_match_jsonschema(value, valid):
    text = json.dumps({"type": "integer", "minimum": 0})
    assert schema.is_valid(text, value) is valid
    _agree(text, value)


def test_a_schema_with_an_unsupported_keyword_is_refused():
    with pytest.raises(schema.UnsupportedSchema, match="oneOf"):
        schema.compile_schema({"oneOf": [{"type": "string"}, {"type": "integer"}]})


def test_invalid_manifest_message_is_jsonschema_s(documents):
    _, manifest = documents["manifest"]
    bad = dict(manifest, step="nine")
    with pytest.raises(CorruptCheckpoint, match=r"manifest is invalid at step: 'nine' is not of type 'integer'"):
        validate_manifest(bad)


@pytest.mark.parametrize("rule, value, valid", [
    ({"type": "string", "pattern": "^sha256:[0-9a-f]{64}$"}, "sha256:" + "a" * 64, True),
    ({"type": "string", "pattern": "^sha256:[0-9a-f]{64}$"}, "sha256:xyz", False),
    ({"enum": ["min", "max"]}, "max", True),
    ({"enum": ["min", "max"]}, "mean", False),
    ({"enum": [1, 2]}, True, False),
    ({"const": 1}, 1.0, True),
    ({"const": False}, 0, False),
    ({"type": "object", "properties": {"a": {"type": "integer"}}, "additionalProperties": False}, {"a": 1}, True),
    ({"type": "object", "properties": {"a": {"type": "integer"}}, "additionalProperties": False}, {"b": 1}, False),
    ({"type": "object", "required": ["a"]}, {}, False),
    ({"type": "array", "items": {"type": "string"}, "minItems": 1}, [], False),
    ({"type": "array", "items": {"type": "string"}}, ["a", 1], False),
    ({"type": "string", "minLength": 1, "maxLength": 3}, "abcd", False),
    ({"type": "object", "propertyNames": {"pattern": "^[a-z]+$"}}, {"Ab": 1}, False),
    ({"$defs": {"n": {"type": ["integer", "null"]}}, "type": "array", "items": {"$ref": "#/$defs/n"}}, [1, None], True),
    ({"$defs": {"n": {"type": ["integer", "null"]}}, "type": "array", "items": {"$ref": "#/$defs/n"}}, [1, "x"], False),
])
def test_each_keyword_matches_jsonschema(rule, value, valid):
    text = json.dumps(rule)
    assert schema.is_valid(text, value) is valid
    _agree(text, value)
