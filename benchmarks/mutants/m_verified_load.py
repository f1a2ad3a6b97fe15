"""Mutants of the one-pass verified load (reprotrain/checkpoint/container.py, state.py) that resume uses."""

MUTANTS = [
    dict(name="one-pass-load-ignores-tensor-crc",
         path="reprotrain/checkpoint/container.py",
         old="crc = _read_body_into(f, into(rec), start, pool if rec.size > READ_CHUNK else None, tensors)",
         new="_read_body_into(f, into(rec), start, pool if rec.size > READ_CHUNK else None, tensors); crc = rec.crc32",
         tests=["tests/test_checkpoint_verified_load.py::test_one_pass_load_refuses_a_flipped_bit",
                "tests/test_checkpoint_verified_load.py::test_resume_skips_a_damaged_newest_checkpoint_in_one_pass"]),
    dict(name="one-pass-load-crc-skips-second-chunk",
         path="reprotrain/checkpoint/container.py",
         old="pending = pool.submit(_crc_and_hash, chunk, crc, sha)",
         new="pending = pool.submit(_crc_and_hash, chunk, crc, sha) if pos == 0 else pending",
         tests=["tests/test_checkpoint_verified_load.py::test_one_pass_load_returns_what_torch_load_returns"]),
    dict(name="resume-loads-without-verifying",
         path="reprotrain/checkpoint/manager.py",
         old="map_location=self._map_location(), verify=True,",
         new="map_location=self._map_location(), verify=False,",
         tests=["tests/test_checkpoint_verified_load.py::test_resume_skips_a_damaged_newest_checkpoint_in_one_pass"]),
]
