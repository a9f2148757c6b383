"""Render one episode: plan, run what is not done, learn from what finishes, plan again.

This is the single-episode driver behind ``farm render``. It asks the store once which actions are
done, hands that to the pure planner, and submits ready actions to the runtime; the graph grows as
the script and the voiced lines arrive (see ``farm.core.plan``).
"""

from __future__ import annotations

import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import structlog

from farm.observe import logs
from farm.errors import ActionFailed, FarmError
from farm.loader import LoadedEpisode
from farm.core.manifest import Manifest
from farm.core.plan import STAGES, Action, EpisodeJob, EpisodePlan, plan_episode
from farm.core.script import Script, check_against
from farm.settings import Settings
from farm.store import ArtifactStore, LocalStore, open_objects

log = structlog.get_logger("farm.service.render")

DELIVERABLES = {"video": "episode.mp4", "subtitles": "episode.srt", "storyboard": "storyboard.png"}


@dataclass
class Progress:
    """Actions done / known, per stage, as the plan grows."""

    done: Counter = field(default_factory=Counter)
    total: Counter = field(default_factory=Counter)
    running: int = 0

    def line(self) -> str:
        parts = [f"{s} {self.done[s]}/{self.total[s]}" for s in STAGES if self.total[s]]
        return "  ".join(parts) + (f"  (running {self.running})" if self.running else "")


@dataclass
class RenderResult:
    video: Path
    subtitles: Path
    storyboard: Path
    store_paths: dict[str, str]
    ran: list[Manifest]
    cached: list[Manifest]
    wall_seconds: float
    duration_seconds: float

    def summary(self) -> dict:
        usage = lambda attr, ms: round(sum(getattr(m.usage, attr) for m in ms), 3)  # noqa: E731
        return {
            "video": str(self.video), "subtitles": str(self.subtitles), "storyboard": str(self.storyboard),
            "store_paths": self.store_paths,
            "actions_run": len(self.ran), "actions_cached": len(self.cached),
            "cpu_seconds": usage("cpu_seconds", self.ran), "gpu_seconds": usage("gpu_seconds", self.ran),
            "tokens_in": sum(m.usage.tokens_in for m in self.ran),
            "tokens_out": sum(m.usage.tokens_out for m in self.ran),
            "saved": {"cpu_seconds": usage("cpu_seconds", self.cached), "gpu_seconds": usage("gpu_seconds", self.cached),
                      "tokens": sum(m.usage.tokens_in + m.usage.tokens_out for m in self.cached)},
            "wall_seconds": round(self.wall_seconds, 3), "duration_seconds": self.duration_seconds,
            "run": sorted(m.label for m in self.ran),
        }


class EpisodeRender:
    def __init__(self, loaded: LoadedEpisode, settings: Settings, runtime, out_dir: Path | None = None,
                 on_progress: Callable[[Progress], None] | None = None):
        self.loaded, self.settings, self.runtime = loaded, settings, runtime
        self.spec = settings.store_spec()
        self.store = ArtifactStore(open_objects(self.spec), settings.studio)
        self.job = EpisodeJob(settings.studio, settings.namespace, loaded.series, loaded.episode,
                              runtime.catalog.choose_for(settings.backend_names(), loaded.series.backends))
        self.out_dir = out_dir
        self.on_progress = on_progress or (lambda p: None)
        self.manifests: dict[str, Manifest] = {}
        self.script: Script | None = None
        self.line_samples: dict[str, int] = {}
        self.ran: list[Manifest] = []
        self.cached: list[Manifest] = []
        self.failed: list[Action] = []  # attempts that failed (for metrics), retried or not
        self.retried: list[Action] = []

    def _learn(self, action: Action, manifest: Manifest) -> None:
        """Take in the facts a finished action adds to the plan."""
        self.manifests[action.key] = manifest
        if action.op == "line":
            self.line_samples[action.key] = int(manifest.meta["samples"])
        elif action.op == "script":
            with tempfile.TemporaryDirectory(prefix="farm-script-") as tmp:
                path = self.store.get_blob(manifest.outputs["script"], Path(tmp, "script.json"))
                script = Script.model_validate_json(path.read_text(encoding="utf-8"))
            problems = check_against(script, {c.id for c in self.job.series.characters})
            if problems:
                raise ActionFailed(action.key, action.label, "the script backend wrote an unusable script: "
                                   + "; ".join(f"{p}: {m}" for p, m in problems), retryable=False)
            self.script = script

    def _report(self, plan: EpisodePlan) -> None:
        p = Progress(running=self.runtime.running)
        for a in plan.actions:
            p.total[a.stage] += 1
            p.done[a.stage] += a.key in self.manifests
        self.on_progress(p)

    def run(self) -> RenderResult:
        started = time.monotonic()
        done_before = self.store.done_keys()
        attempts: Counter = Counter()
        submitted: set[str] = set()
        not_before: dict[str, float] = {}  # a retry the provider asked us to delay (Retry-After)
        while True:
            plan = plan_episode(self.job, self.script, self.line_samples)
            learned = False
            for action in plan.actions:
                if action.key not in self.manifests and action.key in done_before:
                    manifest = self.store.get_manifest(action.key)
                    if manifest is not None:
                        self.cached.append(manifest)
                        self._learn(action, manifest)
                        learned = True
            if learned:
                continue
            self._report(plan)
            if plan.final_key is not None and plan.final_key in self.manifests:
                break
            for action in plan.actions:
                if action.key in self.manifests or action.key in submitted:
                    continue
                if not_before.get(action.key, 0.0) > time.monotonic():
                    continue
                if all(ref.key in self.manifests for ref in action.inputs.values()):
                    inputs = {n: self.manifests[r.key].outputs[r.output] for n, r in action.inputs.items()}
                    self.runtime.submit(action, inputs, self.spec, self.settings.studio)
                    submitted.add(action.key)
            if self.runtime.running == 0:
                if not_before and max(not_before.values()) > time.monotonic():
                    time.sleep(min(0.5, max(not_before.values()) - time.monotonic()))
                    continue
                raise FarmError("nothing is running and the episode is not finished: the plan is stuck")
            self._report(plan)
            for finished in self.runtime.wait(timeout=1.0 if not_before else None):
                if finished.manifest is not None:
                    self.ran.append(finished.manifest)
                    self._learn(finished.action, finished.manifest)
                    continue
                err = finished.error
                attempts[finished.action.key] += 1
                self.failed.append(finished.action)
                if err.retryable and attempts[finished.action.key] <= self.settings.retries:
                    log.warning("action.retry", **logs.action_context(finished.action, None), error=str(err))
                    self.retried.append(finished.action)
                    submitted.discard(finished.action.key)
                    if err.retry_after:
                        not_before[finished.action.key] = time.monotonic() + err.retry_after
                else:
                    raise err
        final = self.manifests[plan.final_key]
        return self._deliver(final, time.monotonic() - started)

    def _deliver(self, final: Manifest, wall: float) -> RenderResult:
        series, episode = self.job.series.id, self.job.episode.slug
        store_paths, local = {}, {}
        for output, filename in DELIVERABLES.items():
            blob = final.outputs[output]
            store_paths[output] = self.store.publish(blob, series, episode, filename)
            if isinstance(self.store.objects, LocalStore):
                local[output] = self.store.objects.path(store_paths[output])
            else:
                target = Path(self.out_dir or "farm-out") / self.settings.studio / series / episode
                target.mkdir(parents=True, exist_ok=True)
                local[output] = self.store.get_blob(blob, target / filename)
        return RenderResult(video=local["video"], subtitles=local["subtitles"], storyboard=local["storyboard"],
                            store_paths=store_paths, ran=self.ran, cached=self.cached, wall_seconds=wall,
                            duration_seconds=float(final.meta.get("duration", 0.0)))
