"""Validity of a JSON document against one of reprotrain's own JSON Schemas, without importing jsonschema.

jsonschema's import costs more than the rest of a manifest-only `reprotrain verify` together, and every reader
validates (manifests, fingerprints). Our schemas use a small part of draft 2020-12; this module decides
validity for exactly that part. jsonschema stays the authority for *why* a document is invalid: on the error
path the caller asks it for the message (`first_error`), so messages are jsonschema's. A schema that uses a
keyword outside the supported set is refused when it is compiled, so a schema cannot grow a rule that this
checker would silently skip. tests/test_schema.py checks, on generated documents, that both always agree.
"""

from __future__ import annotations

import functools
import json
import math
import re
from typing import Any, Callable

# Keywords that constrain; annotations are accepted and ignored.
SUPPORTED = frozenset({"type", "$ref", "required", "properties", "additionalProperties", "minimum", "maximum",
                       "exclusiveMinimum", "exclusiveMaximum", "pattern", "enum", "const", "items", "$defs",
                       "minLength", "maxLength", "propertyNames", "minItems", "maxItems"})
ANNOTATIONS = frozenset({"$schema", "$id", "title", "description", "$comment", "default", "examples"})

Check = Callable[[Any], bool]


class UnsupportedSchema(ValueError):
    """The schema uses a keyword this checker does not implement (use jsonschema for it)."""


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


_TYPES: dict[str, Check] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
    "number": _is_number,
    # jsonschema's integer: an int (not a bool), or a float with an integral value.
    "integer": lambda v: (isinstance(v, int) and not isinstance(v, bool))
    or (isinstance(v, float) and math.isfinite(v) and v.is_integer()),
}


def _equal(a, b) -> bool:
    """JSON equality as jsonschema sees it: booleans are not numbers; 1 == 1.0."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    if _is_number(a) and _is_number(b):
        return a == b
    return type(a) is type(b) and a == b


class _Compiler:
    def __init__(self, root: dict):
        self.root = root
        self.refs: dict[str, Check] = {}

    def ref(self, target: str) -> Check:
        if not target.startswith("#/"):
            raise UnsupportedSchema(f"only local references are supported, not {target!r}")
        if target not in self.refs:
            self.refs[target] = lambda v: False  # placeholder while compiling a recursive reference
            node = self.root
            for part in target[2:].split("/"):
                node = node[part.replace("~1", "/").replace("~0", "~")]
            compiled = self.compile(node)
            self.refs[target] = compiled
        return lambda v: self.refs[target](v)

    def compile(self, schema) -> Check:
        if schema is True or schema == {}:
            return lambda v: True
        if schema is False:
            return lambda v: False
        if not isinstance(schema, dict):
            raise UnsupportedSchema(f"a schema must be an object or a boolean, not {type(schema).__name__}")
        unknown = set(schema) - SUPPORTED - ANNOTATIONS
        if unknown:
            raise UnsupportedSchema(f"unsupported keyword(s) {sorted(unknown)}")
        checks: list[Check] = []
        if "type" in schema:
            names = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
            tests = [_TYPES[name] for name in names]
            checks.append(lambda v, tests=tests: any(t(v) for t in tests))
        if "$ref" in schema:
            checks.append(self.ref(schema["$ref"]))
        if "enum" in schema:
            options = schema["enum"]
            checks.append(lambda v, options=options: any(_equal(v, o) for o in options))
        if "const" in schema:
            const = schema["const"]
            checks.append(lambda v, const=const: _equal(v, const))
        for key, op in (("minimum", lambda v, b: v >= b), ("maximum", lambda v, b: v <= b),
                        ("exclusiveMinimum", lambda v, b: v > b), ("exclusiveMaximum", lambda v, b: v < b)):
            if key in schema:
                bound = schema[key]
                checks.append(lambda v, bound=bound, op=op: not _is_number(v) or op(v, bound))
        if "pattern" in schema:
            search = re.compile(schema["pattern"]).search
            checks.append(lambda v, search=search: not isinstance(v, str) or search(v) is not None)
        if "minLength" in schema:
            n = schema["minLength"]
            checks.append(lambda v, n=n: not isinstance(v, str) or len(v) >= n)
        if "maxLength" in schema:
            n = schema["maxLength"]
            checks.append(lambda v, n=n: not isinstance(v, str) or len(v) <= n)
        if "minItems" in schema:
            n = schema["minItems"]
            checks.append(lambda v, n=n: not isinstance(v, list) or len(v) >= n)
        if "maxItems" in schema:
            n = schema["maxItems"]
            checks.append(lambda v, n=n: not isinstance(v, list) or len(v) <= n)
        if "items" in schema:
            item = self.compile(schema["items"])
            checks.append(lambda v, item=item: not isinstance(v, list) or all(item(x) for x in v))
        if "required" in schema:
            required = list(schema["required"])
            checks.append(lambda v, required=required: not isinstance(v, dict) or all(k in v for k in required))
        if "propertyNames" in schema:
            name_check = self.compile(schema["propertyNames"])
            checks.append(lambda v, c=name_check: not isinstance(v, dict) or all(c(k) for k in v))
        if "properties" in schema or "additionalProperties" in schema:
            props = {k: self.compile(s) for k, s in schema.get("properties", {}).items()}
            extra = self.compile(schema.get("additionalProperties", True))

            def objects(v, props=props, extra=extra) -> bool:
                if not isinstance(v, dict):
                    return True
                for key, value in v.items():
                    check = props.get(key, extra)
                    if not check(value):
                        return False
                return True
            checks.append(objects)
        if not checks:
            return lambda v: True
        if len(checks) == 1:
            return checks[0]
        return lambda v, checks=tuple(checks): all(c(v) for c in checks)


def compile_schema(schema: dict) -> Check:
    """A function instance -> bool deciding validity under ``schema`` (UnsupportedSchema if it cannot)."""
    return _Compiler(schema).compile(schema)


@functools.lru_cache(maxsize=None)
def _cached(text: str) -> Check:
    return compile_schema(json.loads(text))


def is_valid(schema_text: str, instance: Any) -> bool:
    """Validity of ``instance`` under the schema given as its JSON text (compiled once per text)."""
    try:
        return _cached(schema_text)(instance)
    except RecursionError:
        return False  # deeper than any document of ours: jsonschema names the problem


def first_error(schema: dict, instance: Any, *, best: bool = False):
    """jsonschema's error for an instance this module found invalid: the shallowest by path (``best``:
    jsonschema's best_match). None if jsonschema finds none (it never should: tests/test_schema.py)."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema)
    try:
        if best:
            return jsonschema.exceptions.best_match(validator.iter_errors(instance))
        errors = sorted(validator.iter_errors(instance), key=lambda e: [str(p) for p in e.absolute_path])
    except RecursionError:
        return None
    return errors[0] if errors else None
