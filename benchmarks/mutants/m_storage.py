"""Curated mutants of issue 13's storage layer and layer test: each must be killed by the tests it names."""

MUTANTS = [
    # The layer test reads docs/architecture.md: an upward import (checkpoint -> audit) must fail it.
    dict(name="upward-import-checkpoint-to-audit", path="reprotrain/checkpoint/storage/base.py",
         old="from reprotrain.checkpoint.location import Location\n",
         new="from reprotrain.checkpoint.location import Location\nfrom reprotrain.audit import listing  # noqa\n",
         tests=["tests/test_architecture.py::test_every_import_follows_an_arrow_of_the_document"]),
    # The object-store commit protocol: the pointer names the object only after the whole object is uploaded.
    dict(name="pointer-before-upload", path="reprotrain/checkpoint/storage/fsspec.py",
         old="        hashing = _HashingWriter(target)\n",
         new="        hashing = _HashingWriter(target)\n        self.fs.pipe_file(key + POINTER_SUFFIX, b'{}')\n",
         tests=["tests/test_stores.py::test_a_failed_commit_leaves_no_trace"]),
    # The lease: a conditional create, not a plain overwrite of another writer's lease.
    dict(name="lease-plain-overwrite", path="reprotrain/checkpoint/storage/fsspec.py",
         old='self._lease_doc(),\n                          mode="create")',
         new='self._lease_doc(),\n                          mode="overwrite")',
         tests=["tests/test_stores.py::test_the_lease_is_a_conditional_create"]),
    # One Location type: a URL squeezed into a local path (s3:// -> s3:/) breaks every command on object stores.
    dict(name="url-as-local-path", path="reprotrain/checkpoint/location.py",
         old='        elif isinstance(value, str) and "://" in value:',
         new='        elif False:',
         tests=["tests/test_stores.py::test_ls", "tests/test_stores.py::test_verify"]),
    # ls on an object store reads the sizes through the store (today's traceback: 'ObjectURL' has no 'exists').
    dict(name="entry-size-via-local-stat", path="reprotrain/checkpoint/storage/base.py",
         old="        if self.info is not None:\n            return self.info.size\n",
         new="        if self.info is not None:\n            return self.path.stat().st_size if self.path.is_local else None\n",
         tests=["tests/test_stores.py::test_ls"]),
    # The one OSError wording.
    dict(name="os-error-wording", path="reprotrain/errors.py",
         old='    errno.ENOSPC: "disk full",',
         new='    errno.ENOSPC: "no space",',
         tests=["tests/test_checkpoint_store.py"]),
]
