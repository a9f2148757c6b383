"""Fair share: weights, floors, burst into idle capacity."""

from __future__ import annotations

import pytest

from farm.policy import Share, allowances
from farm.policy.fairshare import permits


def test_weights_three_to_one():
    """Both saturated, no floors: GPUs divided 3:1."""
    assert allowances([Share("a", 3), Share("b", 1)], {}, {"a": 20, "b": 20}, 8) == {"a": 6.0, "b": 2.0}


def test_weights_with_floors_exact():
    """A floor is a minimum: b's weighted share (2) is below its floor (3), so b gets 3 and a the rest."""
    shares = [Share("a", 3, floor_gpus=1), Share("b", 1, floor_gpus=3)]
    assert allowances(shares, {"a": 4, "b": 1}, {"a": 20, "b": 20}, 8) == pytest.approx({"a": 5.0, "b": 3.0})


def test_floor_guaranteed_under_contention():
    """A small studio with a floor keeps it against a heavy one."""
    shares = [Share("big", 9), Share("small", 1, floor_gpus=4)]
    assert allowances(shares, {"big": 10}, {"big": 30, "small": 10}, 10) == pytest.approx({"big": 6.0, "small": 4.0})


def test_burst_into_idle_capacity():
    """A studio with no demand gets nothing; the other may take every GPU."""
    shares = [Share("a", 1), Share("b", 3, floor_gpus=2)]
    assert allowances(shares, {}, {"a": 20}, 8) == {"a": 8.0}


def test_floor_capped_by_want_and_rest_flows_to_others():
    shares = [Share("a", 1), Share("b", 1, floor_gpus=4)]
    assert allowances(shares, {}, {"a": 20, "b": 1}, 10) == pytest.approx({"a": 9.0, "b": 1.0})


def test_everyone_fits():
    assert allowances([], {"a": 1}, {"a": 1, "b": 3}, 8) == {"a": 2.0, "b": 3.0}


def test_studios_without_share_have_weight_one():
    assert allowances([Share("a", 1)], {}, {"a": 9, "c": 9}, 4) == {"a": 2.0, "c": 2.0}


def test_floors_beyond_capacity_are_scaled():
    shares = [Share("a", 1, floor_gpus=6), Share("b", 1, floor_gpus=2)]
    assert allowances(shares, {}, {"a": 9, "b": 9}, 4) == {"a": 3.0, "b": 1.0}


def test_permits_while_under_allowance():
    """A studio may start while it holds less than its allowance, not at or above it."""
    assert permits({"a": 3.0}, {"a": 2.0}, "a")
    assert not permits({"a": 3.0}, {"a": 3.0}, "a")
    assert permits({"a": 2.67}, {"a": 2.0}, "a")  # goes to 3: the overshoot is under one action
    assert not permits({}, {}, "b")


def test_bad_share_is_rejected():
    with pytest.raises(ValueError, match="weight"):
        Share("a", 0)


def test_water_filling_properties_on_many_cases():
    """Allowances add up to the capacity (or everyone's want), never exceed a want, never fall below
    a (want-capped) floor, and studios strictly between floor and want sit at the same level per weight."""
    import random

    for seed in range(500):
        rng = random.Random(seed)
        names = [f"s{i}" for i in range(rng.randint(1, 5))]
        shares = [Share(s, rng.choice([0.5, 1, 2, 3]), rng.choice([0, 0, 1, 2.5])) for s in names]
        use = {s: rng.choice([0, 1, 3]) for s in names}
        demand = {s: rng.choice([0, 0.5, 2, 10]) for s in names}
        capacity = rng.choice([1, 4, 8, 16])
        got = allowances(shares, use, demand, capacity)
        want = {s: use[s] + demand[s] for s in names if use[s] + demand[s] > 0}
        assert set(got) == set(want)
        if sum(want.values()) <= capacity:
            assert got == want
            continue
        assert sum(got.values()) == pytest.approx(capacity)
        floors = sum(min(sh.floor_gpus, want.get(sh.studio, 0)) for sh in shares)
        levels = set()
        for sh in shares:
            if sh.studio not in got:
                continue
            a, floor = got[sh.studio], min(sh.floor_gpus, want[sh.studio])
            assert a <= want[sh.studio] + 1e-9
            if floors <= capacity:
                assert a >= floor - 1e-9
                if floor + 1e-9 < a < want[sh.studio] - 1e-9:
                    levels.add(round(a / sh.weight, 6))
        assert len(levels) <= 1
