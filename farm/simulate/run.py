"""A night played through the farm's own engine and controller, on simulated CPUs and GPUs.

The engine (farm.core.engine) and the controller (farm.core.controller) are the live farm's, unchanged:
batches are submitted as events, planned by the planner, ranked, shared, budgeted, retried and
quarantined by the same code. Only the ports are simulated: a memory journal, a manual clock, the
simulated runtime and artifacts (farm.simulate.runtime). No Ray, no I/O, no clock: time is a number.

Policies:

``farm``        the controller as the farm runs it: ranking (priority, slack, paced critical path),
                fair share, backend caps, budgets, retries with backoff and quarantine.
``fifo``        what bare Ray does: ready actions start in the order they became ready, wherever
                resources fit (the controller's "fifo" order); no priorities, shares, caps or
                budgets (retries still apply).
``sequential``  today's one-machine tools: one episode at a time (its actions still run in parallel),
                in submission order, each a batch of its own, otherwise like fifo.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from farm.core.controller import Controller
from farm.core.engine import Engine
from farm.core.events import Submission, SubmittedEpisode
from farm.core.placing import Placer
from farm.core.ports import ManualClock, MemoryJournal
from farm.core.spec import BudgetSpec
from farm.policy.retry import RetryPolicy
from farm.policy.types import NO_SPEND, PRIORITY_CLASSES, Share, Spend
from farm.simulate.result import SimResult, lower_bound
from farm.simulate.runtime import Failures, SimArtifacts, SimRuntime
from farm.simulate.workload import SimBatch, Workload

POLICIES = ("farm", "fifo", "sequential")

# The simulator reranks the whole graph at most every this many simulated seconds (the live
# controller: every second of wall time, which a simulation passes in microseconds).
RANK_REFRESH_S = 30.0

_PRIORITY_NAMES = {v: k for k, v in PRIORITY_CLASSES.items()}


class _Tally:
    """What the journal says, as the night goes: counts, deliveries, budget holds, finished batches."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.delivered: dict[tuple[str, str], float] = {}
        self.held: dict[str, str] = {}
        self.finished: set[str] = set()

    def __call__(self, event: Any) -> None:
        self.counts[event.type] = self.counts.get(event.type, 0) + 1
        if event.type == "episode.delivered":
            self.delivered[(event.batch, event.data.episode)] = event.at
        elif event.type == "budget.exhausted":
            self.held.setdefault(event.batch, event.data.reason)
        elif event.type in ("batch.finished", "batch.failed"):
            self.finished.add(event.batch)


def _submission(batch: SimBatch, episodes: Any, budget: bool, workload: Workload) -> Submission:
    """The batch as a studio submits it (the baselines know nothing of budgets)."""
    b = batch.budget
    return Submission(
        studio=batch.studio,
        namespace=batch.studio,
        name=batch.id,
        priority=_PRIORITY_NAMES.get(batch.priority, "normal"),
        deadline=batch.deadline,
        budget=BudgetSpec(tokens=b.tokens, gpu_seconds=b.gpu_seconds, money=b.money) if budget else BudgetSpec(),
        backends={s: c.to_json() for s, c in workload.choices().items()},
        episodes=[
            SubmittedEpisode(
                series=s,
                episode=e,
                backends={k: c.to_json() for k, c in workload.choices(s.id).items()}
                if s.id in workload.by_series
                else None,
            )
            for s, e in episodes
        ],
    )


def simulate(
    workload: Workload,
    gpus: int | float | Mapping[str | None, float],
    cpus: float = 64,
    policy: str = "farm",
    seed: int = 0,
    shares: Iterable[Share] | None = None,
    caps: Mapping[str, int] | None = None,
    failures: Failures | None = None,
    retry: RetryPolicy = RetryPolicy(),
    rank_refresh_s: float = RANK_REFRESH_S,
    *,
    runtime: Callable[[ManualClock], SimRuntime] | None = None,
    placer: Placer | None = None,
    name: str | None = None,
    bound: Callable[[Workload, dict[str | None, float], float], float] = lower_bound,
) -> SimResult:
    """Play ``workload`` on ``gpus`` GPUs (a count, or GPUs per accelerator kind) and ``cpus`` CPUs
    under ``policy`` ("farm", "fifo" or "sequential"); deadlines and budgets come from the batches'
    terms. ``seed`` drives failure injection only (the workload has its own). ``shares`` default to
    equal weights. Same inputs, same result.

    ``runtime``: makes the simulated runtime on the night's clock (default: ``SimRuntime``, GPU pools
    per kind; ``farm.simulate.gpus.NightRuntime`` models each GPU and the models it holds);
    ``placer``: the controller's residency placer (farm.core.placing; default ``residency.place``),
    used where the runtime reports its GPUs; ``name``: the result's policy name; ``bound``: the
    lower bound the result is judged against.
    """
    if policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r} (known: {', '.join(POLICIES)})")
    capacity: dict[str | None, float] = (
        {None: float(gpus)} if isinstance(gpus, (int, float)) else {k: float(v) for k, v in gpus.items()}
    )
    farm = policy == "farm"
    batches = sorted(workload.batches.values(), key=lambda b: (b.submitted, b.order))
    t0 = batches[0].submitted
    clock = ManualClock(t0)
    sim = runtime(clock) if runtime is not None else SimRuntime(workload, clock, capacity, cpus, failures, seed)
    controller = Controller(
        workload.estimate,
        workload.profiles(),
        prices=workload.prices,
        shares=(tuple(shares) if shares is not None else ()) if farm else None,
        caps=caps if farm else None,
        retry=retry,
        order="farm" if farm else "fifo",
        rank_refresh_s=rank_refresh_s,
        placer=placer,
    )
    tally = _Tally()
    journal = MemoryJournal()
    engine = Engine(controller, journal, sim, clock, SimArtifacts(workload), observe=tally)

    # what to submit, when: a batch each, or (sequential) an episode each, one after another
    queue: list[tuple[float, str, str, Submission]] = []  # (not before, id, original batch, submission)
    for b in batches:
        if policy == "sequential":
            queue += [
                (b.submitted, f"{b.id}~{i:05d}", b.id, _submission(b, [ep], False, workload))
                for i, ep in enumerate(b.episodes)
            ]
        else:
            queue.append((b.submitted, b.id, b.id, _submission(b, b.episodes, farm, workload)))
    origin = {sub_id: original for _, sub_id, original, _ in queue}
    active: str | None = None

    def may_submit() -> bool:
        return bool(queue) and (policy != "sequential" or active is None or active in tally.finished)

    while True:
        if may_submit() and queue[0][0] <= clock.now():
            while may_submit() and queue[0][0] <= clock.now():
                _, active, _, submission = queue.pop(0)
                engine.submit(active, submission)
            engine.decide()
            continue  # (sequential: an episode may be over at once)
        wakes = [t for t in (sim.next_end(), controller.next_wake()) if t is not None]
        if may_submit():
            wakes.append(queue[0][0])
        if not wakes:
            break
        engine.step(timeout=max(0.0, min(wakes) - clock.now()))
    bound_s = bound(workload, capacity, cpus)
    return _result(
        workload, name or policy, capacity, cpus, controller, sim, tally, origin, t0, len(journal.events), bound_s
    )


def _result(
    workload: Workload,
    policy: str,
    capacity: dict[str | None, float],
    cpus: float,
    controller: Controller,
    runtime: SimRuntime,
    tally: _Tally,
    origin: dict[str, str],
    t0: float,
    events: int,
    bound_s: float,
) -> SimResult:
    makespan = runtime.last_end - t0
    gpu_total = sum(capacity.values())
    gpu_used = sum((r.end - r.start) * r.gpus for r in runtime.runs)
    spent: dict[str, Spend] = {}
    failed, unfinished, delivered_at = {}, {}, {}
    for (sub_id, eid), ep in sorted(controller.episodes.items()):
        batch = origin[sub_id]
        name = f"{batch}/{eid}"
        if ep.status == "delivered":
            delivered_at[(batch, eid)] = tally.delivered[(sub_id, eid)]
        elif ep.status == "failed":
            failed[name] = ep.reason or "failed"
        else:
            why = tally.held.get(sub_id)
            unfinished[name] = f"budget-exhausted: {why}" if why else "never started: no capacity fits its actions"
    for sub_id, state in controller.batches.items():
        spent[origin[sub_id]] = spent.get(origin[sub_id], NO_SPEND) + state.spent
    finished, met = {}, {}
    for b in workload.batches.values():
        ids = [f"{s.id}/{e.slug}" for s, e in b.episodes]
        complete = all((b.id, e) in delivered_at for e in ids)
        end = max((delivered_at[(b.id, e)] for e in ids if (b.id, e) in delivered_at), default=None)
        finished[b.id] = end - t0 if complete and end is not None else None
        if b.deadline is not None:
            met[b.id] = complete and end is not None and end <= b.deadline
    by_studio: dict[str, Spend] = {}
    for batch, spend in spent.items():
        studio = workload.batches[batch].studio
        by_studio[studio] = by_studio.get(studio, NO_SPEND) + spend
    held: dict[str, str] = {}
    for sub_id, reason in tally.held.items():
        held.setdefault(origin[sub_id], reason)
    counts = tally.counts
    retries, quarantines = counts.get("action.retry", 0), counts.get("action.quarantined", 0)
    return SimResult(
        policy=policy,
        episodes=workload.episode_count,
        gpus=gpu_total,
        cpus=cpus,
        makespan_s=makespan,
        lower_bound_s=bound_s,
        gpu_busy=gpu_used / (gpu_total * makespan) if gpu_total and makespan > 0 else 0.0,
        deadline_met=met,
        batch_finished=finished,
        spend=sum(spent.values(), NO_SPEND),
        spend_by_batch=dict(sorted(spent.items())),
        spend_by_studio=dict(sorted(by_studio.items())),
        gpu_seconds_by_studio={s: v.gpu_seconds for s, v in sorted(by_studio.items())},
        episodes_done=len(delivered_at),
        episodes_failed=failed,
        episodes_unfinished=unfinished,
        budget_held=dict(sorted(held.items())),
        dispatches=counts.get("action.dispatched", 0),
        retries=retries,
        quarantines=quarantines,
        give_ups=counts.get("action.failed", 0) - retries - quarantines,
        actions=len(controller.actions),
        events=events,
        runs=runtime.runs,
    )
