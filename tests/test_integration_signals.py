"""Signals in the framework integrations, in process (a notebook kernel or a script): the first SIGINT/SIGTERM asks
for an `interrupted` checkpoint, a second SIGTERM only repeats that it is due, a second SIGINT raises
KeyboardInterrupt at once (never ends the process), and the previous handlers are back afterwards. The real
frameworks' objects install the handlers; real signals are raised in this process."""

from __future__ import annotations

import contextlib
import signal
from types import SimpleNamespace

import pytest


class _Run:
    """One integration object; ``start()`` begins a training run the way its framework does, ``end()`` ends it."""

    def __init__(self, start, end, pending):
        self.start, self.end, self.pending = start, end, pending


def _lightning(tmp_path, log) -> _Run:
    pytest.importorskip("lightning", reason="the Lightning integration is tested with the real lightning package")
    from reprotrain.integrations.lightning import ReprotrainModelCheckpoint

    callback = ReprotrainModelCheckpoint(dirpath=tmp_path, log=log)
    return _Run(lambda: callback.on_train_start(None, None),
                lambda: callback.on_exception(None, None, KeyboardInterrupt()),
                lambda: callback._signals.pending)


def _huggingface(tmp_path, log) -> _Run:
    pytest.importorskip("transformers", reason="the Hugging Face integration is tested with the real transformers")
    from reprotrain.integrations.huggingface import ReprotrainCallback

    callback = ReprotrainCallback(log=log)
    args, state = SimpleNamespace(output_dir=str(tmp_path)), SimpleNamespace(global_step=0)
    return _Run(lambda: callback.on_train_begin(args, state, None), lambda: callback.on_train_end(None, None, None),
                lambda: callback._signals.pending)


def _accelerate(tmp_path, log) -> _Run:
    pytest.importorskip("accelerate", reason="the Accelerate integration is tested with the real accelerate package")
    from accelerate import Accelerator

    from reprotrain.integrations.accelerate import ReprotrainAccelerate

    rt = ReprotrainAccelerate(Accelerator(cpu=True), tmp_path / "run", log=log)
    stack = contextlib.ExitStack()
    return _Run(lambda: stack.enter_context(rt.guard()), stack.close, lambda: rt._signals.pending)


FRAMEWORKS = [_lightning, _huggingface, _accelerate]


def _handlers() -> dict:
    return {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_second_sigint_raises_keyboardinterrupt_and_gives_the_handlers_back(framework, tmp_path):
    before, messages = _handlers(), []
    run = framework(tmp_path, messages.append)
    run.start()
    try:
        assert signal.getsignal(signal.SIGINT) is not before[signal.SIGINT]
        signal.raise_signal(signal.SIGTERM)
        signal.raise_signal(signal.SIGTERM)  # again: still due, nothing raised
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)  # a signal while one is pending: stop at once, in process
        assert _handlers() == before  # given back before raising
    finally:
        run.end()
    assert _handlers() == before
    assert "SIGTERM received" in messages[0] and "Ctrl-C" not in messages[0], messages
    assert "still due" in messages[1], messages
    assert "SIGINT again: stopping now without a checkpoint" in messages[2], messages
    assert not any("exiting with code" in m for m in messages), messages


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_first_sigint_asks_for_a_checkpoint_and_says_how_to_stop_at_once(framework, tmp_path):
    messages: list[str] = []
    run = framework(tmp_path, messages.append)
    run.start()
    try:
        signal.raise_signal(signal.SIGINT)
        assert run.pending() == "SIGINT"
    finally:
        run.end()
    assert "SIGINT received: saving an interrupted checkpoint" in messages[0], messages
    assert "interrupt again to stop at once without saving" in messages[0], messages


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_a_request_from_an_earlier_run_is_forgotten_when_the_same_object_runs_again(framework, tmp_path):
    """A notebook cell stopped by SIGTERM and run again with the same callback must not stop at its first step."""
    run = framework(tmp_path, lambda m: None)
    run.start()
    signal.raise_signal(signal.SIGTERM)
    run.end()
    assert run.pending() == "SIGTERM"
    run.start()
    try:
        assert run.pending() is None
    finally:
        run.end()
