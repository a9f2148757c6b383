"""The simulated fleet: GPU kinds and counts, the models a workload's GPU backends load, and the GPU
work it is expected to need of each (from the planner's sketch of every episode, before anything runs).

Pure. ``fleet_for(workload, 256)`` splits 256 GPUs among the kinds the workload's models ask for, in
proportion to the work each kind is expected to do.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from farm.policy.residency import Model
from farm.simulate.workload import Workload

# GPU memory of the kinds a night may be played on (GB).
MEMORY_GB: Mapping[str, float] = {"L4": 24.0, "A10G": 24.0, "L40S": 48.0, "A100": 80.0, "H100": 80.0}


@dataclass(frozen=True)
class GpuKind:
    """``count`` GPUs of one kind (``name``: the accelerator a backend's profile asks for), each with
    ``memory_gb`` of memory (0: unknown)."""

    name: str
    count: int
    memory_gb: float

    def __post_init__(self) -> None:
        if self.count < 0:
            raise ValueError(f"GPU kind {self.name}: count must be >= 0, got {self.count}")
        if self.memory_gb < 0:
            raise ValueError(f"GPU kind {self.name}: memory_gb must be >= 0, got {self.memory_gb}")


def gpu_ids(kinds: Sequence[GpuKind]) -> list[tuple[str, GpuKind]]:
    """Every GPU of ``kinds`` with its id, ``<kind>-<n>`` (numbered from 000 in each kind)."""
    return [(f"{k.name}-{i:03d}", k) for k in kinds for i in range(k.count)]


def model_name(stage: str, backend: str) -> str:
    """A model's residency name: the stage and backend whose actions it runs."""
    return f"{stage}/{backend}"


def models_of(workload: Workload) -> dict[str, Model]:
    """The GPU models of ``workload``'s backends as residency knows them: load time, memory, and
    seats (a backend holding half a GPU seats two of its actions on one)."""
    out: dict[str, Model] = {}
    for spec in workload.stages.values():
        if spec.gpus <= 0:
            continue
        seats = max(1, round(1.0 / spec.gpus)) if spec.gpus < 1 else 1
        name = model_name(spec.stage, spec.backend)
        out.setdefault(name, Model(name, spec.load_s, spec.memory_gb, seats))
    return out


def accelerators(workload: Workload) -> dict[str, str | None]:
    """Model -> the GPU kind its backend asks for (None: any)."""
    return {model_name(s.stage, s.backend): s.accelerator for s in workload.stages.values() if s.gpus > 0}


def expected_gpu_work(workload: Workload) -> dict[str, float]:
    """Model -> GPU-seconds its actions are expected to take: their estimates (the backends' own,
    before anything runs) over the planner's sketch of every episode."""
    out: dict[str, float] = {}
    for action in workload.graph().actions.values():
        seconds, _, gpu_seconds = workload.estimate(action)
        if gpu_seconds > 0:
            name = model_name(action.stage, action.backend)
            out[name] = out.get(name, 0.0) + gpu_seconds
    return out


def apportion(total: int, weights: Mapping[str, float], least: int = 0) -> dict[str, int]:
    """``total`` split in proportion to ``weights`` (largest remainders; ties by name), each at
    least ``least`` where the total allows."""
    names = sorted(weights)
    if not names:
        return {}
    if least * len(names) > total:
        raise ValueError(f"{total} cannot give {least} to each of {len(names)}: {', '.join(names)}")
    rest = total - least * len(names)
    whole = sum(max(0.0, weights[n]) for n in names)
    share = {n: rest * max(0.0, weights[n]) / whole if whole > 0 else rest / len(names) for n in names}
    out = {n: least + int(share[n]) for n in names}
    left = total - sum(out.values())
    for n in sorted(names, key=lambda n: (-(share[n] - int(share[n])), n))[:left]:
        out[n] += 1
    return out


def fleet_for(workload: Workload, gpus: int, memory: Mapping[str, float] = MEMORY_GB) -> list[GpuKind]:
    """``gpus`` GPUs of the kinds ``workload``'s models ask for, split in proportion to the GPU work each
    kind is expected to do, at least one of each. Models that take any kind count for the first kind
    named by another model (an unnamed kind "gpu" when none is)."""
    kinds = accelerators(workload)
    named = sorted({k for k in kinds.values() if k is not None})
    default = named[0] if named else "gpu"
    work: dict[str, float] = dict.fromkeys(named or [default], 0.0)
    for model, seconds in expected_gpu_work(workload).items():
        kind = kinds.get(model) or default
        work[kind] = work.get(kind, 0.0) + seconds
    if gpus < len(work):
        raise ValueError(f"--gpus {gpus}: the workload's models need at least one GPU of each of {sorted(work)}")
    counts = apportion(gpus, work, least=1)
    return [GpuKind(k, counts[k], memory.get(k, 0.0)) for k in sorted(counts)]
