"""Stopping a run between steps: SIGTERM/SIGINT, JAX's multi-host preemption
notice, the exception the loop raises after its checkpoint, and the exit status.

The training loop polls ``StopSignal.received`` (one process) or
``reached_preemption_sync`` (several), saves, and raises ``Preempted``;
``main.run`` turns that into ``PREEMPTED_EXIT_CODE``.
"""

from __future__ import annotations

import signal
from typing import Any

PREEMPTED_EXIT_CODE = 143  # 128 + SIGTERM: schedulers read it as "requeue"


class Preempted(SystemExit):
    """Raised after the checkpoint of a SIGTERM/SIGINT-interrupted run is written."""


class StopSignal:
    """Whether to checkpoint and stop between steps: SIGTERM/SIGINT on one process,
    JAX's preemption sync point on several."""

    def __init__(self, multi_process: bool = False):
        self.received: int | None = None
        self._previous: dict[int, Any] = {}
        # Multi-process runs leave SIGTERM to JAX's preemption notifier (a Python
        # handler would replace its C++ one), which ``requested`` polls through
        # ``reached_preemption_sync`` so every host stops at the same step.
        self._multi_process = multi_process

    def __enter__(self) -> 'StopSignal':
        for sig in ((signal.SIGTERM, signal.SIGINT) if not self._multi_process else ()):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. some test runners)
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        del frame
        self.received = signum

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def requested(self, done_before: int, done_now: int) -> bool:
        """Whether to stop after the steps numbered ``done_before + 1 .. done_now``
        (counted from this process's start)."""
        if self.received is not None:
            return True
        return self._multi_process and reached_preemption_sync(done_before, done_now)


def reached_preemption_sync(done_before: int, done_now: int) -> bool:
    """Whether JAX's multi-host preemption sync point falls in the steps just run.

    On SIGTERM to any process JAX's preemption sync manager (a C++ SIGTERM
    handler plus the coordination service) sets, on every process alike, the
    sync point to one past the highest counter any process has passed.  The
    counter here is the number of steps run since this process started, passed
    for every step even when one dispatch runs several: a skipped value would be
    a missed preemption (the global step is not used: after a resume, a notice
    that arrives before the first call sets the sync point to 1).
    """
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    try:
        return any([multihost_utils.reached_preemption_sync_point(i)
                    for i in range(done_before + 1, done_now + 1)])
    except RuntimeError:  # jax_enable_preemption_service is off: no notifier
        return False
