"""What a runtime's workers can still take: their CPUs and GPUs less what the running actions hold."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from farm.core.state import Profile
from farm.policy import Capacity


def left_over(cpus: float, gpus: Mapping[str | None, float], held: Iterable[Profile]) -> Capacity:
    """``cpus`` and ``gpus`` (by accelerator kind) less what the ``held`` profiles take. A GPU action
    holds GPUs (of its own kind, or of the first kind with room) and no CPU of its own: a GPU
    worker's CPUs are reserved with it."""
    free_cpus, free_gpus = cpus, dict(gpus)
    for profile in held:
        if profile.gpus:
            kind = (
                profile.accelerator
                if profile.accelerator in free_gpus
                else next((k for k, n in free_gpus.items() if n >= profile.gpus), profile.accelerator)
            )
            free_gpus[kind] = free_gpus.get(kind, 0.0) - profile.gpus
        else:
            free_cpus -= profile.cpus
    return Capacity(cpus=max(free_cpus, 0.0), gpus_by_accelerator={k: max(n, 0.0) for k, n in free_gpus.items()})
