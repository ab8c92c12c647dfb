"""A clock for tests: the system clock, with steps taken without waiting."""

from __future__ import annotations

from tidings.errors import ConfigError
from tidings.transport import SYSTEM_CLOCK, Clock

__all__ = ["SteppedClock"]


class SteppedClock(Clock):
    """The system clock, with steps a test takes without waiting.

    :meth:`step_wall` moves wall time (record timestamps) either way, as an NTP step
    does; :meth:`advance` moves monotonic time (lease judgement) forward, so that a
    lease expires without sleeping through it.
    """

    def __init__(self, base: Clock = SYSTEM_CLOCK) -> None:
        self.base = base
        self.wall_offset = 0.0  # seconds added to the base's wall time
        self.monotonic_offset = 0.0  # seconds added to the base's monotonic time

    def time_ms(self) -> int:
        return self.base.time_ms() + round(self.wall_offset * 1000)

    def monotonic(self) -> float:
        return self.base.monotonic() + self.monotonic_offset

    def step_wall(self, seconds: float) -> None:
        """Move wall time by ``seconds`` (negative: backwards)."""
        self.wall_offset += seconds

    def advance(self, seconds: float) -> None:
        """Move monotonic time forward by ``seconds`` at once."""
        if seconds < 0:
            raise ConfigError(f"advance(seconds) must be >= 0 (monotonic time), got {seconds}")
        self.monotonic_offset += seconds
