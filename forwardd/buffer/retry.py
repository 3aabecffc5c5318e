"""When to try a failed chunk again, and when to give up on it (per chunk, never for the whole queue)."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["RetryPolicy"]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential back-off with jitter and a cap, like Fluentd's ``retry_wait``/``retry_max_interval``.

    ``jitter`` is the fraction taken *off* a delay at random, so many outputs failing together spread out
    without ever waiting longer than ``max``. ``max_attempts`` counts writes of one chunk (first included);
    ``max_age`` is seconds since that chunk's first attempt. Either one exhausted sends the chunk to the
    dead-letter folder; ``None`` means retry forever.
    """

    initial: float = 1.0
    max: float = 300.0
    multiplier: float = 2.0
    jitter: float = 0.125
    max_attempts: int | None = None
    max_age: float | None = None

    def __post_init__(self) -> None:
        if self.initial < 0 or self.max < self.initial or self.multiplier < 1:
            raise ValueError("retry policy needs 0 <= initial <= max and multiplier >= 1")
        if not 0 <= self.jitter < 1:
            raise ValueError("retry jitter must be in [0, 1)")
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")

    def delay(
        self,
        attempt: int,
        retry_after: float | None = None,
        rand: Callable[[], float] = random.random,
    ) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based).

        A destination's ``retry_after`` hint replaces the computed delay (it knows better than a formula),
        still capped at ``max`` so one bad hint cannot park a queue for hours.
        """
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max)
        try:
            base = min(self.initial * self.multiplier ** (attempt - 1), self.max)
        except OverflowError:  # thousands of attempts into a long outage
            base = self.max
        return base * (1.0 - self.jitter * rand())

    def exhausted(self, attempts: int, age: float) -> bool:
        """True when a chunk tried ``attempts`` times over ``age`` seconds must be given up."""
        if self.max_attempts is not None and attempts >= self.max_attempts:
            return True
        return self.max_age is not None and age >= self.max_age
