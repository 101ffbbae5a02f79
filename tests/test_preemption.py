"""preemption: SIGTERM/SIGINT between steps on one process, the handlers put back,
and no notifier to poll on several without JAX's preemption service."""

import os
import signal

import pytest

from jaxres import preemption


@pytest.mark.parametrize('sig', [signal.SIGTERM, signal.SIGINT])
def test_a_signal_asks_to_stop_and_the_previous_handler_comes_back(sig):
    before = signal.getsignal(sig)
    with preemption.StopSignal() as stop:
        assert not stop.requested(0, 1)
        os.kill(os.getpid(), sig)
        assert stop.received == sig and stop.requested(1, 2)
    assert signal.getsignal(sig) is before


def test_several_processes_leave_sigterm_to_jax_and_poll_its_sync_point():
    before = signal.getsignal(signal.SIGTERM)
    with preemption.StopSignal(multi_process=True) as stop:
        assert signal.getsignal(signal.SIGTERM) is before  # no Python handler installed
        # Without jax.distributed there is no preemption service: never a sync point.
        assert not stop.requested(0, 5)

