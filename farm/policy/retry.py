"""What to do when an action fails: retry after a backoff, quarantine it, or give up.

The decision is an ordered list of small rules, the first that answers wins (as Prefect's
orchestration policies are)::

    1. not retryable                         -> GiveUp    (the error says trying again cannot help)
    2. failed on >= quarantine_workers
       distinct workers                      -> Quarantine (the action, not a machine, is the problem)
    3. attempt >= max_attempts               -> GiveUp
    4. otherwise                             -> Retry after a delay

The delay is exponential backoff with *full jitter*: uniform in ``[0, min(max_delay_s, base_s *
factor ** (attempt - 1))]``. The "uniform" draw is derived from SHA-256 of the key and the attempt,
not from a global random generator, so the simulator and a journal replay compute the same delays.

Quarantine and GiveUp both fail the action's episode with the reason; the rest of the batch goes on.

Example::

    RetryPolicy().decide("k1", attempt=1, retryable=True, failed_workers={"w1"})   # Retry(≤ 2 s)
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Collection
from dataclasses import dataclass


@dataclass(frozen=True)
class Retry:
    not_before_delay_s: float  # hold the action back this long after the failure, then make it ready


@dataclass(frozen=True)
class Quarantine:
    reason: str


@dataclass(frozen=True)
class GiveUp:
    reason: str


Decision = Retry | Quarantine | GiveUp


def jitter(key: str, attempt: int) -> float:
    """A number in [0, 1) that depends only on (key, attempt)."""
    digest = hashlib.sha256(f"{key}:{attempt}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


@dataclass(frozen=True)
class RetryPolicy:
    base_s: float = 2.0
    factor: float = 2.0
    max_delay_s: float = 300.0
    max_attempts: int = 5
    quarantine_workers: int = 3

    def ceiling(self, attempt: int) -> float:
        """The largest delay after failure number ``attempt`` (1 for the first failure)."""
        exponent = max(0, attempt - 1)
        # Saturate before float overflow: past the max the exact power does not matter.
        if self.factor > 1 and self.base_s > 0 and exponent > 1024:
            return self.max_delay_s
        return min(self.max_delay_s, self.base_s * self.factor**exponent)

    def decide(self, key: str, attempt: int, retryable: bool, failed_workers: Collection[str]) -> Decision:
        """Decide after the ``attempt``-th failure (1-based) of action ``key``.

        ``failed_workers``: the distinct workers this action has failed on so far, this one included.
        """
        for rule in _RULES:
            decision = rule(self, key, attempt, retryable, failed_workers)
            if decision is not None:
                return decision
        raise AssertionError("the last rule always decides")


def _not_retryable(
    policy: RetryPolicy, key: str, attempt: int, retryable: bool, workers: Collection[str]
) -> Decision | None:
    if not retryable:
        return GiveUp("failed with an error that is not retryable")
    return None


def _many_workers(
    policy: RetryPolicy, key: str, attempt: int, retryable: bool, workers: Collection[str]
) -> Decision | None:
    if len(set(workers)) >= policy.quarantine_workers:
        names = ", ".join(sorted(workers))
        return Quarantine(f"quarantined: failed on {len(set(workers))} different workers ({names})")
    return None


def _too_many_attempts(
    policy: RetryPolicy, key: str, attempt: int, retryable: bool, workers: Collection[str]
) -> Decision | None:
    if attempt >= policy.max_attempts:
        return GiveUp(f"gave up after {attempt} failed attempts")
    return None


def _backoff(policy: RetryPolicy, key: str, attempt: int, retryable: bool, workers: Collection[str]) -> Decision | None:
    return Retry(jitter(key, attempt) * policy.ceiling(attempt))


_RULES: tuple[Callable[..., Decision | None], ...] = (_not_retryable, _many_workers, _too_many_attempts, _backoff)
