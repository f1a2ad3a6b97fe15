"""Mutants of the jsonschema-free validity check (reprotrain/schema.py) that every manifest and fingerprint reader uses."""

_TESTS = ["tests/test_schema.py"]

MUTANTS = [
    dict(name="schema-integer-accepts-bool", path="reprotrain/schema.py",
         old='''    "integer": lambda v: (isinstance(v, int) and not isinstance(v, bool))''',
         new='''    "integer": lambda v: isinstance(v, int)''', tests=_TESTS),
    dict(name="schema-additional-properties-ignored", path="reprotrain/schema.py",
         old="check = props.get(key, extra)", new="check = props.get(key, lambda value: True)", tests=_TESTS),
    dict(name="schema-required-ignored", path="reprotrain/schema.py",
         old="all(k in v for k in required))", new="True)", tests=_TESTS),
    dict(name="schema-minimum-ignored", path="reprotrain/schema.py",
         old='("minimum", lambda v, b: v >= b)', new='("minimum", lambda v, b: True)', tests=_TESTS),
    dict(name="schema-pattern-ignored", path="reprotrain/schema.py",
         old="search(v) is not None)", new="True)", tests=_TESTS),
]
