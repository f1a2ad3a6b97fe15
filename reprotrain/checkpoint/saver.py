"""The background saver: routine saves snapshotted into reused CPU buffers and committed by one thread."""

from __future__ import annotations

import queue
import threading
import weakref
from typing import Callable

from reprotrain.checkpoint import state as ckstate


class BackgroundSaver:
    """One save in flight at a time (back-pressure instead of unbounded memory); errors surface on the caller.

    The thread holds the commit function weakly (a bound method of the manager), so a manager that is dropped
    without close() can still be garbage-collected; its finaliser stops the thread.
    """

    def __init__(self, commit: Callable[[str, dict, dict], object], stage: Callable[[dict], dict] | None = None):
        """``stage``: copies the state off the training thread's tensors (returns once the copy is complete); by
        default a ckstate.Snapshot. A sharded manager passes DCP's stager (sharded.Stager), which keeps DTensors."""
        self._commit = weakref.WeakMethod(commit) if hasattr(commit, "__self__") else (lambda: commit)
        self._snapshot = ckstate.Snapshot()
        self._stage = stage
        self._queue: queue.Queue | None = None
        self._worker: threading.Thread | None = None
        self._error: BaseException | None = None
        self.committed: list = []  # paths committed since the caller last looked (it reports them)

    def submit(self, name: str, manifest: dict, state: dict) -> None:
        self.wait()  # also: the snapshot buffers are free again (the previous save has written them)
        if self._stage is not None:
            snap, copied = self._stage(state), []
        else:
            snap = self._snapshot.take(state)
            copied = self._snapshot.copied()  # CUDA: the device-to-host copies still run; the saving thread waits
        if self._worker is None:
            self._queue = queue.Queue(maxsize=1)
            self._worker = threading.Thread(target=_loop, args=(self._queue, weakref.ref(self)),
                                            name="reprotrain-save", daemon=True)
            self._worker.start()
        self._queue.put((name, manifest, snap, copied))

    def _run(self, item) -> None:
        commit = self._commit()
        if commit is None:
            return  # the manager is gone: nobody to commit for
        name, manifest, snap, copied = item
        try:
            for event in copied:
                event.synchronize()
            path = commit(name, manifest, snap)
            self.committed.append((path, manifest))  # after the commit: the caller pops from this very list
        except BaseException as exc:  # surfaced on the training thread at the next call
            self._error = exc

    def wait(self) -> None:
        """Block until the save in flight has committed; raise its error, if any."""
        if self._queue is not None:
            self._queue.join()
        self.raise_error()

    def raise_error(self) -> None:
        if self._error is not None:
            exc, self._error = self._error, None
            raise exc

    def stop(self) -> None:
        """End the thread after the save in flight and join it (idempotent). Joined, not left to die with the
        interpreter: a daemon thread still running when the interpreter finalizes is unwound where it stands,
        and inside torch's C++ that aborts the process (docs/distributed.md, "Ending the process")."""
        worker = self._worker
        if worker is not None and self._queue is not None:
            self._queue.put(None)
            self._worker = None
            if worker is not threading.current_thread():  # the garbage collector may run this on the worker
                worker.join()


def _loop(q: queue.Queue, saver_ref) -> None:
    while True:
        item = q.get()
        try:
            if item is None:
                return
            saver = saver_ref()
            if saver is not None:
                saver._run(item)
                del saver
        finally:
            q.task_done()
