"""SIGINT and SIGTERM before training starts: a clean stop with one line, not a traceback or death by signal.

`reprotrain train` spends seconds starting (importing torch, loading data, loading the checkpoint to resume)
before the checkpoint manager's guard takes over the signals. ``StartupSignals`` covers that time: a signal
raises ``StoppedAtStartup`` (a SystemExit carrying 130 for SIGINT, 143 or ``--sigterm-exit-code`` for SIGTERM)
wherever the main thread is, and the command prints one line saying that nothing was saved and nothing lost
(no checkpoint is written or deleted by a stopped start-up). ``release()`` hands the signals back just before
the guard installs its own handlers.

This module imports nothing heavy: the CLI installs the handlers before it imports torch.
"""

from __future__ import annotations

import signal
import threading

EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143}


class StoppedAtStartup(SystemExit):
    """A signal arrived before training began (a SystemExit: uncaught, it ends the process with its code)."""

    def __init__(self, signal_name: str, exit_code: int):
        super().__init__(exit_code)
        self.signal_name = signal_name
        self.exit_code = exit_code

    def __str__(self) -> str:
        return (f"stopped by {self.signal_name} during start-up, before training began: nothing to save, "
                "nothing lost")


class StartupSignals:
    """Install with ``install()`` (or ``with``); ``release()`` restores what was there. Nested use is a no-op."""

    _active: "StartupSignals | None" = None

    def __init__(self, exit_codes: dict | None = None):
        self.exit_codes = {**EXIT_CODES, **(exit_codes or {})}
        self._previous: dict = {}

    def install(self) -> "StartupSignals":
        if threading.current_thread() is not threading.main_thread():
            return self  # only the main thread may set handlers (a library caller in a thread keeps its own)
        if StartupSignals._active is not None:
            StartupSignals._active.exit_codes.update(self.exit_codes)
            return StartupSignals._active  # an outer caller (the CLI) installed them already
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._stop)
        StartupSignals._active = self
        return self

    def release(self) -> None:
        if StartupSignals._active is not self:
            return
        StartupSignals._active = None
        previous, self._previous = self._previous, {}
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    def __enter__(self) -> "StartupSignals":
        return self.install()

    def __exit__(self, *exc) -> None:
        self.release()

    def _stop(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        raise StoppedAtStartup(name, self.exit_codes[name])
