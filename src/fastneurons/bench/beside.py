"""A bare forward beside each of record's micro-batches (bench only, ``--bare-beside``): the same batch
through the same model with the counters idle, right before or right after the counted forward (turn
about), timed apart as the phase ``bare_beside``. Summed over a run it is the bare forward of the same
batches measured at the same moments as record's own, in the same process: a host whose speed drifts
by more than counting costs (this 2-core machine moves +-5% between identical runs) slows both alike.
Record's own time is then the run's minus its setup and minus ``bare_beside``. Record's commit clock
leaves the beside forwards out too, so it commits when it would without them (a run twice as long
would otherwise write twice the snapshots).
"""
from __future__ import annotations

import time

BESIDE_PHASE = "bare_beside"


class _ClockWithout:
    """The ``time`` module as the runner sees it, its ``monotonic()`` less the beside forwards' seconds."""

    def __init__(self, state):
        self._state = state

    def monotonic(self) -> float:
        return time.monotonic() - self._state.seconds

    def __getattr__(self, name):
        return getattr(time, name)


class BareBeside:
    """Installed in a record worker after its phases (``install``): runs the beside forwards of pass 1."""

    def __init__(self, phases, bare_forward):
        self.phases, self.bare_forward = phases, bare_forward
        self.idle = False  # the counters' hooks return at once (the beside forward is running)
        self.in_pass_one = False  # only pass 1's forwards get one (a second pass reads the data again)
        self.calls = 0
        self.seconds = 0.0  # wall seconds of the beside forwards so far

    @classmethod
    def install(cls, phases) -> BareBeside:
        """Wrap the runner's forward, its unit loop, its clock and the counters' hook; returns the state."""
        from fastneurons.models import architectures as archs
        from fastneurons.recording import counter, runner

        state = cls(phases, getattr(archs.run_until, "__wrapped__", archs.run_until))
        counted_forward, run_units, count = archs.run_until, runner._run_units, counter.CounterHandle._count

        def run_until(*args, **kwargs):
            if not state.in_pass_one:
                return counted_forward(*args, **kwargs)
            bare_first = state.calls % 2 == 0
            state.calls += 1
            if bare_first:
                state._bare(args, kwargs)
            out = counted_forward(*args, **kwargs)
            if not bare_first:
                state._bare(args, kwargs)
            return out

        def units(*args, **kwargs):
            state.in_pass_one = True
            try:
                return run_units(*args, **kwargs)
            finally:
                state.in_pass_one = False

        def hook(self, name, tensor):
            if not state.idle:
                count(self, name, tensor)

        archs.run_until, runner._run_units, counter.CounterHandle._count = run_until, units, hook
        runner.time = _ClockWithout(state)
        return state

    def _bare(self, args, kwargs) -> None:
        """The same forward with every counter idle, timed into ``bare_beside``."""
        self.idle, start = True, time.monotonic()
        try:
            with self.phases.timed(BESIDE_PHASE):
                self.bare_forward(*args, **kwargs)
        finally:
            self.idle = False
            self.seconds += time.monotonic() - start
