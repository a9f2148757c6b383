"""Ranking: HEFT upward ranks, the sort order, pacing."""

from __future__ import annotations

import math

import pytest

from farm.policy import BatchTerms, Pace, Task, pace, sort_key, upward_ranks


def task(key, batch="b", episode="e1"):
    return Task(key, batch, "s", episode, "clip", "i2v", gpus=1.0)


def test_upward_ranks_diamond():
    """A diamond a -> (b, c) -> d: each rank is its duration plus the largest child rank."""
    ranks = upward_ranks({"a": 1, "b": 2, "c": 5, "d": 1}, {"a": ["b", "c"], "b": ["d"], "c": ["d"]})
    assert ranks == {"d": 1.0, "b": 3.0, "c": 6.0, "a": 7.0}


def test_upward_ranks_ignore_unknown_children_and_use_tails():
    """Children outside ``durations`` do not count; a tail stands in for work not known yet."""
    ranks = upward_ranks({"script": 30, "line": 5}, {"script": ["line", "not-planned"]}, tails={"script": 200})
    assert ranks == {"line": 5.0, "script": 230.0}


def test_upward_ranks_deep_chain_without_recursion():
    """A 60,000-long chain is ranked iteratively."""
    n = 60_000
    ranks = upward_ranks(dict.fromkeys(range(n), 1.0), {i: [i + 1] for i in range(n - 1)})
    assert ranks[0] == n and ranks[n - 1] == 1.0


def test_upward_ranks_cycle_raises():
    with pytest.raises(ValueError, match="cycle"):
        upward_ranks({"a": 1, "b": 1}, {"a": ["b"], "b": ["a"]})


def test_sort_key_literal():
    """The key is (-priority, deadline - rank, -rank, batch order, key)."""
    terms = BatchTerms("d", "s", priority=1, deadline=100.0, order=4)
    assert sort_key(task("t2", "d"), terms, 50.0) == (-1, 50.0, -50.0, 4, "t2")
    assert sort_key(task("t4", "n"), BatchTerms("n", "s"), 500.0) == (-1, math.inf, -500.0, 0, "t4")


def test_sort_order_priority_then_slack_then_critical_path():
    """Priority class beats slack, slack beats critical path, critical path beats batch order."""
    batches = {
        "p": BatchTerms("p", "s", priority=2, order=3),  # high, no deadline
        "d50": BatchTerms("d50", "s", priority=1, deadline=100.0, order=2),  # slack 100 - 50 = 50
        "d70": BatchTerms("d70", "s", priority=1, deadline=80.0, order=1),  # slack 80 - 10 = 70
        "n": BatchTerms("n", "s", priority=1, order=0),  # slack inf
    }
    cases = [
        (task("t5", "n"), 100.0),
        (task("t3", "d70"), 10.0),
        (task("t1", "p"), 10.0),
        (task("t4", "n"), 500.0),
        (task("t2", "d50"), 50.0),
    ]
    ordered = sorted(cases, key=lambda c: sort_key(c[0], batches[c[0].batch], c[1]))
    assert [t.key for t, _ in ordered] == ["t1", "t2", "t3", "t4", "t5"]


def test_ties_break_by_batch_order_then_key():
    a, b = BatchTerms("a", "s", order=1), BatchTerms("b", "s", order=0)
    keys = sorted([("z", a), ("y", a), ("x", b)], key=lambda c: sort_key(task(c[0], c[1].id), c[1], 10.0))
    assert [k for k, _ in keys] == ["x", "y", "z"]


def test_pace_literal():
    """Each episode is due after the work of itself and the episodes before it; behind: the rest."""
    assert pace(["e1", "e2", "e3"], 10.0, start=100.0, weight=1.0) == {
        "e1": Pace(110.0, 20.0),
        "e2": Pace(120.0, 10.0),
        "e3": Pace(130.0, 0.0),
    }
    assert pace(["e1", "e2"], {"e1": 8.0, "e2": 4.0}, weight=0.25) == {"e1": Pace(2.0, 1.0), "e2": Pace(3.0, 0.0)}


def test_paced_order_blends_episodes():
    """A later episode's long chain goes before an earlier episode's short one, but not by much."""
    terms = BatchTerms("b", "s")
    paces = pace(["e1", "e2", "e3"], 40.0, weight=1.0)  # due 40, 80, 120
    cases = [
        (task("short1", episode="e1"), 10.0),
        (task("long2", episode="e2"), 100.0),
        (task("long3", episode="e3"), 100.0),
        (task("mid1", episode="e1"), 30.0),
    ]
    ordered = sorted(cases, key=lambda c: sort_key(c[0], terms, c[1], paces[c[0].episode]))
    # latest starts: long2 80-100=-20, mid1 40-30=10, long3 120-100=20, short1 40-10=30
    assert [t.key for t, _ in ordered] == ["long2", "mid1", "long3", "short1"]


def test_deadline_does_not_reorder_a_batch():
    """Giving a batch a deadline changes no order among its own actions (behind and due add up)."""
    paces = pace(["e1", "e2", "e3"], 40.0)
    cases = [(task(f"t{i}", episode=f"e{1 + i % 3}"), float(r)) for i, r in enumerate([5, 90, 40, 120, 10, 60])]
    plain, dated = BatchTerms("b", "s"), BatchTerms("b", "s", deadline=10_000.0)
    order = [sorted(cases, key=lambda c: sort_key(c[0], terms, c[1], paces[c[0].episode])) for terms in (plain, dated)]
    assert [t.key for t, _ in order[0]] == [t.key for t, _ in order[1]]
