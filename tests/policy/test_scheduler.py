"""select(): resources, accelerators, fair share, caps, budgets; the queue and a plain list agree."""

from __future__ import annotations

import random
from dataclasses import asdict

from farm.policy import BatchTerms, Budget, Capacity, ReadyQueue, RunState, Share, Spend, Task, select, sort_key


def gpu(key, batch="b", studio="s", accelerator=None, gpus=1.0, backend="i2v", est=10.0, episode="e"):
    return Task(
        key,
        batch,
        studio,
        episode,
        "video",
        backend,
        cpus=0.0,
        gpus=gpus,
        accelerator=accelerator,
        est_seconds=est,
        est_gpu_seconds=est * gpus,
    )


def cpu(key, batch="b", studio="s", cpus=1.0, backend="ffmpeg"):
    return Task(key, batch, studio, "e", "assembly", backend, cpus=cpus, est_seconds=4.0)


BATCHES = {"b": BatchTerms("b", "s")}


def test_gpu_tasks_only_on_matching_accelerators():
    """A pinned task needs its own kind; an unpinned one takes whatever kind has room."""
    tasks = [gpu("h100", accelerator="H100"), gpu("a100", accelerator="A100"), gpu("any")]
    ranks = {"h100": 3.0, "a100": 2.0, "any": 1.0}
    out = select(tasks, ranks, BATCHES, Capacity(0, {"A100": 1.0, "L4": 1.0}), RunState(), None)
    assert [t.key for t in out.dispatch] == ["a100", "any"]
    assert out.placed == {"a100": "A100", "any": "L4"}


def test_cpu_must_fit():
    out = select(
        [cpu("big", cpus=4), cpu("small", cpus=1)], {"big": 2.0, "small": 1.0}, BATCHES, Capacity(2), RunState()
    )
    assert [t.key for t in out.dispatch] == ["small"]


def test_backend_caps_respected():
    tasks = [Task(f"s{i}", "b", "s", "e", "script", "llm-api", cpus=0.25) for i in range(5)]
    out = select(tasks, {}, BATCHES, Capacity(8), RunState(running_by_backend={"llm-api": 1}), None, {"llm-api": 3})
    assert [t.key for t in out.dispatch] == ["s0", "s1"]


def test_fair_share_splits_contended_gpus_by_weight():
    """Studio a ranks higher, but with weights 3:1 it gets 3 of 4 free GPUs and b gets 1."""
    batches = {"ba": BatchTerms("ba", "a", order=0), "bb": BatchTerms("bb", "b", order=1)}
    tasks = [gpu(f"a{i}", "ba", "a") for i in range(10)] + [gpu(f"b{i}", "bb", "b") for i in range(10)]
    ranks = {t.key: (100.0 if t.studio == "a" else 1.0) for t in tasks}
    shares = [Share("a", 3), Share("b", 1)]
    out = select(tasks, ranks, batches, Capacity(0, {None: 4}), RunState(), shares)
    assert sorted(t.key for t in out.dispatch) == ["a0", "a1", "a2", "b0"]
    plain = select(tasks, ranks, batches, Capacity(0, {None: 4}), RunState(), None)  # fair share off
    assert [t.key for t in plain.dispatch] == ["a0", "a1", "a2", "a3"]


def test_held_batch_reported_and_others_go_on():
    batches = {
        "poor": BatchTerms("poor", "s", budget=Budget(gpu_seconds=100), order=0),
        "rich": BatchTerms("rich", "s", order=1),
    }
    tasks = [gpu("p1", "poor", est=30), gpu("r1", "rich", est=30)]
    state = RunState(spent_by_batch={"poor": Spend(gpu_seconds=60)}, committed_by_batch={"poor": Spend(gpu_seconds=20)})
    out = select(tasks, {"p1": 9.0, "r1": 1.0}, batches, Capacity(0, {None: 4}), state, None)
    assert [t.key for t in out.dispatch] == ["r1"]
    assert out.held == {"poor": "gpu_seconds: 60 spent + 20 running + 30 this action would pass the cap of 100"}


def test_held_batch_spends_no_more_on_that_cap_but_free_actions_go():
    """Once the most urgent GPU action is unaffordable, a cheaper, less urgent one does not take the
    rest of the budget; a CPU mux (no GPU-seconds) still goes."""
    batches = {"b": BatchTerms("b", "s", budget=Budget(gpu_seconds=100))}
    tasks = [gpu("big", est=80), gpu("small", est=5, backend="comfyui"), cpu("mux")]
    state = RunState(spent_by_batch={"b": Spend(gpu_seconds=50)})
    out = select(tasks, {"big": 3.0, "small": 2.0, "mux": 1.0}, batches, Capacity(4, {None: 4}), state, None)
    assert [t.key for t in out.dispatch] == ["mux"]
    assert "gpu_seconds" in out.held["b"]


def test_budget_counts_what_this_round_dispatched():
    batches = {"b": BatchTerms("b", "s", budget=Budget(gpu_seconds=25))}
    tasks = [gpu(f"c{i}", est=10) for i in range(4)]
    out = select(tasks, {}, batches, Capacity(0, {None: 8}), RunState(), None)
    assert [t.key for t in out.dispatch] == ["c0", "c1"]


def test_priority_wins_when_scarce():
    batches = {"lo": BatchTerms("lo", "s", priority=0), "hi": BatchTerms("hi", "s", priority=3, order=1)}
    tasks = [gpu("lo1", "lo"), gpu("hi1", "hi")]
    out = select(tasks, {"lo1": 1000.0, "hi1": 1.0}, batches, Capacity(0, {None: 1}), RunState(), None)
    assert [t.key for t in out.dispatch] == ["hi1"]


def _scenario(seed):
    rng = random.Random(seed)
    batches = {
        f"b{i}": BatchTerms(
            f"b{i}",
            f"s{i % 2}",
            priority=rng.randint(0, 2),
            deadline=rng.choice([None, 500.0, 900.0]),
            budget=rng.choice([Budget(), Budget(gpu_seconds=rng.uniform(50, 400))]),
            order=i,
        )
        for i in range(4)
    }
    tasks, ranks = [], {}
    for n in range(300):
        b = rng.choice(list(batches))
        studio = batches[b].studio
        kind = rng.random()
        key = f"t{n:03d}"
        if kind < 0.5:
            t = gpu(
                key,
                b,
                studio,
                accelerator=rng.choice([None, "A100"]),
                gpus=rng.choice([0.5, 1.0]),
                backend=rng.choice(["i2v", "comfyui"]),
                est=rng.uniform(5, 100),
            )
        elif kind < 0.8:
            t = cpu(key, b, studio, cpus=rng.choice([1.0, 2.0]))
        else:
            t = Task(key, b, studio, "e", "script", "llm-api", cpus=0.25, est_tokens=rng.randint(100, 9000))
        tasks.append(t)
        ranks[key] = rng.uniform(0, 300)
    state = RunState(
        gpus_by_studio={"s0": 2.0},
        running_by_backend={"llm-api": 1},
        spent_by_batch={b: Spend(gpu_seconds=rng.uniform(0, 200)) for b in batches},
    )
    return batches, tasks, ranks, state


def test_queue_and_list_select_the_same_and_change_nothing():
    for seed in range(12):
        batches, tasks, ranks, state = _scenario(seed)
        queue = ReadyQueue()
        for t in tasks:
            queue.push(t, sort_key(t, batches[t.batch], ranks[t.key]))
        free = Capacity(9.0, {None: 6.0, "A100": 3.0})
        before = asdict(state)
        shares, caps = [Share("s0", 2, floor_gpus=1)], {"llm-api": 4}
        from_list = select(tasks, ranks, batches, free, state, shares, caps)
        from_queue = select(queue, None, batches, free, state, shares, caps)
        assert from_list == from_queue
        assert from_list.dispatch  # the scenario is not trivially empty
        assert asdict(state) == before and len(queue) == len(tasks)
        again = select(queue, None, batches, free, state, shares, caps)
        assert again == from_queue
