"""The wall clock, behind the ``Clock`` port (farm.core.ports): the live farm's time."""

from __future__ import annotations

import time


class SystemClock:
    def now(self) -> float:
        return time.time()
