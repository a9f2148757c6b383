"""``farm simulate``: a night played through the farm's own engine and controller on simulated GPUs, no Ray.

    workload   batches of generated series and episodes (outlines), the simulated backends
    runtime    the simulated runtime and artifacts (the engine's ports), failure injection
    run        simulate(): policies farm / fifo / sequential
    result     SimResult and the makespan lower bound (on the planner's graph)

Pure: no Ray, no I/O, no clock. Example::

    from farm.simulate import synthetic_batch, simulate
    result = simulate(synthetic_batch(200, seed=1), gpus=64, cpus=32)
    result.ratio        # makespan / lower bound
"""

from farm.policy.types import Prices
from farm.simulate.result import SimResult, lower_bound
from farm.simulate.run import POLICIES, simulate
from farm.simulate.runtime import Failures, Run, true_seconds, true_tokens
from farm.simulate.workload import DEFAULT_PRICES, STAGES, SimBatch, StageSpec, Workload, synthetic_batch, with_terms

__all__ = [
    "DEFAULT_PRICES",
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
