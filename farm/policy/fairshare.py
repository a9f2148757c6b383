"""How many GPUs each studio may hold now: weighted water-filling with floors, work-conserving.

A studio *wants* what it holds plus what its ready actions ask for. Studios that want nothing get
nothing. Each studio that wants GPUs gets::

    clamp(level * weight, low=min(floor, want), high=want)

with one ``level`` chosen so the allowances add up to the capacity. So floors are guaranteed (a
floor is a minimum, not a bonus on top of the weighted share), contended GPUs are divided by weight,
and whatever a studio does not want flows to the studios that do (burst). If everybody's wants fit,
everybody gets what they want. If the floors alone exceed the capacity (a misconfiguration), they
are scaled down in proportion.

Running actions are never preempted: a studio above its allowance (it burst while others were idle)
simply starts nothing until it is back under. ``permits`` is the start rule: a studio may start a GPU
action while it holds *less* than its allowance, even if the action takes it over; with whole-GPU
actions and fractional allowances (8 GPUs shared 1:1:1 is 2.67 each) a stricter rule would leave
GPUs idle, and the overshoot is less than one action.

Example::

    allowances([Share("a", 3), Share("b", 1)], {}, {"a": 10, "b": 10}, 4)   # {"a": 3.0, "b": 1.0}
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from farm.policy.types import Share

EPS = 1e-9


def allowances(
    shares: Iterable[Share], gpus_by_studio: Mapping[str, float], demand_by_studio: Mapping[str, float], capacity: float
) -> dict[str, float]:
    """Studio -> GPUs it may hold now, for every studio that holds or wants GPUs.

    ``gpus_by_studio``: GPUs each studio holds (running actions); ``demand_by_studio``: GPUs its ready,
    not yet running actions ask for; ``capacity``: all GPUs of the farm (free and in use). Studios
    without a Share have weight 1 and no floor.
    """
    by_studio = {s.studio: s for s in shares}
    want: dict[str, float] = {}
    for studio in {*gpus_by_studio, *demand_by_studio}:
        w = max(0.0, gpus_by_studio.get(studio, 0.0)) + max(0.0, demand_by_studio.get(studio, 0.0))
        if w > EPS:
            want[studio] = w
    if not want:
        return {}
    if sum(want.values()) <= capacity + EPS:
        return dict(want)
    weight = {s: by_studio[s].weight if s in by_studio else 1.0 for s in want}
    floor = {s: min(by_studio[s].floor_gpus if s in by_studio else 0.0, want[s]) for s in want}
    floors = sum(floor.values())
    if floors >= capacity - EPS:
        scale = capacity / floors if floors > 0 else 0.0
        return {s: floor[s] * scale for s in want}

    def clamp(level: float, s: str) -> float:
        return min(want[s], max(floor[s], level * weight[s]))

    # The total is a continuous, non-decreasing, piecewise-linear function of the level; its kinks
    # are where some studio's share meets its floor or its want. Find the piece that reaches the
    # capacity and solve it exactly.
    kinks = sorted({0.0, *(floor[s] / weight[s] for s in want), *(want[s] / weight[s] for s in want)})
    lo = 0.0
    for hi in kinks:
        if sum(clamp(hi, s) for s in want) >= capacity - EPS:
            break
        lo = hi
    mid = (lo + hi) / 2
    fixed, active_weight = 0.0, 0.0
    for s in want:
        share = mid * weight[s]
        if floor[s] < share < want[s]:
            active_weight += weight[s]
        else:
            fixed += clamp(mid, s)
    level = (capacity - fixed) / active_weight if active_weight > 0 else hi
    return {s: clamp(level, s) for s in want}


def permits(allowance: Mapping[str, float], gpus_by_studio: Mapping[str, float], studio: str) -> bool:
    """Whether ``studio`` may start one more GPU action: it holds less than its allowance."""
    return gpus_by_studio.get(studio, 0.0) < allowance.get(studio, 0.0) - EPS
