"""The library API in a notebook: a real IPython InteractiveShell runs cells, a real SIGINT stops them.

What a Jupyter user does: run the training cell, press stop (the kernel's interrupt button sends SIGINT to the
kernel process), run the same cell again. The re-run must resume in the same process (no RunDirectoryBusy
from the notebook's own lock) and end bit-exactly where an uninterrupted run ends, numpy's generator included;
pressing stop twice must stop the cell at once and leave the shell (the kernel) alive.
"""

from __future__ import annotations

import signal
import threading
import time

import pytest

IPython = pytest.importorskip("IPython", reason="the [test] extra installs ipython; without it there is no shell")
from IPython.core.interactiveshell import InteractiveShell  # noqa: E402

TRAIN_CELL = """
import time
import numpy as np, torch
from reprotrain.checkpoint import CheckpointManager

torch.manual_seed(0)
np.random.seed(0)
model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
data_x, data_y = torch.randn(64, 8), torch.randn(64, 1)
mgr = CheckpointManager(RUN_DIR, model, opt, save_policy="steps:4", log=LOG.append)
info = mgr.resume()
step = info.step if info else 0
with mgr.guard():
    while step < 30:
        noise = torch.from_numpy(np.random.standard_normal((64, 1)).astype("float32"))  # numpy's global generator
        keep = (torch.rand(64, 1) > 0.2).float()                                           # torch's
        loss = (((model(data_x) - data_y - 0.1 * noise) ** 2) * keep).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        mgr.step_done(epoch=0, step=step, samples_seen=64 * step, metrics={"loss": loss.item()})
        if step == STOP_AT:
            REACHED.set()
            while not RELEASE.is_set():  # the test's thread interrupts the cell here, like the kernel's stop button
                time.sleep(0.01)         # (bytecode runs between sleeps: a signal is handled within 10 ms)
mgr.finish()
final = {k: v.clone() for k, v in model.state_dict().items()}
numpy_after = np.random.get_state()[1].copy()
torch_after = torch.get_rng_state().clone()
"""


class Notebook:
    def __init__(self, run_dir):
        self.shell = InteractiveShell.instance()
        self.log: list[str] = []
        self.shell.user_ns.update(RUN_DIR=str(run_dir), LOG=self.log, STOP_AT=-1)

    def run(self, code: str, *, interrupt_at: int = -1, interrupts: int = 0):
        reached, release = threading.Event(), threading.Event()
        self.shell.user_ns.update(STOP_AT=interrupt_at, REACHED=reached, RELEASE=release)
        thread = None
        if interrupts:
            thread = threading.Thread(target=self._interrupt, args=(reached, release, interrupts), daemon=True)
            thread.start()
        else:
            release.set()
        result = self.shell.run_cell(code, store_history=False)
        if thread is not None:
            thread.join(120)
        return result

    def _interrupt(self, reached, release, count):
        reached.wait(120)
        for n in range(count):
            # A real SIGINT, aimed at the main thread (os.kill may hand it to this thread, and then the cell,
            # blocked in RELEASE.wait, would see it only after the wait).
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
            # Wait until the handler has seen this one: two SIGINTs in flight together arrive as one.
            deadline = time.monotonic() + 60
            while sum("SIGINT" in m for m in self.log) <= n and time.monotonic() < deadline:
                time.sleep(0.005)
        release.set()

    def __getitem__(self, name):
        return self.shell.user_ns[name]

    def close(self):
        InteractiveShell.clear_instance()


@pytest.fixture
def notebook_pair(tmp_path):
    books = []

    def make(name):
        book = Notebook(tmp_path / name)
        books.append(book)
        return book

    yield make
    for book in books:
        book.close()


def reference_run(tmp_path):
    book = Notebook(tmp_path / "reference")
    try:
        result = book.run(TRAIN_CELL)
        assert result.success, result.error_in_exec
        return book["final"], book["numpy_after"], book["torch_after"]
    finally:
        book.close()


def assert_same(book, reference):
    final, numpy_after, torch_after = reference
    assert book["final"].keys() == final.keys()
    for name in final:
        assert book["final"][name].equal(final[name]), name
    assert (book["numpy_after"] == numpy_after).all()
    assert book["torch_after"].equal(torch_after)


def test_stop_a_cell_and_run_it_again_resumes_bit_exactly(tmp_path):
    reference = reference_run(tmp_path)
    book = Notebook(tmp_path / "run")
    try:
        original = signal.getsignal(signal.SIGINT)
        stopped = book.run(TRAIN_CELL, interrupt_at=10, interrupts=1)
        assert not stopped.success
        assert type(stopped.error_in_exec).__name__ == "Interrupted"
        assert stopped.error_in_exec.path.name == "step0000000011-interrupted.pth"
        # The block is over: handlers are back and the lock is free, the manager says so.
        assert signal.getsignal(signal.SIGINT) is original
        assert book["mgr"].closed
        assert not any("exiting with code" in m for m in book.log)  # nothing exits in a notebook
        assert any("run it again to resume" in m for m in book.log)

        again = book.run(TRAIN_CELL)  # the same cell, the same process: no RunDirectoryBusy
        assert again.success, again.error_in_exec
        assert any("resuming from" in m and "step0000000011-interrupted" in m for m in book.log)
        assert_same(book, reference)
    finally:
        book.close()


def test_stop_twice_stops_at_once_and_the_shell_survives(tmp_path):
    reference = reference_run(tmp_path)
    book = Notebook(tmp_path / "run")
    try:
        stopped = book.run(TRAIN_CELL, interrupt_at=10, interrupts=2)
        assert not stopped.success
        assert isinstance(stopped.error_in_exec, KeyboardInterrupt)  # not os._exit: we are still here
        assert any("SIGINT again: stopping now without a checkpoint" in m for m in book.log)
        names = sorted(p.name for p in (tmp_path / "run").glob("*.pth"))
        assert names == ["step0000000004-latest.pth", "step0000000008-latest.pth"]  # no interrupted, no emergency
        assert not list((tmp_path / "run").glob(".*partial"))

        alive = book.run("1 + 1")
        assert alive.success and alive.result == 2
        again = book.run(TRAIN_CELL)
        assert again.success, again.error_in_exec
        assert any("resuming from" in m and "step0000000008-latest" in m for m in book.log)
        assert_same(book, reference)
    finally:
        book.close()
