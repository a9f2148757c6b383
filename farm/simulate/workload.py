"""Workloads for the simulator: batches of generated series and episodes, and the simulated backends.

``synthetic_batch`` writes specs the way a studio would (a series with its cast, episodes with
outlines: beats and lines), and the farm's own planner (``farm.core.plan``) turns them into actions,
exactly as in a live batch. Nothing of the graph is written by hand here.

The simulated backends stand for a night's real ones (``STAGES``): a script model behind an API
(tokens), an image model for sheets and keyframes, an image-to-video model for clips, a speech
model for lines, a lip-sync model for each shot with dialogue, ffmpeg for muxing and assembly. Each declares what an action holds and its
estimate, scaled by the action's size (a clip by its frames, a line by its text, an episode by its
shots). What an action really takes is drawn around the estimate by the simulated runtime
(``farm.simulate.runtime``), lognormal with mean = estimate and ``jitter`` as sigma, seeded by the
workload's seed and the action's key: same workload, same night.

The script action's answer is the farm's own sketch of the outline (``plan.sketch``), and a line
lasts as long as its text takes at the language's speaking rate.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from farm.core.plan import STAGES as PLAN_STAGES
from farm.core.plan import Action, BackendChoice, EpisodeJob, plan_episode, sketch
from farm.core.script import Script
from farm.core.spec import Episode, Series
from farm.core.state import Profile
from farm.policy.types import PRIORITY_CLASSES, Budget, Prices

# What the synthetic workloads are charged: a hosted LLM's tokens and a rented GPU's hours.
DEFAULT_PRICES = Prices(per_1k_tokens=0.01, per_gpu_hour=2.50)

VERSION = "sim-1"


@dataclass(frozen=True)
class StageSpec:
    """One kind of action: its stage and backend, what it holds, and its mean estimated duration
    (for a clip or a lip-sync: per 5 s of shot; for a line: per 3 s of speech; for an episode: per 12 shots).
    A GPU backend's model: ``load_s`` to load it on a GPU, ``memory_gb`` it holds there (0: unknown).

    ``STAGES``-style tables are keyed by the action's op (``clip``), or ``op:variant`` (``clip:b``)
    for another backend of the same op, which ``Workload.by_series`` gives some series."""

    stage: str
    backend: str
    mean_s: float
    cpus: float = 0.0
    gpus: float = 0.0
    accelerator: str | None = None
    tokens: int = 0
    load_s: float = 0.0
    memory_gb: float = 0.0


# GPU actions hold no CPU of their own: a GPU worker's CPUs are reserved with its actor pool.
STAGES: Mapping[str, StageSpec] = {
    "script": StageSpec("script", "llm-api", 30.0, cpus=0.25, tokens=6000),
    "sheet": StageSpec("image", "comfyui", 40.0, gpus=1.0),
    "keyframe": StageSpec("image", "comfyui", 15.0, gpus=1.0),
    "line": StageSpec("dubbing", "tts", 6.0, gpus=0.5),
    "line-cpu": StageSpec("dubbing", "espeak-ng", 3.0, cpus=1.0),
    "clip": StageSpec("video", "i2v", 75.0, gpus=1.0),
    "lipsync": StageSpec("lipsync", "lipsync-model", 30.0, gpus=1.0),  # a model that finds faces itself
    "mux": StageSpec("assembly", "ffmpeg", 4.0, cpus=1.0),
    "episode": StageSpec("assembly", "ffmpeg", 30.0, cpus=1.0),
}


@dataclass(frozen=True)
class SimBatch:
    """One batch of a workload: its terms, as a studio would submit them, and its episodes."""

    id: str
    studio: str
    episodes: tuple[tuple[Series, Episode], ...]
    priority: int = PRIORITY_CLASSES["normal"]
    deadline: float | None = None
    budget: Budget = Budget()
    submitted: float = 0.0
    order: int = 0


@dataclass
class Workload:
    """Batches of specs, the simulated backends they run on, and the seed of what really happens.
    ``by_series``: series id -> {plan stage: key of ``stages``}, a series' own backends (e.g. its
    clips on another video model: ``{"s001": {"video": "clip:b"}}``)."""

    batches: dict[str, SimBatch]
    stages: Mapping[str, StageSpec] = field(default_factory=lambda: dict(STAGES))
    prices: Prices = DEFAULT_PRICES
    dubbing: str = "gpu"
    jitter: float = 0.25
    seed: int = 0
    by_series: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    _graph: Any = field(default=None, repr=False, compare=False)
    _specs: Any = field(default=None, repr=False, compare=False)

    def __add__(self, other: Workload) -> Workload:
        clash = self.batches.keys() & other.batches.keys()
        if clash:
            raise ValueError(f"workloads overlap: {sorted(clash)[:3]}")
        return replace(
            self,
            batches={**self.batches, **other.batches},
            by_series={**self.by_series, **other.by_series},
            _graph=None,
        )

    @property
    def episode_count(self) -> int:
        return sum(len(b.episodes) for b in self.batches.values())

    # -- the simulated backends -----------------------------------------------------------------
    def spec_of(self, action: Action) -> StageSpec:
        op = action.op
        if op == "line" and self.dubbing == "cpu":
            return self.stages["line-cpu"]
        if self._specs is None:  # (op, backend) -> its spec: an op's variants ("clip:b") by their backend
            specs: dict[tuple[str, str], StageSpec] = {}
            for key, spec in self.stages.items():
                specs.setdefault((key.split(":", 1)[0], spec.backend), spec)
            self._specs = specs
        found: StageSpec | None = self._specs.get((op, action.backend))
        return found if found is not None else self.stages[op]

    def choices(self, series: str | None = None) -> dict[str, BackendChoice]:
        """Plan stage -> the backend it runs on: the workload's, or (``series``) that series' own."""
        line = "line-cpu" if self.dubbing == "cpu" else "line"
        by_stage = {
            "script": "script",
            "image": "keyframe",
            "video": "clip",
            "dubbing": line,
            "lipsync": "lipsync",
            "assembly": "mux",
        }
        if series is not None:
            by_stage.update(self.by_series.get(series, {}))
        return {s: BackendChoice(self.stages[by_stage[s]].backend, VERSION) for s in PLAN_STAGES if s in by_stage}

    def profiles(self) -> dict[tuple[str, str], Profile]:
        out: dict[tuple[str, str], Profile] = {}
        for spec in self.stages.values():
            out.setdefault(
                (spec.stage, spec.backend),
                Profile(
                    cpus=spec.cpus,
                    gpus=spec.gpus,
                    accelerator=spec.accelerator,
                    load_s=spec.load_s,
                    memory_gb=spec.memory_gb,
                ),
            )
        return out

    def estimate(self, action: Action) -> tuple[float, int, float]:
        """(seconds, tokens, GPU-seconds) a simulated backend expects ``action`` to take."""
        spec = self.spec_of(action)
        p = action.params
        scale = 1.0
        if action.op in ("clip", "lipsync"):
            scale = p["frames"] / p["fps"] / 5.0
        elif action.op == "mux":
            scale = 0.75 + p["frames"] / p["fps"] / 20.0
        elif action.op == "episode":
            scale = len(p["shots"]) / 12.0
        elif action.op == "line":  # by its words: about 8 to a typical line
            scale = min(1.5, max(0.5, len(str(p["text"]).split()) / 8.0))
        seconds = spec.mean_s * scale
        return seconds, spec.tokens, seconds * spec.gpus

    def jobs(self) -> list[tuple[str, EpisodeJob]]:
        """(batch, job) of every episode, in submission order."""
        choices = self.choices()
        own = {s: self.choices(s) for s in self.by_series}
        return [
            (b.id, EpisodeJob(b.studio, b.studio, series, episode, own.get(series.id, choices)))
            for b in sorted(self.batches.values(), key=lambda b: (b.submitted, b.order))
            for series, episode in b.episodes
        ]

    def graph(self) -> Graph:
        """Every action of every episode as the planner makes it once all is known (cached)."""
        if self._graph is None:
            self._graph = Graph.of(self)
        graph: Graph = self._graph
        return graph


@dataclass
class Graph:
    """The whole planned graph of a workload: what the lower bound and the tests read."""

    actions: dict[str, Action]
    batch_of: dict[str, str]  # key -> the batch of the first episode that needs it
    revealed_by: dict[str, set[str]]  # key -> the script actions whose completion plans it (any one)
    lines_of: dict[str, list[str]]  # a clip's key -> its shot's lines (a clip is planned once they are voiced)
    by_episode: dict[tuple[str, str], dict[str, str]]  # (batch, "series/epNNN") -> label -> key
    scripts: dict[str, Script]  # a script action's key -> the script it writes
    samples: dict[str, int]  # a line action's key -> how long its audio is

    @classmethod
    def of(cls, workload: Workload) -> Graph:
        actions: dict[str, Action] = {}
        batch_of: dict[str, str] = {}
        revealed: dict[str, set[str]] = {}
        lines_of: dict[str, list[str]] = {}
        by_episode: dict[tuple[str, str], dict[str, str]] = {}
        scripts: dict[str, Script] = {}
        all_samples: dict[str, int] = {}
        for batch, job in workload.jobs():
            script, samples, fixed = sketch(job)
            all_samples.update(samples)
            plan = plan_episode(job, script, samples, fixed)
            if plan.script_key is not None:
                scripts[plan.script_key] = script
            labels = {a.label: a.key for a in plan.actions}
            by_episode[(batch, f"{job.series.id}/{job.episode.slug}")] = labels
            for a in plan.actions:
                actions.setdefault(a.key, a)
                batch_of.setdefault(a.key, batch)
                if plan.script_key is not None and a.key != plan.script_key:
                    revealed.setdefault(a.key, set()).add(plan.script_key)
                if a.op == "clip":
                    shot = a.label.split(" ", 1)[1]
                    lines_of[a.key] = [k for label, k in labels.items() if label.startswith(f"line {shot}#")]
        return cls(actions, batch_of, revealed, lines_of, by_episode, scripts, all_samples)


def _lognormal(rng: random.Random, sigma: float) -> float:
    return rng.lognormvariate(-sigma * sigma / 2, sigma) if sigma > 0 else 1.0


def synthetic_batch(
    episodes: int,
    seed: int,
    series: int | None = None,
    studios: Iterable[str] = ("studio-a",),
    *,
    batch: str = "batch",
    priority: int | str = "normal",
    deadline: float | None = None,
    budget: Budget = Budget(),
    submitted: float = 0.0,
    order: int = 0,
    shots: tuple[int, int] = (8, 16),
    lines: tuple[int, int] = (6, 14),
    characters: tuple[int, int] = (3, 6),
    dubbing: str = "gpu",
    jitter: float = 0.25,
    stages: Mapping[str, StageSpec] = STAGES,
    prices: Prices = DEFAULT_PRICES,
) -> Workload:
    """``episodes`` episodes in ``series`` series per studio (default one per 20 episodes), dealt
    round-robin to ``studios``, one batch per studio (``batch``, or ``batch-<studio>`` when there are
    several), submitted at ``submitted`` with the given terms.

    Each episode is an outline: its shots (``shots``, a range) are an establishing shot per beat and
    a shot per line (``lines``, a range per episode); a series has a cast (``characters``, a range).
    ``dubbing``: "gpu" or "cpu" backend for lines; ``jitter``: sigma of the true durations around the
    estimates (0: exact); ``stages``, ``prices``: the tables above. Same arguments, same workload.
    Episodes are ``<series>/epNNNN`` with series ``s000``...; keys are the planner's.
    """
    if episodes < 1:
        raise ValueError("episodes must be >= 1")
    if dubbing not in ("gpu", "cpu"):
        raise ValueError(f"dubbing must be 'gpu' or 'cpu', not {dubbing!r}")
    studios = list(studios) or ["studio-a"]
    n_series = series or max(1, episodes // 20)
    prio = PRIORITY_CLASSES[priority] if isinstance(priority, str) else priority
    rng = random.Random(seed)
    batch_of = {s: batch if len(studios) == 1 else f"{batch}-{s}" for s in studios}
    casts: dict[tuple[str, int], Series] = {}
    dealt: dict[str, list[tuple[Series, Episode]]] = {s: [] for s in studios}
    for i in range(episodes):
        studio, k = studios[i % len(studios)], i % n_series
        if (studio, k) not in casts:
            casts[(studio, k)] = _series(f"s{k:03d}", rng.randint(*characters), rng)
        cast = casts[(studio, k)]
        dealt[studio].append((cast, _episode(i + 1, cast, rng, shots, lines)))
    batches = {
        batch_of[s]: SimBatch(batch_of[s], s, tuple(dealt[s]), prio, deadline, budget, submitted, order + n)
        for n, s in enumerate(studios)
    }
    return Workload(batches, dict(stages), prices, dubbing, jitter, seed)


def _series(sid: str, cast: int, rng: random.Random) -> Series:
    return Series.model_validate(
        {
            "id": sid,
            "title": f"Series {sid}",
            "language": "en",
            "style": {"description": "neon noir", "palette": ["#0b1030", "#2d1b4e", "#ff8a3d"]},
            "characters": [
                {
                    "id": f"c{c}",
                    "name": f"C{c}",
                    "look": {"description": f"look {c}"},
                    "voice": {"voice": "en-us", "pitch": 10 + 8 * c, "rate": 150 + rng.randint(0, 40)},
                }
                for c in range(cast)
            ],
        }
    )


_WORDS = (
    "rain",
    "letter",
    "midnight",
    "tea",
    "door",
    "secret",
    "alley",
    "promise",
    "lantern",
    "train",
    "river",
    "mother",
    "ledger",
    "key",
    "neon",
    "signal",
)


def _episode(
    number: int, series: Series, rng: random.Random, shots: tuple[int, int], lines: tuple[int, int]
) -> Episode:
    n_shots = rng.randint(*shots)
    n_lines = min(rng.randint(*lines), n_shots - 1)
    beats = max(1, n_shots - n_lines)
    cast = [c.id for c in series.characters]
    per_beat = [0] * beats
    for _ in range(n_lines):
        per_beat[rng.randrange(beats)] += 1
    outline = []
    for b, count in enumerate(per_beat):
        present = rng.sample(cast, min(len(cast), rng.randint(1, 3)))
        outline.append(
            {
                "beat": f"beat {b} of episode {number}",
                "location": f"place {rng.randint(0, 9)}",
                "characters": present,
                "lines": [
                    {
                        "speaker": rng.choice(present),
                        "text": f"Episode {number}, line {b}.{j}: "
                        + " ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, 12))),
                    }
                    for j in range(count)
                ],
            }
        )
    return Episode.model_validate(
        {
            "series": "series.yaml",
            "number": number,
            "title": f"Episode {number}",
            "target_seconds": 60,
            "seed": rng.randint(0, 10_000),
            "outline": outline,
        }
    )


def with_terms(workload: Workload, batch: str, **changes: Any) -> Workload:
    """A copy of ``workload`` with one batch's terms changed (priority, deadline, budget, ...)."""
    batches = dict(workload.batches)
    batches[batch] = replace(batches[batch], **changes)
    return replace(workload, batches=batches, _graph=None)
