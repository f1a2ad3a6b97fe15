"""Let gloo's worker threads go idle before the interpreter finalizes (docs/distributed.md, "Ending the process").

A gloo worker thread (`pt_gloo_runloop`) that drops the last reference to a finished collective frees the
tensors it held; when their Python objects are already gone, freeing them takes the GIL. If the main thread
is finalizing the interpreter at that moment (a normal end, or `sys.exit(143)` after SIGTERM), the worker is
unwound through a `noexcept` destructor and the process aborts ("terminate called without an active
exception", exit -6) after every checkpoint was written. `destroy_process_group()` joins the workers only
when nothing else holds the process group; a DDP or FSDP model does. So before finalizing we wait, briefly
and with the GIL released, until every gloo worker is blocked in its queue wait: one that is waiting holds
no work and cannot take the GIL again before finalization ends.
"""

from __future__ import annotations

import atexit
import gc
import os
import platform
import time

_WORKER_NAME = "pt_gloo_runloop"
# futex(2) syscall numbers; a worker waiting for work sits in FUTEX_WAIT_BITSET with no timeout.
_FUTEX = {"x86_64": 202, "aarch64": 98}.get(platform.machine())
_FUTEX_WAIT_BITSET = 9
_FUTEX_CMD_MASK = 0x7F  # strips FUTEX_PRIVATE_FLAG and FUTEX_CLOCK_REALTIME
_TASKS = "/proc/self/task"
_installed = False


def worker_threads() -> list[int]:
    """Thread ids of this process's gloo worker threads (empty where /proc is not available)."""
    try:
        tids = os.listdir(_TASKS)
    except OSError:
        return []
    found = []
    for tid in tids:
        try:
            with open(f"{_TASKS}/{tid}/comm", encoding="ascii", errors="replace") as comm:
                if comm.read().strip() == _WORKER_NAME:
                    found.append(int(tid))
        except OSError:  # the thread ended between listdir and open
            continue
    return found


def is_idle(tid: int) -> bool:
    """True when thread `tid` is blocked in an untimed futex wait (a queue wait), or has ended."""
    try:
        with open(f"{_TASKS}/{tid}/syscall", encoding="ascii") as record:
            fields = record.read().split()
    except OSError:
        return True  # ended
    if not fields or fields[0] in ("running", "-1") or _FUTEX is None:
        return False
    try:
        number, op, timeout = int(fields[0]), int(fields[2], 16), int(fields[4], 16)
    except (IndexError, ValueError):
        return False
    return number == _FUTEX and op & _FUTEX_CMD_MASK == _FUTEX_WAIT_BITSET and timeout == 0


def quiesce(timeout_s: float = 2.0) -> bool:
    """Wait (GIL released) until every gloo worker is idle; True when they are, False after `timeout_s`."""
    gc.collect()  # drop collectives held only by reference cycles now, while the workers can still take the GIL
    if not os.path.isdir(_TASKS):
        time.sleep(0.05)  # no way to look: give in-flight frees a moment
        return True
    deadline = time.monotonic() + timeout_s
    while True:
        if all(is_idle(tid) for tid in worker_threads()):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.002)


def install_at_exit() -> None:
    """Run `quiesce` when the interpreter exits (once per process)."""
    global _installed
    if not _installed:
        atexit.register(quiesce)
        _installed = True
