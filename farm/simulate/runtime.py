"""The simulated runtime and artifacts: the engine's ports played on simulated CPUs and GPUs.

``SimRuntime`` runs nothing: an action submitted now ends at now + its true duration (drawn around
its estimate, seeded by the workload's seed and its key), holding its resources until then; ``wait``
moves the manual clock to the next end. Failures are injected per attempt (``Failures``).
``SimArtifacts`` answers for the store: nothing is done before the night starts, a script action's
answer is its episode's script, and delivery only names where the files would go.
"""

from __future__ import annotations

import heapq
import random
import zlib
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from farm.core.events import ActionResult
from farm.core.manifest import Blob, Manifest
from farm.core.plan import OUTPUTS, Action, EpisodeJob
from farm.core.ports import Finished, ManualClock
from farm.core.state import Profile
from farm.errors import ActionFailed
from farm.policy.residency import Placement
from farm.policy.types import Capacity
from farm.simulate.workload import Workload
from workers.api import Usage

EPS = 1e-9


def true_seconds(workload: Workload, action: Action) -> float:
    """How long ``action`` really takes when it does not fail: its estimate, drawn around (lognormal,
    mean = estimate, sigma = the workload's jitter), the same for the same workload seed and key."""
    seconds = workload.estimate(action)[0]
    sigma = workload.jitter
    if sigma <= 0:
        return seconds
    rng = random.Random(f"{workload.seed}:{action.key}")
    return seconds * rng.lognormvariate(-sigma * sigma / 2, sigma)


def true_tokens(workload: Workload, action: Action) -> int:
    """The tokens ``action`` really uses: its backend's estimate, drawn around like its duration."""
    tokens = workload.spec_of(action).tokens
    sigma = workload.jitter
    if not tokens or sigma <= 0:
        return tokens
    rng = random.Random(f"{workload.seed}:{action.key}:tokens")
    return round(tokens * rng.lognormvariate(-sigma * sigma / 2, sigma))


@dataclass(frozen=True)
class Failures:
    """Failure injection. Each attempt fails with ``probability`` (``retryable`` or not), after a
    random part of its duration, on one of ``workers`` workers (attempts of one action rotate
    through them). Actions in ``poison`` (keys) fail every attempt, retryably: the quarantine case."""

    probability: float = 0.0
    retryable: bool = True
    workers: int = 8
    poison: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Run:
    """One attempt of one action on the simulated farm: it holds ``gpus`` (on GPU ``gpu``, where the
    runtime models each GPU) and ``cpus`` from ``start`` to ``end``; of that, its model loads first for
    ``load_s``, then it waits ``wait_s`` for a load of its model already under way there, then it works."""

    key: str
    batch: str
    studio: str
    stage: str
    start: float
    end: float
    gpus: float
    cpus: float
    worker: str
    ok: bool
    gpu: str = ""
    load_s: float = 0.0
    wait_s: float = 0.0

    @property
    def work_s(self) -> float:
        return self.end - self.start - self.load_s - self.wait_s


class SimRuntime:
    grows = False  # a fixed set of workers

    def __init__(
        self,
        workload: Workload,
        clock: ManualClock,
        gpus: Mapping[str | None, float],
        cpus: float,
        failures: Failures | None = None,
        seed: int = 0,
    ):
        self.w, self.clock, self.failures, self.seed = workload, clock, failures or Failures(), seed
        self.total_gpus, self.total_cpus = dict(gpus), float(cpus)
        self.free_gpus, self.free_cpus = dict(gpus), float(cpus)
        self.runs: list[Run] = []
        self.last_end = clock.now()
        self._ends: list[tuple[float, int, str]] = []  # (end, order, key)
        self._live: dict[str, tuple[Action, Profile, str | None, float, bool, str, str | None]] = {}
        self._attempts: dict[str, int] = {}
        self._order = 0
        self._graph = workload.graph()

    @property
    def running(self) -> int:
        return len(self._live)

    def submit(
        self,
        action: Action,
        inputs: Mapping[str, Blob],
        profile: Profile,
        batch: str | None,
        placement: Placement | None = None,
    ) -> None:
        """Start ``action`` now on the pool of its kind; a ``placement`` is not for this runtime, which
        reports no GPUs (``farm.simulate.gpus.NightRuntime`` carries placements out)."""
        fail, seconds, worker = self._draw(action)
        kind = None
        if profile.gpus:
            kind = (
                profile.accelerator
                if profile.accelerator is not None
                else max(
                    sorted(self.free_gpus, key=lambda k: (k is not None, k or "")), key=lambda k: self.free_gpus[k]
                )
            )
            self.free_gpus[kind] -= profile.gpus
        self.free_cpus -= profile.cpus
        now = self.clock.now()
        self._start(action, profile, kind, now, now + seconds, fail, worker, batch)

    def _draw(self, action: Action) -> tuple[bool, float, str]:
        """This attempt of ``action``: whether it fails, how long it works, on which worker."""
        key = action.key
        attempt = self._attempts[key] = self._attempts.get(key, 0) + 1
        rng = random.Random(f"{self.seed}:{key}:{attempt}")
        f = self.failures
        fail = key in f.poison or (f.probability > 0 and rng.random() < f.probability)
        seconds = true_seconds(self.w, action) * (rng.uniform(0.1, 1.0) if fail else 1.0)
        return fail, seconds, f"w{(zlib.crc32(key.encode()) + attempt) % max(1, f.workers)}"

    def _start(
        self,
        action: Action,
        profile: Profile,
        kind: str | None,
        start: float,
        end: float,
        fail: bool,
        worker: str,
        batch: str | None,
    ) -> None:
        self._order += 1
        heapq.heappush(self._ends, (end, self._order, action.key))
        self._live[action.key] = (action, profile, kind, start, fail, worker, batch)

    def next_end(self) -> float | None:
        return self._ends[0][0] if self._ends else None

    def wait(self, timeout: float | None = None) -> list[Finished]:
        """Move the clock to the next end within ``timeout`` (every action ending then comes back),
        or by ``timeout`` when none ends before."""
        now = self.clock.now()
        if not self._ends or (timeout is not None and self._ends[0][0] > now + timeout):
            if timeout is not None:
                self.clock.set(now + timeout)
            return []
        when = self._ends[0][0]
        self.clock.set(max(now, when))
        out = []
        while self._ends and self._ends[0][0] <= when + EPS:
            _, _, key = heapq.heappop(self._ends)
            out.append(self._end(key))
        return out

    def _end(self, key: str) -> Finished:
        action, profile, kind, started, fail, worker, batch = self._live.pop(key)
        now = self.clock.now()
        self.last_end = max(self.last_end, now)
        if profile.gpus:
            self.free_gpus[kind] += profile.gpus
        self.free_cpus += profile.cpus
        studio = action.context.get("studio", "")
        run = self._run(key, batch or "", studio, action, started, now, profile, worker, not fail)
        self.runs.append(run)
        if fail:
            retryable = key in self.failures.poison or self.failures.retryable
            return Finished(
                action, None, ActionFailed(key, action.label, "injected failure", retryable=retryable, worker=worker)
            )
        return Finished(action, self._manifest(action, run), None)

    def _run(
        self,
        key: str,
        batch: str,
        studio: str,
        action: Action,
        start: float,
        end: float,
        profile: Profile,
        worker: str,
        ok: bool,
    ) -> Run:
        return Run(key, batch, studio, action.stage, start, end, profile.gpus, profile.cpus, worker, ok)

    def _manifest(self, action: Action, run: Run) -> Manifest:
        """What the worker reports: its run from when it began (after any wait for its model to be
        loaded by another), the load it did first (``usage.load_seconds``, never charged) and the
        GPU-seconds of its work."""
        tokens = true_tokens(self.w, action)
        meta: dict[str, Any] = {}
        if action.op == "line":
            meta["samples"] = self._graph.samples[action.key]
        outputs = {name: Blob.model_construct(digest=action.key, size=1, name=name) for name in OUTPUTS[action.op]}
        usage = Usage(
            tokens_in=tokens // 2,
            tokens_out=tokens - tokens // 2,
            gpu_seconds=run.work_s * run.gpus,
            model=action.backend,
            load_seconds=run.load_s,
        )
        started, ended, worker = run.start + run.wait_s, run.end, run.worker
        return ActionResult.model_construct(
            key=action.key,
            stage=action.stage,
            op=action.op,
            backend=action.backend,
            version=action.version,
            label=action.label,
            outputs=outputs,
            meta=meta,
            usage=usage,
            started_at=started,
            finished_at=ended,
            worker={"node": worker},
            schema_version=1,
        )

    def capacity(self) -> Capacity:
        return Capacity(
            cpus=max(0.0, self.free_cpus), gpus_by_accelerator={k: max(0.0, v) for k, v in self.free_gpus.items()}
        )

    def request_capacity(self, shapes: Sequence[tuple[float, float, str | None]]) -> None:
        """A simulated farm does not grow."""

    def cancel(self, keys: Collection[str]) -> None:
        """Cancelled work runs to its end, as on a real farm whose workers finish what they hold."""

    def adopt(self, actions: Sequence[Action]) -> set[str]:
        """A simulated night has no controller restart: nothing to re-attach to."""
        return set()

    def shutdown(self) -> None:
        """Nothing to let go of."""


class SimArtifacts:
    """The store of a farm that starts the night empty."""

    def __init__(self, workload: Workload):
        self._graph = workload.graph()

    def lookup(self, actions: Sequence[Action]) -> list[tuple[Action, Manifest]]:
        return []

    def facts(self, action: Action, manifest: Manifest) -> dict[str, Any]:
        return {"script": self._graph.scripts[action.key]} if action.op == "script" else {}

    def deliver(self, job: EpisodeJob, outputs: Mapping[str, Blob]) -> dict[str, str]:
        return {"video": f"{job.studio}/episodes/{job.series.id}/{job.episode.slug}/episode.mp4"}

    def refresh(self, studio: str) -> None:
        pass
