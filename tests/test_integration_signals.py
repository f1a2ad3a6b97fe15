"""Signals in the framework integrations, in process (a notebook kernel or a script): the first SIGINT/SIGTERM asks
for an `interrupted` checkpoint, a second SIGTERM only repeats that it is due, a second SIGINT raises
KeyboardInterrupt at once (never ends the process), and the previous handlers are back afterwards. The real
frameworks' objects install the handlers; real signals are raised in this process."""

from __future__ import annotations

import contextlib
import signal
from types import SimpleNamespace

import pytest


def _lightning(tmp_path, log):
    pytest.importorskip("lightning", reason="the Lightning integration is tested with the real lightning package")
    from reprotrain.integrations.lightning import ReprotrainModelCheckpoint

    callback = ReprotrainModelCheckpoint(dirpath=tmp_path, log=log)
    callback.on_train_start(None, None)
    return contextlib.ExitStack(), lambda: callback.on_exception(None, None, KeyboardInterrupt())


def _huggingface(tmp_path, log):
    pytest.importorskip("transformers", reason="the Hugging Face integration is tested with the real transformers")
    from reprotrain.integrations.huggingface import ReprotrainCallback

    callback = ReprotrainCallback(log=log)
    callback.on_train_begin(SimpleNamespace(output_dir=str(tmp_path)), SimpleNamespace(global_step=0), None)
    return contextlib.ExitStack(), lambda: callback.on_train_end(None, None, None)


def _accelerate(tmp_path, log):
    pytest.importorskip("accelerate", reason="the Accelerate integration is tested with the real accelerate package")
    from accelerate import Accelerator

    from reprotrain.integrations.accelerate import ReprotrainAccelerate

    stack = contextlib.ExitStack()
    stack.enter_context(ReprotrainAccelerate(Accelerator(cpu=True), tmp_path / "run", log=log).guard())
    return stack, stack.close


@pytest.mark.parametrize("framework", [_lightning, _huggingface, _accelerate])
def test_second_sigint_raises_keyboardinterrupt_and_gives_the_handlers_back(framework, tmp_path):
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    messages: list[str] = []
    stack, end = framework(tmp_path, messages.append)
    with stack:
        assert signal.getsignal(signal.SIGINT) is not before[signal.SIGINT]
        signal.raise_signal(signal.SIGTERM)
        signal.raise_signal(signal.SIGTERM)  # again: still due, nothing raised
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)  # a signal while one is pending: stop at once, in process
        assert {sig: signal.getsignal(sig) for sig in before} == before  # given back before raising
        end()
    assert {sig: signal.getsignal(sig) for sig in before} == before
    assert "SIGTERM received" in messages[0] and "Ctrl-C" not in messages[0], messages
    assert "still due" in messages[1], messages
    assert "SIGINT again: stopping now without a checkpoint" in messages[2], messages
    assert not any("exiting with code" in m for m in messages), messages


@pytest.mark.parametrize("framework", [_lightning, _huggingface, _accelerate])
def test_first_sigint_asks_for_a_checkpoint_and_says_how_to_stop_at_once(framework, tmp_path):
    messages: list[str] = []
    stack, end = framework(tmp_path, messages.append)
    with stack:
        signal.raise_signal(signal.SIGINT)
        end()
    assert "SIGINT received: saving an interrupted checkpoint" in messages[0], messages
    assert "interrupt again to stop at once without saving" in messages[0], messages
