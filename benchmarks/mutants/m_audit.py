"""Curated mutants of the audit/reader side of issue 11: each must be killed by the tests it names."""

MUTANTS = [
    # The unsafe-pickle scan of reprotrain's own checkpoints (verify, --no-digest, ls, resume selection).
    dict(name="own-checkpoint-pickles-not-scanned", path="reprotrain/checkpoint/reader.py",
         old="        if unsafe:\n            shown = ",
         new="        if False:\n            shown = ",
         tests=["tests/test_audit_forged.py::test_payload_in_data_pkl_is_unsafe_with_and_without_digest",
                "tests/test_audit_forged.py::test_unsafe_checkpoint_is_never_resumable_nor_picked"]),
    dict(name="only-pkl-records-scanned", path="reprotrain/checkpoint/reader.py",
         old="strict=main or proto or rec.name.endswith(\".pkl\"))",
         new="strict=main or proto or rec.name.endswith(\".pkl\")) if (main or proto) else []",
         tests=["tests/test_audit_forged.py::test_payload_in_any_other_member_is_unsafe"]),
    dict(name="scanner-ignores-memoized-strings", path="reprotrain/checkpoint/pickle_scan.py",
         old="                if value is not _OTHER and value is not _MARK and len(memo) < MAX_MEMO:",
         new="                if value is not _OTHER and value is not _MARK and value.text is None and len(memo) < MAX_MEMO:",
         tests=["tests/test_audit_categories.py::test_protocol_4_torch_file_with_globals_fetched_from_the_memo_is_not_unsafe"]),
    # The regular-file check (fstat on the open descriptor).
    dict(name="special-files-read", path="reprotrain/safeio.py",
         old="        if not stat.S_ISREG(info.st_mode):",
         new="        if stat.S_ISDIR(info.st_mode):",
         tests=["tests/test_safeio.py::test_symlink_to_a_device_is_refused",
                "tests/test_special_files.py::test_verify_refuses_special_files_without_reading_them"]),
    # The size cap.
    dict(name="size-cap-not-checked", path="reprotrain/safeio.py",
         old="    if info.st_size > limit:",
         new="    if False:",
         tests=["tests/test_safeio.py::test_file_over_the_limit_is_refused_before_reading"]),
    dict(name="growing-file-not-capped", path="reprotrain/safeio.py",
         old="        if room <= 0:\n            if len(view) == 0:",
         new="        if False:\n            if len(view) == 0:",
         tests=["tests/test_safeio.py::test_a_file_that_grows_after_the_open_cannot_pass_the_cap"]),
    # fingerprint_digest and lineage digests against the embedded fingerprints.
    dict(name="fingerprint-digest-not-checked", path="reprotrain/checkpoint/manifest.py",
         old='    if manifest["fingerprint_digest"] != actual:',
         new='    if False:',
         tests=["tests/test_audit_forged.py::test_digests_that_do_not_match_their_fingerprints_are_invalid"]),
    dict(name="lineage-digest-not-checked", path="reprotrain/checkpoint/manifest.py",
         old='        if segment["fingerprint_digest"] not in environments:',
         new='        if False:',
         tests=["tests/test_audit_forged.py::test_digests_that_do_not_match_their_fingerprints_are_invalid"]),
    # env verify --deep never leaves the prefix.
    dict(name="deep-check-leaves-prefix", path="reprotrain/envlock/verify.py",
         old="    if not resolved.is_relative_to(root):",
         new="    if False:",
         tests=["tests/test_special_files.py::test_env_verify_deep_never_reads_outside_the_prefix"]),
    # The one quoting function.
    dict(name="cli-paths-not-quoted", path="reprotrain/cli/__init__.py",
         old="    return escape_control(str(text))",
         new="    return str(text)",
         tests=["tests/test_audit_categories.py::test_a_file_name_with_a_newline_cannot_forge_an_output_line"]),
]
