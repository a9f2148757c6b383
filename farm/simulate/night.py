"""A night on a GPU farm whose GPUs hold models: several studios' batches on two GPU kinds and five
GPU models, played through the farm's engine and controller under four placement policies.

``night_batch`` writes the night the way studios would submit it (series and outline episodes, as
``synthetic_batch`` does; the farm's planner makes every action): each studio with a fair-share
weight, a priority and maybe a deadline, its episodes in proportion to its weight. The backends
(``NIGHT_STAGES``) are a night's real ones in proportion: the script from an LLM behind an API (no
GPU); character sheets and keyframes on an image model; clips on one of two image-to-video models,
by series; lines on a TTS model (two to a GPU); a lip-sync model after every clip with dialogue;
ffmpeg on CPUs. Five GPU models, each with its load time (20-120 s) and memory, pinned to a GPU kind.

``simulate_night`` plays it on ``NightRuntime`` (farm.simulate.gpus) with one of ``NIGHT_POLICIES``:

``farm``      the farm's controller (ranking, fair share, deadlines) and its residency placer
              (``farm.policy.residency.place``)
``fifo``      Ray's default: ready order, no shares, load on demand (``baselines.fifo``)
``per-task``  the farm's controller, a fresh worker (and a load) per action (``baselines.per_task``)
``static``    the farm's controller, a fixed partition of GPUs per model (``baselines.static``)

and reports what ``farm.simulate.night_report`` measures (makespan against a lower bound that counts
the loads, GPU time as work / load / idle, loads, deadlines, studio shares).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from farm.core.placing import Placer
from farm.core.ports import ManualClock
from farm.policy.types import PRIORITY_CLASSES, Share
from farm.simulate.baselines import fifo, per_task, static, static_partition
from farm.simulate.fleet import GpuKind, expected_gpu_work, fleet_for
from farm.simulate.gpus import NightRuntime
from farm.simulate.night_report import NightResult, night_bound, report
from farm.simulate.run import simulate
from farm.simulate.runtime import Failures
from farm.simulate.workload import STAGES, SimBatch, StageSpec, Workload, _episode, _series

NIGHT_POLICIES = ("farm", "fifo", "per-task", "static")

# A night's backends. Estimates as in ``STAGES`` (a clip per 5 s of shot, a line by its words, ...).
NIGHT_STAGES: Mapping[str, StageSpec] = {
    "script": StageSpec("script", "llm-api", 30.0, cpus=0.25, tokens=6000),
    "sheet": StageSpec("image", "flux", 40.0, gpus=1.0, accelerator="L4", load_s=30.0, memory_gb=20.0),
    "keyframe": StageSpec("image", "flux", 15.0, gpus=1.0, accelerator="L4", load_s=30.0, memory_gb=20.0),
    "line": StageSpec("dubbing", "tts", 6.0, gpus=0.5, accelerator="L4", load_s=20.0, memory_gb=6.0),
    "line-cpu": STAGES["line-cpu"],
    "clip": StageSpec("video", "wan-i2v", 75.0, gpus=1.0, accelerator="H100", load_s=120.0, memory_gb=70.0),
    "clip:b": StageSpec("video", "hunyuan-i2v", 60.0, gpus=1.0, accelerator="H100", load_s=90.0, memory_gb=60.0),
    "lipsync": StageSpec("lipsync", "latentsync", 30.0, gpus=1.0, accelerator="L4", load_s=60.0, memory_gb=16.0),
    "mux": STAGES["mux"],
    "episode": STAGES["episode"],
}


@dataclass(frozen=True)
class NightStudio:
    """One studio of the night: its fair-share ``weight``, the part of the night's episodes it submits,
    its batch's priority class, and its deadline as a multiple of the night's expected length (the
    expected GPU work over the GPUs; None: no deadline)."""

    name: str
    weight: float
    part: float
    priority: str = "normal"
    deadline: float | None = None

    def __post_init__(self) -> None:
        if not self.weight > 0 or not self.part > 0:
            raise ValueError(f"studio {self.name}: weight and part must be > 0")
        if self.priority not in PRIORITY_CLASSES:
            raise ValueError(f"studio {self.name}: priority must be one of {', '.join(PRIORITY_CLASSES)}")
        if self.deadline is not None and not self.deadline > 0:
            raise ValueError(f"studio {self.name}: deadline must be > 0 (a multiple of the night's length)")


NIGHT_STUDIOS = (
    NightStudio("north", 4.0, 0.4),
    NightStudio("east", 2.0, 0.2, "high", 1.25),
    NightStudio("south", 2.0, 0.2, "normal", 1.3),
    NightStudio("west", 2.0, 0.2, "low"),
)


def night_batch(
    episodes: int,
    seed: int,
    gpus: int,
    studios: Sequence[NightStudio] = NIGHT_STUDIOS,
    *,
    per_series: int = 20,
    shots: tuple[int, int] = (8, 16),
    lines: tuple[int, int] = (6, 14),
    characters: tuple[int, int] = (3, 6),
    jitter: float = 0.25,
    stages: Mapping[str, StageSpec] = NIGHT_STAGES,
) -> Workload:
    """``episodes`` episodes dealt to ``studios`` in proportion to their parts (each at least one), a
    batch per studio named after it, all submitted at 0; a series per ``per_series`` episodes of a
    studio, its clips on ``clip`` (even-numbered series) or ``clip:b`` (odd) where ``stages`` has both.
    Deadlines are set from the night's expected length on ``gpus`` GPUs. Same arguments, same night."""
    if episodes < len(studios) or not studios:
        raise ValueError(f"episodes must be >= the number of studios ({len(studios)}), got {episodes}")
    if gpus < 1:
        raise ValueError(f"gpus must be >= 1, got {gpus}")
    names = [s.name for s in studios]
    if len(set(names)) != len(names):
        raise ValueError(f"studio names must differ: {names}")
    rng = random.Random(seed)
    whole = sum(s.part for s in studios)
    counts = [max(1, round(episodes * s.part / whole)) for s in studios]
    counts[0] += episodes - sum(counts)
    batches: dict[str, SimBatch] = {}
    by_series: dict[str, dict[str, str]] = {}
    for order, (studio, count) in enumerate(zip(studios, counts, strict=True)):
        casts = {}
        dealt = []
        for i in range(count):
            k = i // per_series
            sid = f"{studio.name}-s{k:03d}"
            if k not in casts:
                casts[k] = _series(sid, rng.randint(*characters), rng)
                if k % 2 and "clip:b" in stages:
                    by_series[sid] = {"video": "clip:b"}
            dealt.append((casts[k], _episode(i + 1, casts[k], rng, shots, lines)))
        priority = PRIORITY_CLASSES[studio.priority]
        batches[studio.name] = SimBatch(studio.name, studio.name, tuple(dealt), priority, None, order=order)
    work = Workload(batches, dict(stages), jitter=jitter, seed=seed, by_series=by_series)
    length = sum(expected_gpu_work(work).values()) / gpus
    dated = {
        s.name: replace(batches[s.name], deadline=round(s.deadline * length, 1))
        for s in studios
        if s.deadline is not None
    }
    return replace(work, batches={**batches, **dated})  # (the graph is the same: kept)


def night_shares(studios: Sequence[NightStudio] = NIGHT_STUDIOS) -> list[Share]:
    return [Share(s.name, s.weight) for s in studios]


def simulate_night(
    workload: Workload,
    kinds: Sequence[GpuKind] | int,
    cpus: float,
    policy: str = "farm",
    shares: Sequence[Share] = (),
    seed: int = 0,
    failures: Failures | None = None,
) -> NightResult:
    """Play ``workload`` on ``kinds`` (GPU kinds and counts, or a number of GPUs split by
    ``fleet_for``) and ``cpus`` CPUs under ``policy`` (one of ``NIGHT_POLICIES``), studios sharing
    GPUs by ``shares`` (not under fifo). Same inputs, same result."""
    if policy not in NIGHT_POLICIES:
        raise ValueError(f"unknown night policy {policy!r} (known: {', '.join(NIGHT_POLICIES)})")
    fleet = fleet_for(workload, kinds) if isinstance(kinds, int) else list(kinds)
    placer: Placer | None
    if policy == "farm":
        placer = None  # the controller's own: residency.place
    elif policy == "fifo":
        placer = fifo
    elif policy == "per-task":
        placer = per_task
    else:
        placer = static(static_partition(workload, fleet))
    runtimes: list[NightRuntime] = []

    def runtime(clock: ManualClock) -> NightRuntime:
        runtimes.append(NightRuntime(workload, clock, fleet, cpus, failures, seed))
        return runtimes[-1]

    bound = night_bound(workload, fleet, cpus)
    sim = simulate(
        workload,
        {k.name: float(k.count) for k in fleet},
        cpus,
        policy="fifo" if policy == "fifo" else "farm",
        seed=seed,
        shares=shares,
        failures=failures,
        runtime=runtime,
        placer=placer,
        name=policy,
        bound=lambda *_: bound.seconds,
    )
    return report(sim, workload, fleet, runtimes[0], bound, shares)
