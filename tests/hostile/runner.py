"""One batch of the hostile driver: run CLI invocations in this process under a memory limit and a timeout each.

stdin: a JSON list of argv lists. argv[1]: where to append one JSON line per finished invocation. Imports
everything first, then sets RLIMIT_AS to the address space mapped so far plus REPROTRAIN_HOSTILE_MEMORY.
"""

from __future__ import annotations

import importlib
import json
import os
import resource
import signal
import sys
import time


RESTART = 75  # exit status: "restart me after the invocations already reported"


class _Hang(BaseException):
    """Raised by SIGALRM: the invocation ran past its timeout (BaseException: no `except Exception` hides it)."""


def _vm_size() -> int:
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def main() -> None:
    invocations = json.loads(sys.stdin.read())
    results = open(sys.argv[1], "a", encoding="utf-8")  # noqa: SIM115 - open for the whole batch
    import torch  # noqa: F401 - imported before the limit: the limit is for what handling an input adds

    torch.set_num_threads(1)
    from click.testing import CliRunner

    from reprotrain.cli import COMMANDS, main as cli

    for target in COMMANDS.values():
        importlib.import_module(f"reprotrain.cli.{target.split(':')[0]}")
    for module in ("reprotrain.audit.verify", "reprotrain.audit.inspection", "reprotrain.audit.classify",
                   "reprotrain.checkpoint.state", "reprotrain.envlock.verify", "reprotrain.envlock.lockfile",
                   "reprotrain.envlock.create", "reprotrain.envlock.export", "reprotrain.integrations.report",
                   "reprotrain.training", "reprotrain.training.loop", "reprotrain.fingerprint.collect",
                   "jsonschema", "yaml", "rich.table", "conda_lock.lookup", "torchvision"):
        try:
            importlib.import_module(module)
        except Exception:  # noqa: BLE001 - optional: whatever is missing is imported (and counted) later
            pass
    memory = int(os.environ.get("REPROTRAIN_HOSTILE_MEMORY", 1 << 30))
    timeout = float(os.environ.get("REPROTRAIN_HOSTILE_TIMEOUT", 30))
    limit = _vm_size() + memory
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    def on_alarm(signum, frame):
        raise _Hang()

    signal.signal(signal.SIGALRM, on_alarm)
    runner = CliRunner()
    for argv in invocations:
        start = time.monotonic()
        problem, detail, code = None, "", None
        signal.setitimer(signal.ITIMER_REAL, timeout)
        try:
            result = runner.invoke(cli, argv, catch_exceptions=True)
            signal.setitimer(signal.ITIMER_REAL, 0)
            code = result.exit_code
            output = result.output
            exc = result.exception
            if isinstance(exc, MemoryError):
                problem, detail = "memory", repr(exc)[:300]
            elif exc is not None and not isinstance(exc, SystemExit):
                problem, detail = "traceback", f"{type(exc).__name__}: {exc}"[:300]
            elif "Traceback (most recent call last)" in output:
                problem, detail = "traceback", output[-300:]
            elif argv[:2] == ["ls", "--json"]:
                detail = result.stdout
        except _Hang:
            problem, detail = "hang", f"no answer after {timeout:.0f} s"
        except MemoryError as exc:
            signal.setitimer(signal.ITIMER_REAL, 0)
            problem, detail = "memory", repr(exc)[:300]
        results.write(json.dumps({"exit_code": code, "problem": problem, "detail": detail,
                                  "seconds": round(time.monotonic() - start, 3)}) + "\n")
        results.flush()
        if problem == "hang":  # whatever the interrupted invocation left behind must not slow down the next ones
            os._exit(RESTART)


if __name__ == "__main__":
    main()
