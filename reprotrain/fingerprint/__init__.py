"""The environment fingerprint: what a run ran on, and whether another environment may continue it.

Importing this package never imports torch; ``collect()`` reads torch's runtime values only when
the calling process has already imported it. See docs/fingerprint.md.
"""

from reprotrain.fingerprint.collect import collect
from reprotrain.fingerprint.document import SCHEMA_VERSION, digest, load, schema, validate, write
from reprotrain.fingerprint.policy import DEFAULT_RULES, Comparison, Difference, Policy, compare

__all__ = ["SCHEMA_VERSION", "DEFAULT_RULES", "Comparison", "Difference", "Policy", "collect", "compare", "digest",
           "load", "schema", "validate", "write"]
