"""A free search's time limit, the latency contract of `--deadline-ms`: `Deadline`.

A search runs in rounds, one model step for every live hypothesis each (search.py). Checking
the clock after a round and stopping once it is past the deadline lets the search overrun by
up to a whole round, and the round that crosses the line is the slow one. So the search asks
before each round instead: would the round about to begin end past the deadline, if it took
as long as the slowest round so far? If so it stops there and offers what it has. With a
10 ms model call and a 25 ms deadline that is two rounds (20 ms), where checking after each
would have run three (30 ms).

A search that has nothing to offer yet goes on past the deadline until it has (a cold process's
first model call can take longer than the whole deadline: stopping then would answer nothing).
A lexicon's walk has no deadline: its entries are what it offers.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class Deadline:
    """When a search began, its slowest round so far, and whether the next round would overrun."""

    def __init__(self, seconds: float, on_expired: Callable[[], None] | None = None) -> None:
        """`seconds`: the limit (0: none); `on_expired`: told each time a search stops at it."""
        self.seconds, self.on_expired = seconds, on_expired
        self.started = self.last = time.perf_counter()
        self.slowest = 0.0

    def next_round_would_overrun(self, may_stop: bool = True) -> bool:
        """Whether the round about to begin, as slow as the slowest yet, would end past the
        deadline (see the module docstring); if so `on_expired` is told. `may_stop` False: the
        search has nothing to offer yet, so it goes on whatever the clock says (the round is
        still timed)."""
        if not self.seconds:
            return False
        now = time.perf_counter()
        self.slowest, self.last = max(self.slowest, now - self.last), now
        if not may_stop or now - self.started + self.slowest <= self.seconds:
            return False
        if self.on_expired is not None:
            self.on_expired()
        return True
