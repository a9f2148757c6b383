"""Workloads for the simulator: actions with estimates, true durations and the graph between them.

``synthetic_batch`` makes episodes shaped like ``farm.core.plan``'s graph::

    script (API: tokens, a little CPU)
      ├─► sheet per character (GPU image; made once per series, by whichever script reveals it first)
      ├─► keyframe per shot (GPU image; needs the sheets of the characters in the shot)
      ├─► line per dialogue line (GPU or CPU dubbing)
      │      clip per shot (GPU video, the heaviest; needs its keyframe and its lines' lengths)
      │        └─► mux per shot (CPU; clip + lines)
      └────────────► episode (CPU; every mux and keyframe)

As in the live farm, the graph is revealed as it runs: at submission only the scripts are known;
a script's completion reveals its episode's shots, lines and the series' sheets. Until then the
script carries a template estimate of the episode behind it (``Node.tail_s``) for ranking.

Estimates come from per-stage means scaled by size (a clip by its shot's length); true durations are
drawn around them, lognormal with mean = estimate and ``jitter`` as sigma, from a seeded
``random.Random``. Tokens (script) likewise; GPU-seconds = duration x GPUs; money from ``Prices``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from typing import Iterable, Mapping

from farm.policy.types import PRIORITY_CLASSES, BatchTerms, Budget, Prices, Task


# What the synthetic workloads are charged: a hosted LLM's tokens and a rented GPU's hours.
DEFAULT_PRICES = Prices(per_1k_tokens=0.01, per_gpu_hour=2.50)


@dataclass(frozen=True)
class StageSpec:
    """One kind of action: its stage and backend, what it holds, and its mean estimated duration
    (for a clip: per 5 s of shot; for an episode: per 12 shots)."""

    stage: str
    backend: str
    mean_s: float
    cpus: float = 0.0
    gpus: float = 0.0
    accelerator: str | None = None
    tokens: int = 0


# GPU actions hold no CPU of their own: a GPU worker's CPUs are reserved with its actor pool.
STAGES: Mapping[str, StageSpec] = {
    "script": StageSpec("script", "llm-api", 30.0, cpus=0.25, tokens=6000),
    "sheet": StageSpec("image", "comfyui", 40.0, gpus=1.0),
    "keyframe": StageSpec("image", "comfyui", 15.0, gpus=1.0),
    "line": StageSpec("dubbing", "tts", 6.0, gpus=0.5),
    "line-cpu": StageSpec("dubbing", "espeak-ng", 3.0, cpus=1.0),
    "clip": StageSpec("video", "i2v", 75.0, gpus=1.0),
    "mux": StageSpec("assembly", "ffmpeg", 4.0, cpus=1.0),
    "episode": StageSpec("assembly", "ffmpeg", 30.0, cpus=2.0),
}


@dataclass(slots=True)
class Node:
    """One action of a workload: what the scheduler sees (``task``) and what the simulator knows.

    ``parents`` must all be done before it is ready; ``revealed_by``: it becomes known when *any* of
    these completes (empty: known at submission); ``tail_s``: estimate of work behind it that is not
    revealed yet; ``serves``: the episodes that need it (a sheet serves its whole series).
    """

    task: Task
    parents: tuple[str, ...]
    actual_s: float
    actual_tokens: int = 0
    revealed_by: tuple[str, ...] = ()
    tail_s: float = 0.0
    serves: tuple[str, ...] = ()

    def __post_init__(self):
        if not self.serves:
            self.serves = (self.task.episode,)


@dataclass
class Workload:
    """Batches and their actions (in an order where parents come first)."""

    batches: dict[str, BatchTerms]
    nodes: dict[str, Node]
    episodes: dict[str, list[str]]  # batch -> its episodes in submission order
    prices: Prices = DEFAULT_PRICES

    def __add__(self, other: "Workload") -> "Workload":
        clash = (self.batches.keys() & other.batches.keys()) or (self.nodes.keys() & other.nodes.keys())
        if clash:
            raise ValueError(f"workloads overlap: {sorted(clash)[:3]}")
        return Workload({**self.batches, **other.batches}, {**self.nodes, **other.nodes},
                        {**self.episodes, **other.episodes}, self.prices)

    @property
    def episode_count(self) -> int:
        return sum(len(v) for v in self.episodes.values())


def _lognormal(rng: random.Random, sigma: float) -> float:
    return rng.lognormvariate(-sigma * sigma / 2, sigma) if sigma > 0 else 1.0


def synthetic_batch(episodes: int, seed: int, series: int | None = None,
                    studios: Iterable[str] = ("studio-a",), *, batch: str = "batch",
                    priority: int | str = "normal", deadline: float | None = None, budget: Budget = Budget(),
                    submitted: float = 0.0, order: int = 0, shots: tuple[int, int] = (8, 16),
                    lines: tuple[int, int] = (6, 14), characters: tuple[int, int] = (3, 6),
                    dubbing: str = "gpu", jitter: float = 0.25, stages: Mapping[str, StageSpec] = STAGES,
                    prices: Prices = DEFAULT_PRICES) -> Workload:
    """``episodes`` episodes in ``series`` series per studio (default one per 20 episodes), dealt
    round-robin to ``studios``, one batch per studio (``batch``, or ``batch-<studio>`` when there are
    several), submitted at ``submitted`` with the given terms.

    ``shots``, ``lines``, ``characters``: ranges per episode (lines, characters: per episode, per
    series); ``dubbing``: "gpu" or "cpu" backend for lines; ``jitter``: sigma of the true durations
    around the estimates (0: exact); ``stages``, ``prices``: the tables above. Same arguments, same
    workload. Keys read ``<batch>/<episode>/<op><shot>`` (sheets: ``<batch>/s<series>/sheet<n>``).
    """
    if episodes < 1:
        raise ValueError("episodes must be >= 1")
    if dubbing not in ("gpu", "cpu"):
        raise ValueError(f"dubbing must be 'gpu' or 'cpu', not {dubbing!r}")
    studios = list(studios) or ["studio-a"]
    series = series or max(1, episodes // 20)
    prio = PRIORITY_CLASSES[priority] if isinstance(priority, str) else priority
    rng = random.Random(seed)
    line_spec = stages["line" if dubbing == "gpu" else "line-cpu"]
    batch_of = {s: batch if len(studios) == 1 else f"{batch}-{s}" for s in studios}
    batches = {batch_of[s]: BatchTerms(batch_of[s], s, prio, deadline, budget, submitted, order + i)
               for i, s in enumerate(studios)}
    ep_lists: dict[str, list[str]] = {b: [] for b in batches}
    nodes: dict[str, Node] = {}

    def make(key, spec_name, b, studio, episode, est_s, parents=(), revealed_by=(), serves=(), tail_s=0.0):
        spec = stages[spec_name]
        actual = est_s * _lognormal(rng, jitter)
        est_tokens = spec.tokens
        actual_tokens = round(est_tokens * _lognormal(rng, jitter)) if est_tokens else 0
        est_gpu_s = est_s * spec.gpus
        task = Task(key, b, studio, episode, spec.stage, spec.backend, spec.cpus, spec.gpus, spec.accelerator,
                    est_s, est_tokens, est_gpu_s, prices.money(est_tokens, est_gpu_s))
        nodes[key] = Node(task, tuple(parents), actual, actual_tokens, tuple(revealed_by), tail_s, tuple(serves))

    # A template of an episode's critical path behind its script, for ranking before it is revealed.
    template_tail = (stages["sheet"].mean_s + stages["keyframe"].mean_s + stages["clip"].mean_s
                     + stages["mux"].mean_s + stages["episode"].mean_s)

    # Series: a cast each, a studio each (a series belongs to one studio), episodes dealt in turn.
    plan = []
    for i in range(episodes):
        studio = studios[i % len(studios)]
        plan.append((studio, i % series))
    per_series: dict[tuple[str, int], list[int]] = {}
    for i, (studio, s) in enumerate(plan):
        per_series.setdefault((studio, s), []).append(i)
    casts = {k: rng.randint(*characters) for k in per_series}
    scripts = {k: [f"{batch_of[k[0]]}/e{i:05d}/script" for i in idx] for k, idx in per_series.items()}

    for i, (studio, s) in enumerate(plan):
        b = batch_of[studio]
        ep = f"e{i:05d}"
        ep_lists[b].append(ep)
        prefix = f"{b}/{ep}"
        serieskey = (studio, s)
        script = f"{prefix}/script"
        n_lines_total = rng.randint(*lines)
        make(script, "script", b, studio, ep, stages["script"].mean_s, tail_s=template_tail)
        sheet_keys = [f"{b}/s{s:03d}/sheet{c}" for c in range(casts[serieskey])]
        if per_series[serieskey][0] == i:  # the series' first episode in this batch creates the sheet nodes
            series_eps = [f"e{j:05d}" for j in per_series[serieskey]]
            for key in sheet_keys:
                make(key, "sheet", b, studio, ep, stages["sheet"].mean_s,
                     revealed_by=scripts[serieskey], serves=series_eps)
        n_shots = rng.randint(*shots)
        shot_lines = [0] * n_shots
        for _ in range(n_lines_total):
            shot_lines[rng.randrange(n_shots)] += 1
        final_parents = []
        for k in range(n_shots):
            shot_s = rng.uniform(2.0, 8.0)
            cast = rng.sample(sheet_keys, min(len(sheet_keys), rng.randint(1, 3)))
            kf = f"{prefix}/kf{k:02d}"
            make(kf, "keyframe", b, studio, ep, stages["keyframe"].mean_s, parents=sorted(cast),
                 revealed_by=(script,))
            line_keys = []
            for j in range(shot_lines[k]):
                lk = f"{prefix}/line{k:02d}-{j}"
                make(lk, "line" if dubbing == "gpu" else "line-cpu", b, studio, ep,
                     line_spec.mean_s * rng.uniform(0.5, 1.5), revealed_by=(script,))
                line_keys.append(lk)
            clip = f"{prefix}/clip{k:02d}"
            make(clip, "clip", b, studio, ep, stages["clip"].mean_s * shot_s / 5.0,
                 parents=[kf, *line_keys], revealed_by=(script,))
            mux = f"{prefix}/mux{k:02d}"
            make(mux, "mux", b, studio, ep, stages["mux"].mean_s * (0.75 + shot_s / 20),
                 parents=[clip, *line_keys], revealed_by=(script,))
            final_parents += [mux, kf]
        make(f"{prefix}/episode", "episode", b, studio, ep, stages["episode"].mean_s * n_shots / 12,
             parents=final_parents, revealed_by=(script,))
    return Workload(batches, nodes, ep_lists, prices)


def with_terms(workload: Workload, batch: str, **changes) -> Workload:
    """A copy of ``workload`` with one batch's terms changed (priority, deadline, budget, ...)."""
    batches = dict(workload.batches)
    batches[batch] = replace(batches[batch], **changes)
    return Workload(batches, workload.nodes, workload.episodes, workload.prices)


def episode_work(workload: Workload) -> dict[str, tuple[float, float]]:
    """Batch -> mean estimated (GPU-seconds, CPU-seconds) per episode: what pacing needs."""
    totals: dict[str, list[float]] = {b: [0.0, 0.0] for b in workload.batches}
    for node in workload.nodes.values():
        t = node.task
        totals[t.batch][0] += t.est_seconds * t.gpus
        totals[t.batch][1] += t.est_seconds * t.cpus
    return {b: (g / max(1, len(workload.episodes[b])), c / max(1, len(workload.episodes[b])))
            for b, (g, c) in totals.items()}
