"""Takes and judges: which take of a judged action is used (pure).

A keyframe, a clip or a line may be judged: judge actions measure its output and answer pass or
fail with a score (workers/judge/). A take that fails is made again as the next take, an action of
its own (its ``take`` parameter is part of its key, so every take is cached and paid once). The
first take that passes is used downstream; when every take allowed has failed, the best-scoring
one is used and the shot is *flagged* for review. A person may overrule a judge: a review approves
a take (it is used, whatever its judges said) or rejects it (the next take is made, even past the
limit: a reviewer's reject always earns one more take).

The verdicts are facts the planner reads, like a line's length: ``chain`` decides from what is
known and says which take is used, or that it is not known yet (a take waiting for its judges).

Example::

    takes = chain(make_take, judges_of, limit=3, facts=Facts(verdicts={...}), label="clip s01-02", op="clip")
    takes.chosen   # the key used downstream, or None while a verdict is awaited
    takes.flagged  # why the shot wants a person's look, or None
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

JUDGED_OPS = ("keyframe", "clip", "line", "lipsync", "episode")
TAKEN_OPS = (
    "keyframe",
    "clip",
    "line",
    "lipsync",
)  # the judged ops a failed verdict makes again (an episode fails instead)
DEFAULT_TAKES = 3


class _Keyed(Protocol):
    @property
    def key(self) -> str: ...


@dataclass(frozen=True)
class Verdict:
    """What a take's judges said, together: it passes when every judge passed; its score is the lowest."""

    passed: bool
    score: float
    failing: tuple[str, ...] = ()  # "check: detail" of each failed check

    @classmethod
    def of(cls, meta: Mapping[str, Any]) -> Verdict:
        """A judge's answer (its manifest's meta, checked by farm.core.checks) as a verdict."""
        failing = tuple(
            f"{c.get('name')}: {c.get('detail') or c.get('value')}"
            for c in meta.get("checks", ())
            if not c.get("passed")
        )
        return cls(meta.get("verdict") == "pass", float(meta.get("score", 0.0)), failing)


def combine(verdicts: Sequence[Verdict]) -> Verdict:
    return Verdict(
        all(v.passed for v in verdicts),
        min(v.score for v in verdicts),
        tuple(f for v in verdicts for f in v.failing),
    )


@dataclass(frozen=True)
class Review:
    """A person's verdict on one take (by its action key): approve uses it, reject makes the next take."""

    key: str
    shot: str
    approve: bool
    reason: str = ""
    at: float = 0.0


@dataclass(frozen=True)
class JudgeChoice:
    """One judge of an op: its backend (name, version, features) and the spec's threshold overrides."""

    name: str
    version: str
    thresholds: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class Judging:
    """Which judges run on which op, how many takes an action may have, and whether an episode with a
    flagged shot fails (``strict``) instead of delivering for review."""

    judges: Mapping[str, tuple[JudgeChoice, ...]] = field(default_factory=dict)
    takes: int = DEFAULT_TAKES
    strict: bool = False


@dataclass(frozen=True)
class Facts:
    """What the planner knows of takes: each judge action's verdict (by its key), the reviews (by the
    reviewed take's key), the takes a budget declined to start (by key). ``assume_pass``: a take not
    judged yet counts as passed (an estimate's sketch, which has no verdicts)."""

    verdicts: Mapping[str, Verdict] = field(default_factory=dict)
    reviews: Mapping[str, Review] = field(default_factory=dict)
    declined: frozenset[str] = frozenset()
    assume_pass: bool = False


NO_FACTS = Facts()


@dataclass(frozen=True)
class Take:
    number: int
    key: str
    judges: tuple[str, ...]  # its judge actions' keys
    verdict: Verdict | None  # its judges' together; None until every one answered (or none judges it)
    review: Review | None


@dataclass(frozen=True)
class Takes:
    """The takes of one judged action and which is used."""

    label: str  # take 1's: "clip s01-02"
    op: str
    shot: str | None  # the shot it belongs to (a keyframe, clip or line), for reviews
    takes: tuple[Take, ...]
    chosen: str | None  # the key used downstream; None while a verdict is awaited
    flagged: str | None = None  # why a person should look: every take failed, or the budget stopped them

    @property
    def used(self) -> Take | None:
        return next((t for t in self.takes if t.key == self.chosen), None)


def chain(
    make: Callable[[int], _Keyed],
    judges_of: Callable[[_Keyed], Sequence[_Keyed]],
    *,
    limit: int,
    facts: Facts,
    label: str,
    op: str,
    shot: str | None,
) -> Takes:
    """The takes of one judged action from what is known. ``make(n)`` is take ``n`` (1-based),
    ``judges_of(take)`` its judge actions (both already in the plan when they return); ``limit``
    the takes allowed. Take n+1 is planned only once take n is known to have failed."""
    takes: list[Take] = []
    number, allowed = 1, limit
    while True:
        action = make(number)
        judges = judges_of(action)
        review = facts.reviews.get(action.key)
        known = [facts.verdicts.get(j.key) for j in judges]
        verdict = combine([v for v in known if v is not None]) if judges and None not in known else None
        takes.append(Take(number, action.key, tuple(j.key for j in judges), verdict, review))
        if review is not None:
            passed = review.approve
        elif not judges:
            passed = True
        elif verdict is None:
            if not facts.assume_pass:
                return Takes(label, op, shot, tuple(takes), None)
            passed = True
        else:
            passed = verdict.passed
        if passed:
            return Takes(label, op, shot, tuple(takes), action.key)
        if review is not None:
            allowed += 1  # a person's reject earns the next take, whatever the limit
        if number >= allowed:
            return _best(label, op, shot, takes, f"every take failed ({len(takes)} of {allowed})")
        if _next_declined(make, number, facts):
            return _best(label, op, shot, takes, "the batch's budget stopped further takes")
        number += 1


def _next_declined(make: Callable[[int], _Keyed], number: int, facts: Facts) -> bool:
    return bool(facts.declined) and make(number + 1).key in facts.declined


def _best(label: str, op: str, shot: str | None, takes: list[Take], why: str) -> Takes:
    """Every take failed: the best-scoring one a person has not rejected (the earliest of equals)."""
    usable = [t for t in takes if t.review is None or t.review.approve]
    best = max(usable, key=lambda t: ((t.verdict.score if t.verdict else 0.0), -t.number), default=None)
    if best is None:  # cannot happen: a reject always earns a next take
        return Takes(label, op, shot, tuple(takes), None)
    said = f"score {best.verdict.score:.2f}" if best.verdict else "not judged"
    if best.verdict and best.verdict.failing:
        said += ": " + "; ".join(best.verdict.failing[:3])
    reason = f"{label}: {why}; take {best.number} is used ({said})"
    return Takes(label, op, shot, tuple(takes), best.key, reason)
