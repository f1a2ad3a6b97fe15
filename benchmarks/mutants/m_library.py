"""Curated mutants of the library API (issue 18): the save decision for each call pattern, the lock and the
signal handlers given back however a loop ends (guard exit, garbage collection, interpreter exit), no forced exit
in-process, RNG restore with numpy, finish() without a duplicate, config changes on resume, metrics.jsonl and the
report's fallback, and diff's tensor comparison."""

CK = "reprotrain/checkpoint"
POLICIES = "tests/test_checkpoint_policies.py"
LIB = "tests/test_library.py"
NOTEBOOK = "tests/test_library_notebook.py"
DIFF = "tests/test_diff_tensors.py"
REPORT = "tests/test_report.py"

MUTANTS = [
    # -- the save decision per call pattern -----------------------------------------------------------------------
    dict(name="policy-steps-ignore-epoch-end-calls", path=f"{CK}/policies.py",  # the reported bug (L-BFGS pattern)
         old="            elif t.unit == \"steps\":\n                if _reached(t, last_step, step):",
         new="            elif t.unit == \"steps\":\n                if not epoch_end and _reached(t, last_step, step):",
         tests=[f"{POLICIES}::test_save_policy_for_every_call_pattern",
                f"{LIB}::test_the_issues_lbfgs_pattern_with_steps_1_saves_every_step"]),
    dict(name="policy-epochs-only-at-epoch-end", path=f"{CK}/policies.py",
         old="            if t.unit == \"epochs\":\n                if _reached(t, last_epoch, epoch):",
         new="            if t.unit == \"epochs\":\n                if epoch_end and _reached(t, last_epoch, epoch):",
         tests=[f"{POLICIES}::test_save_policy_for_every_call_pattern"]),
    dict(name="policy-every-n-by-modulo-skips-passed-points", path=f"{CK}/policies.py",
         old="    return now // n > max(last, 0) // n",
         new="    return now % n == 0",
         tests=[f"{POLICIES}::test_save_policy_for_every_call_pattern"]),
    dict(name="policy-resume-baseline-ignored", path=f"{CK}/manager.py",
         old="        self.decision.clock.resume_at(step=int(manifest[\"step\"]), epoch=int(manifest[\"epoch\"]))\n",
         new="",
         tests=[f"{LIB}::test_a_configuration_that_can_never_save_is_reported_at_the_first_step"]),
    dict(name="policy-never-saves-warning-missing", path=f"{CK}/manager.py",
         old="        if self.save_policy.exhausted(step=step, epoch=epoch):",
         new="        if False:",
         tests=[f"{LIB}::test_a_configuration_that_can_never_save_is_reported_at_the_first_step"]),
    # -- lock and handlers given back ------------------------------------------------------------------------------
    dict(name="guard-exception-keeps-the-lock", path=f"{CK}/manager.py",
         old="            if exc is not None:\n                try:\n                    self.close()",
         new="            if False:\n                try:\n                    self.close()",
         tests=[f"{LIB}::test_an_exception_leaving_guard_saves_emergency_gives_back_handlers_and_lock",
                f"{NOTEBOOK}::test_stop_a_cell_and_run_it_again_resumes_bit_exactly"]),
    dict(name="guard-handlers-not-restored", path=f"{CK}/manager.py",
         old="            if self._signals.depth == 0:\n                self._signals.restore()",
         new="            if False:\n                self._signals.restore()",
         tests=[f"{LIB}::test_a_guard_block_that_ends_normally_gives_back_the_handlers_and_keeps_the_manager_open"]),
    dict(name="interrupted-keeps-the-lock-in-plain-form", path=f"{CK}/manager.py",
         old="        exc = Interrupted(name, code, path)\n        try:\n            self.close()",
         new="        exc = Interrupted(name, code, path)\n        try:\n            pass",
         tests=[f"{LIB}::test_interrupted_in_the_plain_call_form_releases_too"]),
    dict(name="handler-holds-the-manager-strongly", path=f"{CK}/guard.py",  # then nothing is ever collected
         old="        self._manager = weakref.ref(manager)",
         new="        self._manager = (lambda m: (lambda: m))(manager)",
         tests=[f"{LIB}::test_the_garbage_collector_gives_back_lock_and_handlers"]),
    dict(name="finaliser-skipped-at-interpreter-exit", path=f"{CK}/manager.py",
         old="                                           self._metrics, self.should_write, self._background)\n",
         new="                                           self._metrics, self.should_write, self._background)\n"
             "        self._finalizer.atexit = False\n",
         tests=[f"{LIB}::test_interpreter_exit_releases_the_lock_and_restores_handlers"]),
    dict(name="no-takeover-of-a-left-open-manager", path=f"{CK}/manager.py",
         old="        elif self.should_write:\n            self._take_over_from_earlier_manager()\n",
         new="        elif self.should_write:\n",
         tests=[f"{LIB}::test_a_manager_left_open_is_taken_over_in_the_same_process_but_not_inside_its_guard"]),
    # -- no forced exit in-process; messages -----------------------------------------------------------------------
    dict(name="second-sigint-force-exits-in-process", path=f"{CK}/guard.py",
         old="                if cli:  # second Ctrl-C in the CLI",
         new="                if True:  # second Ctrl-C in the CLI",
         tests=[f"{LIB}::test_a_second_sigint_never_ends_the_interpreter_of_a_library_user"]),
    dict(name="second-sigint-saves-emergency", path=f"{CK}/manager.py",
         old="        if isinstance(exc, (Interrupted, StoppedWithoutSaving)) or self._stop_now:",
         new="        if isinstance(exc, Interrupted):",
         tests=[f"{LIB}::test_a_second_sigint_in_process_stops_at_once_without_saving_and_never_exits"]),
    dict(name="cli-message-in-library-mode", path=f"{CK}/manager.py",
         old="        if self.options.exit_on_second_interrupt:\n            self.log(f\"{name}: saved {path}; exiting",
         new="        if True:\n            self.log(f\"{name}: saved {path}; exiting",
         tests=[f"{LIB}::test_sigint_then_a_step_boundary_saves_interrupted_and_releases_everything"]),
    # -- RNG restore, numpy included (same-process resume) ---------------------------------------------------------
    dict(name="rng-numpy-position-lost", path=f"{CK}/rng.py",
         old='np_state["keys"].numpy().astype("uint32"), np_state["pos"],',
         new='np_state["keys"].numpy().astype("uint32"), 0,',
         tests=[f"{NOTEBOOK}::test_stop_a_cell_and_run_it_again_resumes_bit_exactly"]),
    # -- finish, config, metrics, report ---------------------------------------------------------------------------
    dict(name="finish-writes-a-duplicate-latest", path=f"{CK}/manager.py",
         old="                    kind = self._last_commit[0]",
         new="                    kind = \"latest\"",
         tests=[f"{LIB}::test_finish_at_a_step_already_saved_writes_no_second_file"]),
    dict(name="config-change-not-reported", path=f"{CK}/manager.py",
         old="        changes = _config_changes(manifest.get(\"config\") or {}, self.config)",
         new="        changes = []",
         tests=[f"{LIB}::test_a_changed_config_is_reported_on_resume"]),
    dict(name="metrics-not-written", path=f"{CK}/manager.py",
         old="        self._log_metrics(epoch=epoch, step=step, samples_seen=samples_seen, epoch_end=epoch_end)\n",
         new="",
         tests=[f"{LIB}::test_metrics_given_to_step_done_go_to_metrics_jsonl",
                f"{REPORT}::test_report_of_a_library_only_run"]),
    dict(name="report-no-manifest-fallback", path="reprotrain/integrations/report.py",
         old="    if records is None:\n        newest_run",
         new="    if False:\n        newest_run",
         tests=[f"{REPORT}::test_report_without_metrics_jsonl_uses_the_manifests_and_says_so"]),
    # -- diff's tensor comparison ----------------------------------------------------------------------------------
    dict(name="diff-tensors-always-equal", path="reprotrain/audit/diff.py",
         old="        return torch.equal(fx.view(torch.uint8), fy.view(torch.uint8))",
         new="        return True",
         tests=[f"{DIFF}::test_different_weights_exit_6_and_name_the_tensors"]),
    dict(name="diff-tensors-by-value-not-bits", path="reprotrain/audit/diff.py",
         old="        return torch.equal(fx.view(torch.uint8), fy.view(torch.uint8))",
         new="        return torch.equal(fx, fy)",
         tests=[f"{DIFF}::test_nan_weights_compare_by_their_bits"]),
    dict(name="diff-optimizer-ignored", path="reprotrain/audit/diff.py",
         old="    both = {\"identical\": model[\"identical\"] and optimizer[\"identical\"],",
         new="    both = {\"identical\": model[\"identical\"],",
         tests=[f"{DIFF}::test_same_model_other_optimizer_state_is_model_identical_but_exit_6"]),
    dict(name="diff-exit-1-not-6", path="reprotrain/audit/diff.py",
         old="            return 6",
         new="            return 1",
         tests=[f"{DIFF}::test_different_weights_exit_6_and_name_the_tensors"]),
]
