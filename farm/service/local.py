"""``farm render``: the engine hosted in this process, running a batch of one episode.

The render is a batch like any other: the same controller (retry policy, ``FARM_STAGE_RESOURCES``,
result checks), the same engine and accounting, with its own journal in the studio's tree of the
store (``<studio>/renders/<series>/<episode>/<render id>/``), which ``farm report EPISODE.yaml``
reads. Actions run on whatever runtime is given (Ray, by default a local one).

Example::

    result = render_episode(load_episode(path), settings, runtime)
    result.video        # a local path to the finished episode
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from farm.core.engine import Engine
from farm.core.events import ActionResult, Submission, SubmittedEpisode
from farm.core.plan import JUDGE, STAGES
from farm.core.ports import Clock, Runtime
from farm.errors import FarmError
from farm.loader import LoadedEpisode
from farm.observe.accounting import Accounting
from farm.observe.metrics import Metrics
from farm.runtime.clock import SystemClock
from farm.service.artifacts import StoreArtifacts
from farm.settings import Settings, controller_for
from farm.store import LocalStore, open_objects
from farm.store.journal import StoreJournal, render_prefix
from farm.store.reviews import load_reviews
from farm.store.yields import add_yields, load_yields

# How long a render waits for resources no worker offers (GPUs an autoscaler may still bring up)
# before it says which are missing.
RESOURCE_WAIT_S = 60.0
# How often, at most, the render decides again while actions run: room a decision left (a lane it
# refused for this round) is offered again without waiting for an action to finish.
DECIDE_EVERY_S = 0.1


@dataclass
class Progress:
    """Actions done / known, per stage, as the plan grows; time since the render started and the time
    still to go by the controller's projection (from the same estimates the scheduler plans with)."""

    done: Counter = field(default_factory=Counter)
    total: Counter = field(default_factory=Counter)
    running: int = 0
    waiting: str = ""  # what the queue waits for, when nothing can run
    elapsed: float = 0.0
    eta: float | None = None  # seconds to go
    growing: bool = False  # the plan grows still (the script has not run): more actions will come

    def line(self) -> str:
        parts = [f"{s} {self.done[s]}/{self.total[s]}" for s in (*STAGES, JUDGE) if self.total[s]]
        known = f"{sum(self.done.values())}/{sum(self.total.values())}{'+' if self.growing else ''}"
        return (
            f"{_clock(self.elapsed)}  {known} actions  "
            + "  ".join(parts)
            + (f"  (running {self.running})" if self.running else "")
            + (f"  (waiting for {self.waiting})" if self.waiting else "")
            + (f"  about {_clock(self.eta)} to go" if self.eta is not None else "")
        )


def _clock(seconds: float) -> str:
    seconds = max(0, round(seconds))
    return (
        f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
        if seconds >= 3600
        else f"{seconds // 60}:{seconds % 60:02d}"
    )


class Interrupted(FarmError):
    """The render was asked to stop (Ctrl-C); what finished is in the store, and a rerun resumes."""

    def __init__(self, finished: int):
        self.finished = finished
        super().__init__(f"interrupted; {finished} actions finished are kept; run again to resume")


@dataclass
class RenderResult:
    video: Path
    subtitles: Path
    storyboard: Path
    store_paths: dict[str, str]
    ran: list[ActionResult]
    cached: list[ActionResult]
    wall_seconds: float
    duration_seconds: float
    batch: str = ""
    takes: list[dict[str, Any]] = field(default_factory=list)  # each judged keyframe, clip and line
    flagged: list[str] = field(default_factory=list)  # the shots whose every take failed, and why

    def summary(self) -> dict[str, Any]:
        def usage(attr: str, ms: list[ActionResult]) -> float:
            return round(sum(getattr(m.usage, attr) for m in ms), 3)

        return {
            "video": str(self.video),
            "subtitles": str(self.subtitles),
            "storyboard": str(self.storyboard),
            "store_paths": self.store_paths,
            "actions_run": len(self.ran),
            "actions_cached": len(self.cached),
            "cpu_seconds": usage("cpu_seconds", self.ran),
            "gpu_seconds": usage("gpu_seconds", self.ran),
            "tokens_in": sum(m.usage.tokens_in for m in self.ran),
            "tokens_out": sum(m.usage.tokens_out for m in self.ran),
            "saved": {
                "cpu_seconds": usage("cpu_seconds", self.cached),
                "gpu_seconds": usage("gpu_seconds", self.cached),
                "tokens": sum(m.usage.tokens_in + m.usage.tokens_out for m in self.cached),
            },
            "wall_seconds": round(self.wall_seconds, 3),
            "takes": {
                "judged": len(self.takes),
                "made": sum(len(t["takes"]) for t in self.takes),
                "retaken": [t for t in self.takes if len(t["takes"]) > 1],
            },
            "flagged": self.flagged,
            # each shot's lip-sync, as its judges measured it: per line, the mouth/audio correlation, which
            # face moved most with it, and the offset (frames) at which it is best
            "lipsync": [
                {"shot": t["shot"], "take": t["used"], "checks": t["checks"]}
                for t in self.takes
                if t["label"].startswith("lipsync ")
            ],
            "duration_seconds": self.duration_seconds,
            "run": sorted(m.label for m in self.ran),
        }


def render_episode(
    loaded: LoadedEpisode,
    settings: Settings,
    runtime: Runtime,
    *,
    out_dir: Path | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    metrics: Metrics | None = None,
    clock: Clock | None = None,
    resource_wait_s: float = RESOURCE_WAIT_S,
    stop: Callable[[], bool] | None = None,
) -> RenderResult:
    """Render one episode as a batch of one on ``runtime``; return where its deliverables are.

    ``metrics`` (if given) accounts every journaled event, as the batch controller does.
    Raises FarmError with the reason when the episode fails, and when nothing can run: the plan
    is stuck, or no worker offers the resources its actions need for ``resource_wait_s``; raises
    Interrupted as soon as ``stop()`` says so (what finished is kept: a rerun resumes from it).
    """
    started = time.monotonic()
    clock = clock or SystemClock()
    catalog = settings.catalog()
    objects = open_objects(settings.store_spec())
    controller = controller_for(settings, catalog)
    chosen = catalog.choose_for(settings.backend_names(), loaded.series.backends)
    backends = {stage: c.to_json() for stage, c in chosen.items()}
    series, slug = loaded.series.id, loaded.episode.slug
    item = SubmittedEpisode(
        series=loaded.series,
        episode=loaded.episode,
        backends=backends,
        judging=settings.judging(catalog, loaded.series),
        reviews=load_reviews(objects, settings.studio, series, slug),
    )
    sub = Submission(
        studio=settings.studio,
        namespace=settings.namespace,
        name=f"render {loaded.path.name}",
        backends=backends,
        episodes=[item],
    )
    controller.yields.load(load_yields(objects))
    now = clock.now()
    batch = f"render-{datetime.fromtimestamp(now, timezone.utc).strftime('%Y%m%d-%H%M%S-%f')}"
    # a render's journal is its record (farm report reads it), not a memory it recovers from: written
    # at most a second late, and at the end, never flushed to disk on its own
    journal = StoreJournal(objects, render_prefix(settings.studio, series, slug, batch), durable=(), buffer_s=1.0)
    engine = Engine(
        controller,
        journal,
        runtime,
        clock,
        StoreArtifacts(objects),
        observe=Accounting(metrics, controller) if metrics is not None else None,
    )
    eid = f"{series}/{slug}"
    try:
        engine.submit(batch, sub)
        _run(
            engine,
            controller,
            runtime,
            clock,
            batch,
            eid,
            on_progress or (lambda p: None),
            resource_wait_s,
            stop or (lambda: False),
        )
    finally:
        journal.flush()
        _save_yields(objects, controller)
    episode = controller.episodes[(batch, eid)]
    status = controller.batches[batch]
    if episode.status != "delivered":
        raise FarmError(f"{eid} failed: {episode.reason or status.reason or status.status}")
    final = controller.actions[episode.final_key].manifest if episode.final_key else None
    assert final is not None
    done = [controller.actions[k] for k in episode.keys if controller.actions[k].status == "done"]
    ran = [s.manifest for s in done if not s.cached and s.manifest is not None]
    cached = [s.manifest for s in done if s.cached and s.manifest is not None]
    local = _local_copies(objects, settings, episode.deliverables, final, series, slug, out_dir)
    return RenderResult(
        video=local["video"],
        subtitles=local["subtitles"],
        storyboard=local["storyboard"],
        store_paths=dict(episode.deliverables),
        ran=ran,
        cached=cached,
        wall_seconds=time.monotonic() - started,
        duration_seconds=float(final.meta.get("duration", 0.0)),
        batch=batch,
        takes=[_takes_json(t, controller) for t in episode.takes],
        flagged=list(episode.flagged),
    )


def _takes_json(takes: Any, controller: Any) -> dict[str, Any]:
    """One judged action's takes as ``farm render --json`` prints them, with every check its judges
    measured of the take in use (name, value, threshold, passed)."""
    used = takes.used
    checks = []
    for key in used.judges if used else ():
        state = controller.actions.get(key)
        meta = state.manifest.meta if state is not None and state.manifest is not None else {}
        checks += [{k: c.get(k) for k in ("name", "value", "threshold", "passed")} for c in meta.get("checks", [])]
    return {
        "label": takes.label,
        "shot": takes.shot,
        "used": used.number if used else None,
        "checks": checks,
        "takes": [
            {
                "take": t.number,
                "verdict": None if t.verdict is None else ("pass" if t.verdict.passed else "fail"),
                "score": None if t.verdict is None else t.verdict.score,
                "failing": [] if t.verdict is None else list(t.verdict.failing),
                "review": None if t.review is None else ("approve" if t.review.approve else "reject"),
            }
            for t in takes.takes
        ],
    }


def _save_yields(objects: Any, controller: Any) -> None:
    """Add what this render's judges said of its backends' takes to the yields the store keeps."""
    new = controller.yields.new()
    if new:
        with contextlib.suppress(FarmError):  # a statistic: the render's own result is what matters
            controller.yields.load(add_yields(objects, new))


def _run(
    engine: Engine,
    controller: Any,
    runtime: Runtime,
    clock: Clock,
    batch: str,
    eid: str,
    report: Callable[[Progress], None],
    resource_wait_s: float,
    stop: Callable[[], bool],
) -> None:
    """Step the engine until the batch of one is over; raise FarmError when nothing can run, and
    Interrupted when ``stop()`` says so."""
    episode = controller.episodes[(batch, eid)]
    stuck_since: float | None = None
    started, projected = time.monotonic(), (0.0, None)

    def measure() -> Progress:
        progress = Progress(running=runtime.running, elapsed=time.monotonic() - started)
        for key in episode.keys:
            state = controller.actions[key]
            progress.total[state.action.stage] += 1
            progress.done[state.action.stage] += state.status == "done"
            progress.growing |= state.action.stage == "script" and state.status != "done"
        return progress

    report(measure())  # before the first decision, which may wait for a local Ray to start
    engine.decide()
    while controller.batches[batch].status == "running":
        progress = measure()
        if stop():
            raise Interrupted(sum(progress.done.values()))
        if time.monotonic() - projected[0] >= 1.0:  # O(actions): once a second is plenty
            projected = (time.monotonic(), controller.projected_finish(batch, clock.now()))
        progress.eta = None if projected[1] is None else max(0.0, projected[1] - clock.now())
        if runtime.running:
            stuck_since = None
            report(progress)
            wake = _until(engine.next_wake(), clock)
            engine.step(timeout=DECIDE_EVERY_S if wake is None else min(wake, DECIDE_EVERY_S))
            continue
        wake = engine.next_wake()
        waiting = controller.queued()
        if wake is None and not waiting:
            seen = controller.last_seq
            engine.decide()  # what the last result calls for (an episode that fails its checks) comes first
            if controller.last_seq != seen:
                continue
            raise FarmError(f"{eid}: nothing runs and nothing can start: the plan is stuck")
        if wake is None:  # ready actions that no worker can take now
            stuck_since = stuck_since if stuck_since is not None else time.monotonic()
            progress.waiting = _needs(waiting)
            if time.monotonic() - stuck_since > resource_wait_s:
                raise FarmError(
                    f"{eid}: {len(waiting)} action(s) need {progress.waiting}, which no worker of "
                    f"this cluster has offered for {resource_wait_s:.0f} s: start one that has them, "
                    "or choose other backends"
                )
        report(progress)
        until = _until(wake, clock)
        time.sleep(min(0.5, until) if until is not None else 0.5)
        engine.decide()


def _until(when: float | None, clock: Clock) -> float | None:
    return None if when is None else max(0.0, when - clock.now())


def _needs(waiting: list[Any]) -> str:
    gpus = sorted({t.accelerator or "any" for t in waiting if t.gpus > 0})
    cpus = max((t.cpus for t in waiting if not t.gpus), default=0.0)
    parts = ([f"GPUs ({', '.join(gpus)})"] if gpus else []) + ([f"{cpus:g} CPUs at once"] if cpus else [])
    return " and ".join(parts) or "capacity"


def _local_copies(
    objects: Any,
    settings: Settings,
    paths: dict[str, str],
    final: ActionResult,
    series: str,
    slug: str,
    out_dir: Path | None,
) -> dict[str, Path]:
    """The deliverables as local files: in place in a local store, else downloaded to ``out_dir``."""
    if isinstance(objects, LocalStore):
        return {output: objects.path(name) for output, name in paths.items()}
    from farm.store import ArtifactStore

    store = ArtifactStore(objects, settings.studio)
    target = Path(out_dir or "farm-out") / settings.studio / series / slug
    target.mkdir(parents=True, exist_ok=True)
    return {output: store.get_blob(final.outputs[output], target / Path(name).name) for output, name in paths.items()}
