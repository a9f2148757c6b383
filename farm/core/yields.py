"""Each backend's yield: the share of its judged takes that passed, per backend and op (pure).

A backend that passes half its takes costs, on average, two takes per keyframe, clip or line, so the
scheduler's estimates and a batch's budget count ``expected_takes`` of it (1 / yield, at most the
takes still allowed). The counts come from the judge results this controller applied (``count``)
on top of what the store kept from earlier runs (``prior``, loaded and saved by the host:
farm.store.yields); ``base`` is what replaying the journal counted before ``prior`` was loaded, so
that a restart does not count its own journal twice.
"""

from __future__ import annotations

from collections.abc import Mapping

MIN_JUDGED = 3  # takes judged before a yield is believed (fewer: one take is expected)

Counts = dict[tuple[str, str], tuple[int, int]]  # (backend, op) -> (passed, judged)


class Yields:
    def __init__(self) -> None:
        self.counted: Counts = {}
        self.prior: Counts = {}
        self.base: Counts = {}

    def count(self, backend: str, op: str, passed: bool) -> None:
        p, n = self.counted.get((backend, op), (0, 0))
        self.counted[(backend, op)] = (p + int(passed), n + 1)

    def load(self, prior: Mapping[tuple[str, str], tuple[int, int]]) -> None:
        """Take what the store kept as the prior; what was counted so far is already in it."""
        self.prior, self.base = dict(prior), dict(self.counted)

    def new(self) -> Counts:
        """What was counted since the prior was loaded (what the host adds to the store)."""
        out = {}
        for k, (p, n) in self.counted.items():
            bp, bn = self.base.get(k, (0, 0))
            if n > bn:
                out[k] = (p - bp, n - bn)
        return out

    def table(self) -> Counts:
        """(backend, op) -> (passed, judged): the prior and what was counted since."""
        out = dict(self.prior)
        for k, (p, n) in self.new().items():
            pp, pn = out.get(k, (0, 0))
            out[k] = (pp + p, pn + n)
        return out

    def of(self, backend: str, op: str) -> float | None:
        """The yield of ``backend`` on ``op``, or None while fewer than MIN_JUDGED takes were judged."""
        prior_p, prior_n = self.prior.get((backend, op), (0, 0))
        p, n = self.counted.get((backend, op), (0, 0))
        bp, bn = self.base.get((backend, op), (0, 0))
        passed, judged = prior_p + p - bp, prior_n + n - bn
        return passed / judged if judged >= MIN_JUDGED else None

    def expected_takes(self, backend: str, op: str, remaining: int) -> float:
        """How many takes an action of ``backend`` is expected to need, with ``remaining`` takes allowed
        (this one included): 1 / yield, at least 1 and at most ``remaining``."""
        y = self.of(backend, op)
        if y is None or remaining <= 1:
            return 1.0
        return min(float(remaining), 1.0 / y) if y > 0 else float(remaining)
