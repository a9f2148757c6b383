"""Budgets: projected spend (spent + running estimates + this action) within every cap."""

from __future__ import annotations

from farm.policy import BatchTerms, Budget, Spend, Task, budget_admits


def clip(gpu_seconds=15.0, tokens=0, money=0.0):
    return Task(
        "k",
        "b",
        "s",
        "e",
        "video",
        "i2v",
        cpus=0,
        gpus=1,
        est_seconds=gpu_seconds,
        est_tokens=tokens,
        est_gpu_seconds=gpu_seconds,
        est_money=money,
    )


def terms(**caps):
    return BatchTerms("b", "s", budget=Budget(**caps))


def test_hold_names_the_cap():
    reason = budget_admits(terms(gpu_seconds=3600), Spend(gpu_seconds=3590), Spend(gpu_seconds=20), clip(15))
    assert reason == "gpu_seconds: 3,590 spent + 20 running + 15 this action would pass the cap of 3,600"


def test_admit_exactly_at_the_cap():
    assert budget_admits(terms(gpu_seconds=3600), Spend(gpu_seconds=3565), Spend(gpu_seconds=20), clip(15)) is None
    assert (
        budget_admits(terms(gpu_seconds=3600), Spend(gpu_seconds=3565.5), Spend(gpu_seconds=20), clip(15)) is not None
    )


def test_tokens_and_money_caps():
    assert budget_admits(terms(tokens=10_000), Spend(tokens=9_000), Spend(), clip(tokens=1_000)) is None
    reason = budget_admits(terms(tokens=10_000), Spend(tokens=9_000), Spend(tokens=1), clip(tokens=1_000))
    assert reason == "tokens: 9,000 spent + 1 running + 1,000 this action would pass the cap of 10,000"
    assert budget_admits(terms(money=1.0), Spend(money=0.7), Spend(money=0.2), clip(money=0.2)).startswith("money: ")


def test_an_action_that_costs_nothing_there_always_goes():
    """A CPU action under a GPU-seconds cap is admitted even when the batch is already over."""
    mux = Task("m", "b", "s", "e", "assembly", "ffmpeg", cpus=1, est_seconds=4)
    assert budget_admits(terms(gpu_seconds=100), Spend(gpu_seconds=130), Spend(), mux) is None


def test_no_budget_admits_everything():
    assert budget_admits(terms(), Spend(10**9, 10**9, 10**9), Spend(), clip(10**6)) is None
