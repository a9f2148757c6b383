"""Benchmarks of the batch controller, each against a baseline measured in the same run.

``farm bench controller``: plan a synthetic N-episode batch in the pure Controller (no Ray) and
report the planning time and the memory the controller holds for it.

``farm bench dispatch``: on a local Ray with declared GPUs, run the same action graph (no-op actions,
clips on GPU) once as bare Ray tasks chained by ObjectRefs and once through the farm's controller
service (journal, store, policies, GPU actor pools); report both throughputs, their ratio, and the
farm's ready-to-running latency (an action's last input finished -> its worker started it). Both
are measured warm: bare Ray after a first run has started its workers, the farm after a warm-up
batch (another studio's episodes, so nothing of it is reused) has started its GPU pools' actors and
its task workers have imported the farm.
"""

from __future__ import annotations

import gc
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from farm.core.controller import Controller
from farm.core.events import ActionCached, ActionCompleted, ActionResult, BatchSubmitted, Submission
from farm.core.manifest import Blob
from farm.core.plan import OUTPUTS, STAGES, plan_episode
from farm.core.spec import Episode, Series
from farm.policy import Capacity, Prices
from farm.store.journal import StoreJournal

_SERIES = {
    "id": "bench",
    "title": "Bench",
    "language": "en",
    "style": {"description": "flat", "palette": ["#101010", "#808080", "#f0f0f0"]},
    "resolution": {"width": 180, "height": 320},
    "fps": 12,
    "characters": [
        {
            "id": f"c{i}",
            "name": f"C{i}",
            "look": {"description": "d"},
            "voice": {"voice": "en-us", "pitch": 20 + 10 * i, "rate": 170},
        }
        for i in range(4)
    ],
}


def synthetic_episode(n: int, shots: int = 12) -> dict:
    """A hand-written script with ``shots`` shots, most with one line, all texts unique to episode n."""
    scenes = []
    for s in range(3):
        scene_shots = []
        for k in range(shots // 3):
            lines = [] if k == 0 else [{"speaker": f"c{(s + k) % 4}", "text": f"Episode {n}, scene {s}, line {k}."}]
            scene_shots.append(
                {
                    "id": f"s{s}-{k:02d}",
                    "description": f"Shot {k} of scene {s} in episode {n}",
                    "characters": [f"c{(s + k) % 4}"],
                    "duration": 1.0,
                    "lines": lines,
                }
            )
        scenes.append({"id": f"s{s}", "location": f"place {s}", "shots": scene_shots})
    return {
        "series": "s.yaml",
        "number": n,
        "title": f"Episode {n}",
        "script": {"title": f"Episode {n}", "language": "en", "scenes": scenes},
    }


def tiny_episode(n: int) -> dict:
    """One scene, one shot, one line: at most two actions are ever ready at once."""
    shot = {
        "id": "s0-00",
        "description": f"Tiny {n}",
        "characters": ["c0"],
        "duration": 0.5,
        "lines": [{"speaker": "c0", "text": f"Line {n}."}],
    }
    return {
        "series": "s.yaml",
        "number": n,
        "title": f"Tiny {n}",
        "script": {"title": f"Tiny {n}", "language": "en", "scenes": [{"id": "s0", "location": "l", "shots": [shot]}]},
    }


def synthetic_payload(
    episodes: int, backends: dict[str, list[str]], studio: str = "bench", make=synthetic_episode, first: int = 1
) -> dict:
    series = Series.model_validate(_SERIES).model_dump(mode="json")
    return {
        "studio": studio,
        "namespace": studio,
        "priority": "normal",
        "budget": {},
        "backends": backends,
        "name": f"bench-{episodes}",
        "episodes": [
            {"series": series, "episode": Episode.model_validate(make(n)).model_dump(mode="json")}
            for n in range(first, first + episodes)
        ],
    }


def _rss_mb() -> float:
    with open(f"/proc/{os.getpid()}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _result(action, digit: str, meta: dict | None = None) -> ActionResult:
    """A made-up result of ``action``: one-byte outputs, ``meta``."""
    return ActionResult(
        key=action.key,
        stage=action.stage,
        op=action.op,
        backend=action.backend,
        version=action.version,
        label=action.label,
        started_at=0.0,
        finished_at=0.0,
        outputs={o: Blob(digest=digit * 64, size=1, name=o) for o in OUTPUTS[action.op]},
        meta=meta or {},
    )


def bench_controller(episodes: int = 1000) -> dict:
    """Plan a whole batch in the pure controller: submission, then every line's length arriving."""
    backends = {s: ["noop", "1"] for s in STAGES}
    payload = synthetic_payload(episodes, backends)
    gc.collect()
    rss0 = _rss_mb()
    started = time.perf_counter()
    controller = Controller(lambda a: (1.0, 0, 0.0), {}, prices=Prices())
    seq = 0
    controller.apply(BatchSubmitted(seq=seq, at=0.0, batch="bench", data=Submission.model_validate(payload)))
    submitted = time.perf_counter() - started
    for key, state in list(controller.actions.items()):  # the lines' lengths arrive: clips, muxes, episodes appear
        if state.action.op == "line":
            seq += 1
            meta = {"samples": 9_600 + 480 * len(state.action.params["text"])}
            controller.apply(ActionCached(seq=seq, at=1.0, key=key, data=_result(state.action, "0", meta)))
    planned = time.perf_counter() - started
    ranks_started = time.perf_counter()
    controller.ranks()
    ranks = time.perf_counter() - ranks_started
    gc.collect()
    rss = _rss_mb() - rss0
    # decisions with the whole batch's keyframes waiting and 8 CPUs free:
    # the first orders every ready action, the later ones only what changed (one completion each)
    for key, state in list(controller.actions.items()):  # the sheets are done: every keyframe is ready
        if state.action.op == "sheet":
            seq += 1
            controller.apply(ActionCached(seq=seq, at=1.0, key=key, data=_result(state.action, "0")))
    capacity = Capacity(cpus=8, gpus_by_accelerator={})
    ready = len(controller.ready(2.0))
    first_started = time.perf_counter()
    decided = controller.decide(2.0, capacity)
    first = time.perf_counter() - first_started
    steady = []
    for event in decided[:20]:
        seq += 1
        controller.apply(event.model_copy(update={"seq": seq, "at": 2.0}))
        key = event.key
        seq += 1
        controller.apply(
            ActionCompleted(seq=seq, at=2.0, key=key, batch="bench", data=_result(controller.actions[key].action, "1"))
        )
        one_started = time.perf_counter()
        controller.decide(2.0, Capacity(cpus=1, gpus_by_accelerator={}))
        steady.append(time.perf_counter() - one_started)
    report: dict[str, Any] = {
        "episodes": episodes,
        "actions": len(controller.actions),
        "submit_seconds": round(submitted, 2),
        "plan_seconds": round(planned, 2),
        "rank_seconds": round(ranks, 2),
        "controller_mb": round(rss, 1),
        "ready": ready,
        "first_decision_ms": round(first * 1000, 1),
        "decision_ms": round(statistics.median(steady) * 1000, 3),
    }
    report["text"] = (
        f"farm bench controller: {episodes} episodes, {report['actions']} actions\n"
        f"  planned in {planned:.2f} s (submission {submitted:.2f} s, the rest as lines arrive); "
        f"critical-path ranks {ranks:.2f} s\n"
        f"  controller memory {rss:.0f} MB (resident, after planning)\n"
        f"  a decision with {ready} actions ready: {report['first_decision_ms']} ms the first time "
        f"(orders them all), then {report['decision_ms']} ms (median, after each completion)"
    )
    return report


def _bare_ray(actions, reuse_gpu_workers: bool) -> float:
    """The same graph as plain Ray tasks, each waiting on its inputs' ObjectRefs.

    Ray's default for GPU tasks is a fresh worker process per task (``max_calls=1``); with
    ``reuse_gpu_workers`` the baseline gets Ray at its fastest (``max_calls=0``).
    """
    import ray

    @ray.remote(num_cpus=1)
    def noop(*inputs):
        return 0

    gpu_options = {"num_cpus": 0, "num_gpus": 1} | ({"max_calls": 0} if reuse_gpu_workers else {})
    noop_gpu = ray.remote(**gpu_options)(lambda *inputs: 0)

    started = time.perf_counter()
    refs: dict[str, Any] = {}
    for a in actions:
        fn = noop_gpu if a.stage == "video" else noop
        refs[a.key] = fn.remote(*[refs[r.key] for r in a.inputs.values()])
    ray.get(list(refs.values()))
    return time.perf_counter() - started


def _full_graph(payload):
    from farm.core.plan import BackendChoice, EpisodeJob

    out, seen = [], set()
    backends = {s: BackendChoice.from_json(v) for s, v in payload["backends"].items()}
    for item in payload["episodes"]:
        job = EpisodeJob(
            payload["studio"],
            payload["namespace"],
            Series.model_validate(item["series"]),
            Episode.model_validate(item["episode"]),
            backends,
        )
        first = plan_episode(job, None, {})
        samples = {a.key: 9_600 + 480 * len(a.params["text"]) for a in first.actions if a.op == "line"}
        for a in plan_episode(job, None, samples).actions:
            if a.key not in seen:
                seen.add(a.key)
                out.append(a)
    return out


def bench_dispatch(
    episodes: int = 20, gpus: int = 4, latency_episodes: int = 20, dispatch_ahead: int | None = None
) -> dict:
    import ray

    from farm.service.host import ControllerService
    from farm.settings import Settings

    if ray.is_initialized():
        ray.shutdown()
    ray.init(
        address="local", num_cpus=os.cpu_count() or 2, num_gpus=gpus, include_dashboard=False, logging_level="ERROR"
    )
    try:
        backends = {s: ["noop", "1"] for s in STAGES}
        payload = synthetic_payload(episodes, backends)
        actions = _full_graph(payload)
        _bare_ray(actions[: min(100, len(actions))], True)  # start the workers both runs will use
        bare_default = _bare_ray(actions, False)
        bare = _bare_ray(actions, True)
        with tempfile.TemporaryDirectory(prefix="farm-bench-") as tmp:
            settings = Settings(
                store=str(Path(tmp) / "store"),
                metrics_port=0,
                stage_resources={
                    "video": {"num_gpus": 1, "num_cpus": 0},
                    **{st: {"num_cpus": 1} for st in STAGES if st != "video"},
                },
                **{f"backend_{s}": "noop" for s in STAGES},
                **({} if dispatch_ahead is None else {"dispatch_ahead": dispatch_ahead}),
            )
            service = ControllerService(settings.model_dump(mode="json"))
            try:
                # warm up as the bare runs were: the GPU pools' actors and the task workers start
                # and import the farm once, on other episodes than the measured ones
                _run(service, synthetic_payload(2, backends, studio="warm-up"), 0.1)
                farm = _run(service, payload, 0.1)
                # latency with capacity to spare: tiny one-shot episodes, one batch after another
                for n in range(latency_episodes):
                    tiny = synthetic_payload(1, backends, make=tiny_episode, first=9_000 + n)
                    _run(service, tiny, 0.005)
                events = list(StoreJournal(service.objects).replay())
                inputs = {k: [r.key for r in st.action.inputs.values()] for k, st in service.controller.actions.items()}
            finally:
                service.stop()
                service.runtime.shutdown()
    finally:
        ray.shutdown()
    # batches in submission order: the warm-up, the measured one, then the one-shot episodes
    submitted = [e.seq for e in events if e.type == "batch.submitted"]
    latency = _latencies([e for e in events if e.seq >= submitted[2]], inputs)
    queued = _latencies([e for e in events if submitted[1] <= e.seq < submitted[2]], inputs)
    ms = lambda xs, q: round((statistics.median(xs) if q == 50 else statistics.quantiles(xs, n=10)[-1]) * 1000, 1)  # noqa: E731
    report: dict[str, Any] = {
        "episodes": episodes,
        "gpus": gpus,
        "actions": len(actions),
        "dispatch_ahead": settings.dispatch_ahead,
        "bare_ray_default_actions_per_s": round(len(actions) / bare_default, 1),
        "bare_ray_actions_per_s": round(len(actions) / bare, 1),
        "farm_actions_per_s": round(len(actions) / farm, 1),
        "ratio": round(bare / farm, 3),
        "ready_to_running_ms": {"median": ms(latency["total"], 50), "p90": ms(latency["total"], 90)},
        "ready_to_dispatched_ms": {"median": ms(latency["controller"], 50), "p90": ms(latency["controller"], 90)},
        "dispatched_to_running_ms": {"median": ms(latency["ray"], 50), "p90": ms(latency["ray"], 90)},
        "throughput_run_ready_to_running_ms": {"median": ms(queued["total"], 50), "p90": ms(queued["total"], 90)},
    }
    report["text"] = (
        f"farm bench dispatch: {len(actions)} no-op actions ({episodes} episodes), {gpus} declared GPUs, "
        f"dispatch ahead {settings.dispatch_ahead} per CPU\n"
        f"  bare Ray, default GPU workers (max_calls=1) {report['bare_ray_default_actions_per_s']:8.1f} actions/s\n"
        f"  bare Ray, reused GPU workers (max_calls=0)  {report['bare_ray_actions_per_s']:8.1f} actions/s\n"
        f"  farm controller                             {report['farm_actions_per_s']:8.1f} actions/s"
        f"   = {report['ratio']:.2f} of the faster bare Ray\n"
        f"  ready -> running: median {report['ready_to_running_ms']['median']} ms, "
        f"p90 {report['ready_to_running_ms']['p90']} ms "
        f"(controller {report['ready_to_dispatched_ms']['median']} ms, "
        f"Ray {report['dispatched_to_running_ms']['median']} ms median), {latency_episodes} one-shot "
        f"episodes in turn, capacity to spare\n"
        f"  (in the throughput run, where ready actions queue for 2 CPUs: median "
        f"{report['throughput_run_ready_to_running_ms']['median']} ms)"
    )
    return report


def _run(service, payload: dict, poll_s: float) -> float:
    """Submit a batch and wait for it; its wall time. (A status call takes the controller's lock:
    the throughput run polls like a watcher would.)"""
    started = time.perf_counter()
    batch = service.submit({k: v for k, v in payload.items() if k != "backends"})
    while service.status(batch)["status"] == "running":
        time.sleep(poll_s)
    return time.perf_counter() - started


def _latencies(events: list, inputs: dict[str, list[str]]) -> dict[str, list[float]]:
    """Per action: ready (the controller journaled its last input's completion) -> dispatched
    (journaled) -> running (its worker started the backend)."""
    done_at: dict[str, float] = {}
    started: dict[str, float] = {}
    dispatched: dict[str, float] = {}
    submitted: dict[str, float] = {}  # batch -> when it was journaled: an action without inputs is ready then
    charged: dict[str, str] = {}
    for e in events:
        if e.type == "batch.submitted":
            submitted[e.batch] = e.at
        elif e.type == "action.completed":
            done_at[e.key] = e.at
            started[e.key] = e.data.started_at
        elif e.type == "action.dispatched":
            dispatched.setdefault(e.key, e.at)
            charged.setdefault(e.key, e.batch)
    out: dict[str, list[float]] = {"total": [], "controller": [], "ray": []}
    for key, start in started.items():
        ready = max([submitted[charged[key]]] + [done_at[k] for k in inputs[key] if k in done_at])
        out["total"].append(max(0.0, start - ready))
        out["controller"].append(max(0.0, dispatched[key] - ready))
        out["ray"].append(max(0.0, start - dispatched[key]))
    return out
