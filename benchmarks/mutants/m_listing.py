"""Mutants of the writer's listing cache (reprotrain/checkpoint/store.py RunDirectory.list_checkpoints)."""

MUTANTS = [
    dict(name="listing-cache-ignores-replacement",
         path="reprotrain/checkpoint/storage/local.py",
         old="                key = (path.name, st.st_ino, st.st_size, st.st_mtime_ns)",
         new="                key = (path.name,)",
         tests=["tests/test_checkpoint_store.py::test_writer_listing_reads_only_new_or_replaced_checkpoints"]),
    dict(name="read-info-never-scans",
         path="reprotrain/checkpoint/reader.py",
         old="return _read_info(f, path, check_integrity=check_integrity, scan=not own_write)",
         new="return _read_info(f, path, check_integrity=check_integrity, scan=False)",
         tests=["tests/test_checkpoint_store.py::test_a_commit_seeds_the_listing_so_retention_reads_nothing"]),
    dict(name="commit-does-not-seed-listing",
         path="reprotrain/checkpoint/storage/local.py",
         old="        self._remember(name, written)\n",
         new="",
         tests=["tests/test_checkpoint_store.py::test_a_commit_seeds_the_listing_so_retention_reads_nothing"]),
    dict(name="commit-reads-its-own-checkpoint-back",
         path="reprotrain/checkpoint/storage/local.py",
         old="        if info is not None and info.size == st.st_size:",
         new="        if False:",
         tests=["tests/test_checkpoint_store.py::test_the_writers_own_listing_entry_is_what_a_reader_parses"]),
]
