"""Retries: bounded, deterministic full-jitter backoff; quarantine across workers; give up."""

from __future__ import annotations

from farm.policy import GiveUp, Quarantine, Retry, RetryPolicy, jitter


def test_delays_bounded_by_exponential_ceiling_and_max():
    policy = RetryPolicy(base_s=2.0, factor=2.0, max_delay_s=300.0, max_attempts=50)
    for attempt in range(1, 40):
        decision = policy.decide(f"key{attempt}", attempt, True, {"w1"})
        assert isinstance(decision, Retry)
        assert 0.0 <= decision.not_before_delay_s <= min(300.0, 2.0 * 2.0**attempt)
        assert decision.not_before_delay_s <= min(300.0, 2.0 * 2.0 ** (attempt - 1))
    assert policy.ceiling(1) == 2.0 and policy.ceiling(3) == 8.0 and policy.ceiling(10_000) == 300.0


def test_same_inputs_same_delay():
    policy = RetryPolicy()
    first = policy.decide("abc", 2, True, {"w1"})
    assert first == policy.decide("abc", 2, True, {"w1"})
    assert first.not_before_delay_s == jitter("abc", 2) * 4.0
    assert first != policy.decide("abd", 2, True, {"w1"})


def test_jitter_is_spread_over_unit_interval():
    values = [jitter(f"k{i}", 1) for i in range(2000)]
    assert min(values) >= 0.0 and max(values) < 1.0
    assert 0.45 < sum(values) / len(values) < 0.55


def test_quarantine_after_three_distinct_workers():
    policy = RetryPolicy()
    assert isinstance(policy.decide("k", 3, True, {"w1", "w2"}), Retry)
    assert isinstance(policy.decide("k", 3, True, {"w1"}), Retry)
    decision = policy.decide("k", 3, True, {"w1", "w2", "w3"})
    assert decision == Quarantine("quarantined: failed on 3 different workers (w1, w2, w3)")


def test_non_retryable_gives_up_at_once():
    assert isinstance(RetryPolicy().decide("k", 1, False, {"w1"}), GiveUp)


def test_give_up_after_max_attempts():
    decision = RetryPolicy(max_attempts=5).decide("k", 5, True, {"w1"})
    assert decision == GiveUp("gave up after 5 failed attempts")
