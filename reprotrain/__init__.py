"""reprotrain: reproducible, auditable, un-losable PyTorch training.

The top-level package imports nothing heavy: `reprotrain lock --help` and
`reprotrain fingerprint` must not pay for `import torch`.
"""

__version__ = "0.1.0"
