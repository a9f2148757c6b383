"""Whether the controller's store answers: what the controller says while it does not.

When a journal write or a lookup fails because the store is unavailable (S3 down, a full or
read-only disk), the engine keeps what it was doing (farm.core.engine: held results, the backlog)
and raises ``StoreDown``. The controller's loop then tells ``StoreHealth``, waits the backoff it
gives (0.5 s doubling to 10 s) and tries again; the first success ends the outage. Meanwhile:

* ``farm controller status`` and ``farm batch status`` say ``store: down since ... (error)``;
* ``farm_store_up`` is 0 and ``farm_store_errors_total`` counts the failed tries (alert
  ``FarmStoreDown`` in dashboards/alerts.yaml);
* the log has one ``controller.store_down`` when it starts and one ``controller.store_back`` (with
  how long it lasted) when it ends, not one line per try.

Example::

    health = StoreHealth(metrics)
    try:
        engine.advance(finished)
        health.ok(time.time())
    except StoreDown as exc:
        stop.wait(health.failed(exc, time.time()))
"""

from __future__ import annotations

import threading
from typing import Any

import structlog

log = structlog.get_logger("farm.controller")


class StoreHealth:
    """Thread-safe: the loop writes it, RPCs read ``describe``."""

    def __init__(self, metrics: Any = None, first_wait_s: float = 0.5, max_wait_s: float = 10.0):
        self.metrics, self.first_wait_s, self.max_wait_s = metrics, first_wait_s, max_wait_s
        self._lock = threading.Lock()
        self.down_since: float | None = None
        self.error = ""
        self.tries = 0
        self.outages = 0
        self._set_up(True)

    @property
    def up(self) -> bool:
        return self.down_since is None

    def failed(self, exc: BaseException, now: float) -> float:
        """One more failed try; returns how long to wait before the next one."""
        cause = getattr(exc, "cause", exc)
        with self._lock:
            self.error = f"{type(cause).__name__}: {cause}"[:300]
            self.tries += 1
            if self.down_since is None:
                self.down_since, self.outages = now, self.outages + 1
                log.error("controller.store_down", error=self.error)
            tries = self.tries
        self._set_up(False)
        if self.metrics is not None and getattr(self.metrics, "store_errors", None) is not None:
            self.metrics.store_errors.inc()
        return min(self.max_wait_s, self.first_wait_s * 2 ** min(tries - 1, 10))

    def ok(self, now: float) -> None:
        """A try succeeded: the outage, if any, is over."""
        if self.down_since is None:
            return
        with self._lock:
            since, tries, self.down_since, self.tries = self.down_since, self.tries, None, 0
        if since is not None:
            log.warning("controller.store_back", down_s=round(now - since, 1), tries=tries)
        self._set_up(True)

    def describe(self) -> dict[str, Any]:
        """``{"up": True}``, or since when it is down, the last error and the tries so far."""
        with self._lock:
            if self.down_since is None:
                return {"up": True, "outages": self.outages}
            return {
                "up": False,
                "down_since": self.down_since,
                "error": self.error,
                "tries": self.tries,
                "outages": self.outages,
            }

    def _set_up(self, up: bool) -> None:
        gauge = getattr(self.metrics, "store_up", None) if self.metrics is not None else None
        if gauge is not None:
            gauge.set(1 if up else 0)
