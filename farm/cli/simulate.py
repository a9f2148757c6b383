"""``farm simulate``: play a synthetic batch through the scheduler, and ``--bench`` to compare policies.

    farm simulate --episodes 200 --gpus 64 [--cpus 16] [--policy farm|fifo|sequential] [--seed 1]
                  [--studios a,b] [--failures 0.02] [--json]
    farm simulate --bench [--episodes 1000 --gpus 256 --cpus 64] [--json]
    farm simulate --night [--episodes 100 --gpus 32] [--policy farm|fifo|per-task|static] [--bench] [--json]

``--night`` plays four studios' night on GPUs that hold models (two GPU kinds, five models that take
20-120 s to load; farm.simulate.night): ``--bench`` compares the farm's model residency with fifo
(load on demand), per-task (a load per action) and static (a fixed partition of GPUs per model).

This module is the command's entry point, so it is the one place in farm.simulate that reads the
clock: to report how long the simulation itself took.
"""

from __future__ import annotations

import json
import time

from farm.errors import UsageError
from farm.simulate.fleet import fleet_for
from farm.simulate.night import NIGHT_POLICIES, NIGHT_STUDIOS, night_batch, night_shares, simulate_night
from farm.simulate.night_report import NightResult
from farm.simulate.result import SimResult
from farm.simulate.run import POLICIES, simulate
from farm.simulate.runtime import Failures
from farm.simulate.workload import Workload, synthetic_batch

BENCH_EPISODES, BENCH_GPUS = 1000, 256


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "simulate",
        help="play a synthetic batch through the scheduler on simulated GPUs (no Ray)",
        description="Discrete-event simulation of a synthetic batch with the farm's own scheduling policies. "
        "--bench runs farm, fifo and sequential on the same batch and compares them.",
    )
    p.add_argument("--episodes", type=int, help=f"episodes in the batch (default 100; --bench {BENCH_EPISODES})")
    p.add_argument("--gpus", type=int, help=f"simulated GPUs (default 32; --bench {BENCH_GPUS})")
    p.add_argument("--cpus", type=float, help="simulated CPUs (default: a quarter of the GPUs, at least 8)")
    p.add_argument(
        "--policy",
        choices=tuple(dict.fromkeys(POLICIES + NIGHT_POLICIES)),
        default="farm",
        help="farm: the farm's scheduler; fifo: bare Ray order; sequential: one episode at a time; "
        "with --night: farm (model residency), fifo (load on demand), per-task (a load per action), "
        "static (GPUs partitioned per model)",
    )
    p.add_argument("--seed", type=int, default=1, help="seed of the synthetic batch and of failure injection")
    p.add_argument(
        "--studios",
        default=None,
        help="comma-separated studios; episodes dealt round-robin, equal shares (default studio-a; not with --night)",
    )
    p.add_argument(
        "--failures", type=float, default=0.0, metavar="P", help="probability that an attempt fails (retryable)"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--bench", action="store_true", help="compare farm, fifo and sequential on one batch")
    p.add_argument(
        "--night",
        action="store_true",
        help="a night of four studios on GPUs that hold models (two kinds, five models); "
        "with --bench: farm, fifo, per-task and static placement",
    )
    p.set_defaults(func=cmd_simulate)


def _options(args) -> tuple[int, int, float, list[str]]:
    episodes = args.episodes if args.episodes is not None else (BENCH_EPISODES if args.bench else 100)
    gpus = args.gpus if args.gpus is not None else (BENCH_GPUS if args.bench else 32)
    cpus = args.cpus if args.cpus is not None else max(8, gpus // 4)
    studios = [s.strip() for s in (args.studios or "studio-a").split(",") if s.strip()]
    if episodes < 1 or gpus < 1 or cpus <= 0:
        raise UsageError("--episodes and --gpus must be >= 1 and --cpus > 0")
    if not 0.0 <= args.failures < 1.0:
        raise UsageError("--failures must be a probability in [0, 1)")
    if not studios:
        raise UsageError("--studios needs at least one studio")
    return episodes, gpus, cpus, studios


def _timed(workload, gpus, cpus, policy, args) -> tuple[SimResult, float]:
    started = time.perf_counter()
    failures = Failures(probability=args.failures) if args.failures else None
    result = simulate(workload, gpus, cpus, policy=policy, seed=args.seed, failures=failures)
    return result, time.perf_counter() - started


def _dollars(x: float) -> str:
    return f"${x:,.2f}"


def cmd_simulate(args) -> int:
    episodes, gpus, cpus, studios = _options(args)
    if getattr(args, "night", False):
        return _night(episodes, gpus, cpus, args)
    if args.policy not in POLICIES:
        raise UsageError(f"--policy {args.policy} places work on GPUs that hold models: add --night")
    workload = synthetic_batch(episodes, seed=args.seed, studios=studios)
    if args.bench:
        return _bench(workload, gpus, cpus, args)
    result, wall = _timed(workload, gpus, cpus, args.policy, args)
    if args.json:
        print(json.dumps({**result.to_json(), "actions": len(workload.graph().actions), "wall_s": round(wall, 3)}))
        return 0
    s = result.spend
    deadlines = (
        "none set"
        if not result.deadline_met
        else "all met"
        if result.all_deadlines_met
        else "missed: " + ", ".join(b for b, ok in result.deadline_met.items() if not ok)
    )
    print(
        f"farm simulate: {episodes} episodes ({len(workload.graph().actions):,} actions), {gpus} GPUs, {cpus:g} CPUs, "
        f"policy {args.policy}, seed {args.seed}"
    )
    print(
        f"  makespan   {result.makespan_s:,.0f} s  (lower bound {result.lower_bound_s:,.0f} s, ratio {result.ratio:.3f})"
    )
    print(f"  gpu busy   {result.gpu_busy:.1%}")
    print(f"  deadlines  {deadlines}")
    print(f"  spend      {s.tokens:,} tokens, {s.gpu_seconds:,.0f} GPU-s, {_dollars(s.money)}")
    print(
        f"  episodes   {result.episodes_done} done, {len(result.episodes_failed)} failed, "
        f"{len(result.episodes_unfinished)} unfinished"
    )
    print(f"  actions    {result.dispatches:,} dispatched, {result.retries} retried, {result.quarantines} quarantined")
    print(f"  controller {result.events:,} events journaled, {result.actions:,} actions planned")
    print(f"  wall time  {wall:.2f} s")
    return 0


def _bench(workload, gpus, cpus, args) -> int:
    results: dict[str, tuple[SimResult, float]] = {p: _timed(workload, gpus, cpus, p, args) for p in POLICIES}
    farm = results["farm"][0]
    speedup = {p: r.makespan_s / farm.makespan_s for p, (r, _) in results.items() if p != "farm"}
    total_wall = sum(w for _, w in results.values())
    if args.json:
        print(
            json.dumps(
                {
                    "episodes": workload.episode_count,
                    "actions": len(workload.graph().actions),
                    "gpus": gpus,
                    "cpus": cpus,
                    "seed": args.seed,
                    "lower_bound_s": round(farm.lower_bound_s, 3),
                    "results": {p: {**r.to_json(), "wall_s": round(w, 3)} for p, (r, w) in results.items()},
                    "farm_speedup": {p: round(x, 3) for p, x in speedup.items()},
                    "wall_s": round(total_wall, 3),
                }
            )
        )
        return 0
    print(
        f"farm simulate --bench: {workload.episode_count} episodes ({len(workload.graph().actions):,} actions) on "
        f"{gpus} GPUs and {cpus:g} CPUs, seed {args.seed}; lower bound {farm.lower_bound_s:,.0f} s"
    )
    print(f"  {'policy':<11} {'makespan':>11} {'ratio':>7} {'gpu busy':>9} {'wall':>8}")
    for p, (r, w) in results.items():
        print(f"  {p:<11} {r.makespan_s:>9,.0f} s {r.ratio:>7.3f} {r.gpu_busy:>9.1%} {w:>6.2f} s")
    print("  farm is " + ", ".join(f"{x:.2f}x faster than {p}" for p, x in speedup.items()))
    print(f"  simulation wall time {total_wall:.2f} s in all")
    return 0


def _night(episodes: int, gpus: int, cpus: float, args) -> int:
    """``--night``: one policy, or (``--bench``) all four on the same night."""
    if args.studios is not None:
        names = ", ".join(s.name for s in NIGHT_STUDIOS)
        raise UsageError(f"--studios is for the synthetic batch; a night has its own studios ({names}): drop --studios")
    if args.policy not in NIGHT_POLICIES:
        raise UsageError(
            f"--policy {args.policy} is not a night policy; with --night use one of {', '.join(NIGHT_POLICIES)}"
        )
    if episodes < len(NIGHT_STUDIOS):
        raise UsageError(f"--episodes must be >= {len(NIGHT_STUDIOS)} with --night (one per studio at least)")
    started = time.perf_counter()
    workload = night_batch(episodes, seed=args.seed, gpus=gpus)
    try:
        kinds = fleet_for(workload, gpus)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    failures = Failures(probability=args.failures) if args.failures else None
    built = time.perf_counter() - started
    results: dict[str, tuple[NightResult, float]] = {}
    for policy in NIGHT_POLICIES if args.bench else (args.policy,):
        started = time.perf_counter()
        result = simulate_night(workload, kinds, cpus, policy, night_shares(), args.seed, failures)
        results[policy] = (result, time.perf_counter() - started)
    first = next(iter(results.values()))[0]
    if args.json:
        print(
            json.dumps(
                {
                    "episodes": workload.episode_count,
                    "actions": len(workload.graph().actions),
                    "gpus": {k.name: k.count for k in kinds},
                    "cpus": cpus,
                    "seed": args.seed,
                    "lower_bound_s": round(first.bound.seconds, 3),
                    "lower_bound_parts": {k: round(v, 3) for k, v in first.bound.parts.items()},
                    "policies": {p: {**r.to_json(), "wall_s": round(w, 3)} for p, (r, w) in results.items()},
                    "wall_s": round(built + sum(w for _, w in results.values()), 3),
                }
            )
        )
        return 0
    _night_table(workload, kinds, cpus, args.seed, first, results, built)
    return 0


def _night_table(workload: Workload, kinds, cpus: float, seed: int, first: NightResult, results, built: float) -> None:
    fleet = ", ".join(f"{k.count} {k.name}" for k in kinds)
    print(
        f"farm simulate --night: {workload.episode_count} episodes ({len(workload.graph().actions):,} actions) "
        f"of {len(workload.batches)} studios on {sum(k.count for k in kinds)} GPUs ({fleet}) and {cpus:g} CPUs, seed {seed}"
    )
    parts = "; ".join(f"{k} {v:,.0f} s" for k, v in first.bound.parts.items())
    print(f"  lower bound {first.bound.seconds:,.0f} s  ({parts})")
    print(
        f"  {'policy':<9} {'makespan':>10} {'ratio':>6} {'useful':>7} {'work':>8} {'load':>8} {'idle':>8} "
        f"{'loads':>6} {'per GPU':>8} {'missed':>7} {'share err':>9} {'wall':>7}"
    )
    for p, (r, w) in results.items():
        g = r.gpu_seconds()
        per_gpu = r.loads / max(1, len(r.accounts))
        dated = len(r.deadlines)
        print(
            f"  {p:<9} {r.makespan_s:>8,.0f} s {r.ratio:>6.3f} {r.useful_gpu_share:>7.1%} "
            f"{g['work'] / 3600:>7,.1f} h {g['load'] / 3600:>6,.1f} h {g['idle'] / 3600:>6,.1f} h "
            f"{r.loads:>6,} {per_gpu:>8.2f} {r.deadline_misses:>3}/{dated:<3} {r.studio_share_error:>9.3f} {w:>5.1f} s"
        )
    print(
        "  GPU time in GPU-hours; useful = work / (work + load + idle); share err: largest |share - weight| of a studio"
    )
    print(f"  simulation wall time {built + sum(w for _, w in results.values()):.1f} s in all")
