"""Mutants of the sharded checkpoint directories (reprotrain/checkpoint/sharded.py, docs/checkpoint-format.md
section 8) and of the run directory's handling of them (reprotrain/checkpoint/store.py)."""

_T = "tests/test_sharded.py::"
_DAMAGED = _T + "test_damaged_directory_is_exit_2_and_resume_takes_the_previous_one"

MUTANTS = [
    dict(name="sharded-shard-sha256-not-checked",
         path="reprotrain/checkpoint/sharded.py",
         old='            elif sha != entry["sha256"]:',
         new='            elif False:',
         tests=[_DAMAGED]),
    dict(name="sharded-missing-file-not-detected",
         path="reprotrain/checkpoint/sharded.py",
         old='        problems += [f"{rel}: missing" for rel in sorted(names - present)]\n',
         new='',
         tests=[_DAMAGED]),
    dict(name="sharded-added-file-not-detected",
         path="reprotrain/checkpoint/sharded.py",
         old='        problems += [f"{rel}: not sealed (added after the checkpoint was sealed)" for rel in sorted(present - names)]\n',
         new='',
         tests=[_DAMAGED]),
    dict(name="sharded-only-rank0-share-hashed",
         path="reprotrain/checkpoint/sharded.py",
         old="    return [p for i, p in enumerate(paths) if i % world == rank]",
         new="    return [p for i, p in enumerate(paths) if i % world == rank and i == 0]",
         tests=[_DAMAGED]),
    dict(name="run-directory-does-not-list-dcp",
         path="reprotrain/checkpoint/storage/local.py",
         old="            or (p.suffix == SHARDED_SUFFIX and p.is_dir() and not p.is_symlink())))",
         new="            or False))",
         tests=[_T + "test_saved_directory_is_one_sealed_unit_that_resumes_the_exact_state"]),
    dict(name="partial-directory-left-behind",
         path="reprotrain/checkpoint/storage/local.py",
         old="                    shutil.rmtree(p)\n                else:\n                    p.unlink()\n                removed.append(p.name)",
         new="                    pass\n                else:\n                    p.unlink()\n                removed.append(p.name)",
         tests=[_T + "test_retention_deletes_whole_directories_and_a_leftover_partial_goes_at_the_next_start"]),
    dict(name="train-fsdp-writes-unsharded-checkpoints",
         path="reprotrain/training/loop.py",
         old="            async_save=not sharded, sharded=sharded,",
         new="            async_save=not sharded, sharded=False,",
         tests=[_T + "test_train_strategy_fsdp_sigterm_to_one_rank_then_resume"]),
]
