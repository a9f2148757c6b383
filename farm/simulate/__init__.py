"""``farm simulate``: a night played through the farm's own engine and controller on simulated GPUs, no Ray.

    workload      batches of generated series and episodes (outlines), the simulated backends
    runtime       the simulated runtime and artifacts (the engine's ports), failure injection
    run           simulate(): policies farm / fifo / sequential
    result        SimResult and the makespan lower bound (on the planner's graph)
    fleet         GPU kinds and counts, the models a workload loads, their expected GPU work
    gpus          NightRuntime: every GPU a slot holding models, placements carried out, GPU time accounted
    baselines     placers to weigh model residency against: fifo (load on demand), per-task, static
    night         night_batch() and simulate_night(): four studios, two GPU kinds, five models
    night_report  what a night is judged by: the lower bound with loads, work / load / idle, shares

Pure: no Ray, no I/O, no clock. Example::

    from farm.simulate import synthetic_batch, simulate
    result = simulate(synthetic_batch(200, seed=1), gpus=64, cpus=32)
    result.ratio        # makespan / lower bound

    from farm.simulate import night_batch, simulate_night
    night = night_batch(200, seed=1, gpus=64)
    simulate_night(night, 64, cpus=16, policy="farm").useful_gpu_share
"""

from farm.policy.types import Prices
from farm.simulate.fleet import GpuKind, fleet_for
from farm.simulate.night import NIGHT_POLICIES, NIGHT_STUDIOS, NightStudio, night_batch, night_shares, simulate_night
from farm.simulate.night_report import NightResult
from farm.simulate.result import SimResult, lower_bound
from farm.simulate.run import POLICIES, simulate
from farm.simulate.runtime import Failures, Run, true_seconds, true_tokens
from farm.simulate.workload import DEFAULT_PRICES, STAGES, SimBatch, StageSpec, Workload, synthetic_batch, with_terms

__all__ = [
    "DEFAULT_PRICES",
    "NIGHT_POLICIES",
    "NIGHT_STUDIOS",
    "GpuKind",
    "NightResult",
    "NightStudio",
    "fleet_for",
    "night_batch",
    "night_shares",
    "simulate_night",
    "POLICIES",
    "STAGES",
    "Failures",
    "Prices",
    "Run",
    "SimBatch",
    "SimResult",
    "StageSpec",
    "Workload",
    "lower_bound",
    "simulate",
    "synthetic_batch",
    "true_seconds",
    "true_tokens",
    "with_terms",
]
