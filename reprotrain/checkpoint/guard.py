"""The signal and error guard: SIGINT/SIGTERM become an `interrupted` save at the next step boundary, an exception
becomes an `emergency` save.

However a guarded block ends (normally, Interrupted, KeyboardInterrupt, any exception), the previous signal handlers
are back; when it ends by an exception the manager is closed too (background saves waited for, run directory lock
released), so the same process can run the loop again (a notebook cell stopped and re-run). In-process use never
force-exits the interpreter: a second SIGINT raises KeyboardInterrupt at once, without a save. Only the CLI
(``exit_on_second_interrupt``) leaves with ``os._exit`` on a second Ctrl-C.
"""

from __future__ import annotations

import os
import signal
import threading
import weakref

SIGNAL_REASON = {"SIGINT": "interrupted", "SIGTERM": "preempted"}
_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(SystemExit):
    """Raised by step_done after an `interrupted` checkpoint was committed (SIGINT or SIGTERM).

    A SystemExit, so an uncaught one ends a script with its exit code (130 / 143) and no traceback,
    and ``except Exception`` in user code does not swallow it.
    """

    def __init__(self, signal_name: str, exit_code: int, path):
        super().__init__(exit_code)
        self.signal_name = signal_name
        self.exit_code = exit_code
        self.path = path

    def __str__(self) -> str:
        saved = f"saved {self.path}" if self.path is not None else "checkpoint committed by rank 0"
        return f"stopped by {self.signal_name} ({saved})"


class StoppedWithoutSaving(KeyboardInterrupt):
    """A KeyboardInterrupt that must not be turned into an `emergency` checkpoint (the second SIGINT itself is a
    plain KeyboardInterrupt, recognised by the manager's flag)."""


class SignalGuard:
    """The handlers of one manager. Holds the manager weakly, so an installed handler never keeps it alive."""

    def __init__(self, manager):
        self._manager = weakref.ref(manager)
        self._owner_pid = os.getpid()
        self._previous: dict = {}
        self.depth = 0  # guarded blocks (or start() calls) in progress

    @property
    def installed(self) -> bool:
        return bool(self._previous)

    def install(self) -> None:
        """Install the handlers (main thread only; elsewhere Python delivers SIGINT as KeyboardInterrupt)."""
        if self._previous or threading.current_thread() is not threading.main_thread():
            return
        for sig in _SIGNALS:
            self._previous[sig] = signal.signal(sig, self._on_signal)

    def restore(self) -> None:
        """Put the previous handlers back (where ours is still the one installed)."""
        previous, self._previous = self._previous, {}
        for sig, handler in previous.items():
            try:
                if signal.getsignal(sig) == self._on_signal:
                    signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
            except ValueError:  # not the main thread (a finaliser run by the garbage collector elsewhere)
                self._previous[sig] = handler

    def _on_signal(self, signum, frame) -> None:
        if os.getpid() != self._owner_pid:
            return  # a forked DataLoader worker inherited the handler: the main process decides
        manager = self._manager()
        if manager is None:  # collected while installed: behave as if we had never been here
            previous = self._previous.pop(signal.Signals(signum), signal.SIG_DFL)
            signal.signal(signum, previous)
            if callable(previous):
                previous(signum, frame)
            elif previous == signal.SIG_DFL:
                os.kill(os.getpid(), signum)
            return
        name = signal.Signals(signum).name
        cli = manager.options.exit_on_second_interrupt
        if manager._pending_signal is not None:
            if name == "SIGINT":
                if cli:  # second Ctrl-C in the CLI: leave now (a partial save is cleaned at the next start)
                    os._exit(manager.exit_codes["SIGINT"])
                manager._stop_now = True
                manager.log("SIGINT again: stopping now without a checkpoint (the last saved one is where a "
                            "re-run resumes)")
                # A plain KeyboardInterrupt: uncaught, Python ends a script by SIGINT as usual (a subclass would
                # make it exit 1); the manager's flag tells the guard not to save for it.
                raise KeyboardInterrupt("second SIGINT: stopped without a checkpoint")
            manager.log(f"{name} again: the interrupted checkpoint is still due at the end of this step")
            return
        manager._pending_signal = name
        hint = ""
        if name == "SIGINT":
            hint = (" (press Ctrl-C again to exit at once)" if cli else
                    " (interrupt again to stop at once without saving)")
        manager.log(f"{name} received: saving an interrupted checkpoint at the end of this step{hint}")


class StopRequest:
    """SIGINT/SIGTERM as a request to save `interrupted` at the next boundary, for loops the manager does not run
    (the Lightning, Hugging Face and Accelerate integrations); the same rules as the manager's guard in process.

    ``install()`` (main thread only) takes both signals; ``restore()`` puts the previous handlers back. The first
    signal sets ``pending``. Again: a second SIGINT restores the handlers and raises KeyboardInterrupt where the
    main thread is, without a save (a notebook kernel survives; the last saved checkpoint is where a re-run
    resumes); a second SIGTERM only says the save is still due. Nothing here ends the process.
    """

    def __init__(self, log, unit: str = "step"):
        self.log, self.unit = log, unit
        self.pending: str | None = None
        self._previous: dict = {}

    def install(self) -> None:
        """Take SIGINT and SIGTERM for a new run: a request left from an earlier run (a notebook cell run again
        with the same callback) is forgotten."""
        if self._previous or threading.current_thread() is not threading.main_thread():
            return
        self.pending = None
        for sig in _SIGNALS:
            self._previous[sig] = signal.signal(sig, self._on_signal)

    def restore(self) -> None:
        previous, self._previous = self._previous, {}
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)

    def _on_signal(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.pending is not None:
            if name == "SIGINT":
                self.restore()
                self.log("SIGINT again: stopping now without a checkpoint (the last saved one is where a "
                         "re-run resumes)")
                raise KeyboardInterrupt("second SIGINT: stopped without a checkpoint")
            self.log(f"{name} again: the interrupted checkpoint is still due at the end of this {self.unit}")
            return
        self.pending = name
        hint = " (interrupt again to stop at once without saving)" if name == "SIGINT" else ""
        self.log(f"{name} received: saving an interrupted checkpoint at the end of this {self.unit}{hint}")
