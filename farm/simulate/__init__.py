"""``farm simulate``: a batch played through the farm's scheduling policies on simulated GPUs, no Ray.

    workload   synthetic batches shaped like farm.core.plan's graph (estimates, true durations, prices)
    engine     the discrete-event loop; policies farm / fifo / sequential; failure injection
    result     SimResult and the makespan lower bound

Example::

    from farm.simulate import synthetic_batch, simulate
    result = simulate(synthetic_batch(200, seed=1), gpus=64, cpus=32)
    result.ratio        # makespan / lower bound
"""

from farm.simulate.engine import POLICIES, Failures, simulate
from farm.simulate.result import Run, SimResult, lower_bound
from farm.policy.types import Prices
from farm.simulate.workload import DEFAULT_PRICES, STAGES, Node, StageSpec, Workload, synthetic_batch, with_terms

__all__ = ["DEFAULT_PRICES", "POLICIES", "STAGES", "Failures", "Node", "Prices", "Run", "SimResult", "StageSpec", "Workload",
           "lower_bound", "simulate", "synthetic_batch", "with_terms"]

