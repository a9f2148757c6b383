"""``farm report BATCH_OR_EPISODE``: one self-contained HTML file of what a batch or an episode did.

Everything comes from the store, nothing from a running farm:

* a batch id: the journal is replayed into a pure Controller (as the controller does when it
  starts); the batch's ``action.completed`` events carry each manifest (start, finish, worker,
  usage), ``action.failed`` / ``episode.failed`` the reasons, and what the batch found already done
  is its cache saving;
* an episode YAML file: the episode is planned with the facts its stored manifests carry (the
  script, the lines' lengths) until the plan stops growing; its manifests are the runs, and the
  journal, where there is one, adds cache hits and failures of those actions.

The picture (farm.observe._report_html): a Gantt chart of every attempt on its worker lane (a worker process
on a node; GPU lanes marked), spend by stage and studio, the slowest actions, failures with their
reasons, cache savings. Inline SVG and CSS only: it opens offline.

Example::

    farm report acme-20261120-230000-1a2b3c4d --out nightly.html
    farm report examples/midnight-tea/ep001.yaml
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from farm.core.controller import Controller
from farm.errors import FarmError
from farm.store.journal import Journal
from farm.core.plan import EpisodeJob, plan_episode
from farm.policy import Prices
from farm.core.script import Script
from farm.settings import Settings
from farm.store import ArtifactStore, open_objects

SPEND = ("cpu_seconds", "gpu_seconds", "tokens", "money")


@dataclass
class Bar:
    """One attempt of an action on a worker lane, in Unix seconds."""

    lane: str
    start: float
    end: float
    stage: str
    label: str
    episode: str
    key: str
    ok: bool = True
    gpu: bool = False
    error: str | None = None


@dataclass
class Failure:
    at: float
    episode: str
    label: str
    stage: str
    worker: str
    attempt: int
    reason: str


@dataclass
class ReportData:
    """What the HTML shows; built by ``from_batch`` or ``from_episode``."""

    title: str
    kind: str  # "batch" | "episode"
    facts: list[tuple[str, str]] = field(default_factory=list)
    bars: list[Bar] = field(default_factory=list)
    spend: dict[tuple[str, str], dict[str, float]] = field(default_factory=dict)  # (studio, stage) -> SPEND
    saved: dict[str, dict[str, float]] = field(default_factory=dict)  # stage -> SPEND + "actions"
    failures: list[Failure] = field(default_factory=list)
    episode_failures: list[tuple[str, str]] = field(default_factory=list)  # (episode, reason)
    budget: dict[str, tuple[float, float]] = field(default_factory=dict)  # cap -> (spent, cap)
    deadline: float | None = None
    submitted: float | None = None


def _amounts(usage: dict[str, Any], prices: Prices) -> dict[str, float]:
    tokens = float(usage.get("tokens_in", 0) or 0) + float(usage.get("tokens_out", 0) or 0)
    gpu = float(usage.get("gpu_seconds", 0.0) or 0.0)
    return {"cpu_seconds": float(usage.get("cpu_seconds", 0.0) or 0.0), "gpu_seconds": gpu, "tokens": tokens,
            "money": prices.money(tokens, gpu)}


def _add(table: dict, key, amounts: dict[str, float], count: bool = False) -> None:
    row = table.setdefault(key, {k: 0.0 for k in SPEND} | ({"actions": 0.0} if count else {}))
    for k, v in amounts.items():
        row[k] += v
    if count:
        row["actions"] += 1


def _lane(worker: dict[str, Any]) -> str:
    """A GPU (per node) for work that held one, else a worker process."""
    where = f"{worker.get('host') or 'node'}/{str(worker.get('node') or '?')[:6]}"
    return f"{where} GPU {worker['gpus']}" if worker.get("gpus") else f"{where} pid {worker.get('pid') or '?'}"


def _bar(manifest: dict[str, Any], episode: str) -> Bar:
    worker = manifest.get("worker", {})
    return Bar(lane=_lane(worker), start=manifest["started_at"], end=manifest["finished_at"],
               stage=manifest["stage"], label=manifest["label"], episode=episode, key=manifest["key"],
               gpu=bool(worker.get("gpus")))


def _episode_of(state) -> str:
    ctx = state.action.context
    return f"{ctx.get('series', '?')}/{ctx.get('episode', '?')}"


def from_batch(settings: Settings, batch_id: str) -> ReportData:
    """Replay the store's journal and gather what batch ``batch_id`` ran, spent, saved and failed.

    Raises FarmError when the journal knows no such batch.
    """
    from farm.service.host import estimator, profiles_for  # the controller's own view of costs and resources

    prices = Prices(**settings.prices)
    catalog = settings.catalog()
    controller = Controller(estimator(catalog), profiles_for(settings, catalog), prices=prices)
    events = []
    for event in Journal(open_objects(settings.store_spec())).replay():
        controller.apply(event)
        if event.batch == batch_id:
            events.append(event)
    if batch_id not in controller.batches:
        known = ", ".join(sorted(controller.batches)[-5:]) or "none"
        raise FarmError(f"no batch {batch_id!r} in the journal of {settings.store} (latest: {known})")
    batch = controller.batches[batch_id]
    status = controller.batch_status(batch_id, batch.finished_at or (events[-1].at if events else 0.0))
    data = ReportData(title=f"Batch {batch_id}", kind="batch", deadline=batch.terms.deadline,
                      submitted=batch.terms.submitted)
    dispatched: dict[str, float] = {}
    for e in events:
        state = controller.actions.get(e.key) if e.key else None
        if e.type == "action.dispatched":
            dispatched[e.key] = e.at
        elif e.type == "action.completed" and state is not None:
            data.bars.append(_bar(e.data, _episode_of(state)))
            _add(data.spend, (batch.terms.studio, state.action.stage), _amounts(e.data.get("usage", {}), prices))
        elif e.type == "action.failed" and state is not None:
            worker = e.data.get("worker") or "unknown node"
            lane = f"node {worker[:6]} failed attempts" if e.data.get("worker") else "failed attempts (worker lost)"
            data.bars.append(Bar(lane=lane, start=dispatched.get(e.key, e.at), end=e.at,
                                 stage=state.action.stage, label=state.action.label, episode=_episode_of(state),
                                 key=e.key, ok=False, error=e.data.get("error")))
            data.failures.append(Failure(e.at, _episode_of(state), state.action.label, state.action.stage, worker,
                                         int(e.data.get("attempt", 0)), str(e.data.get("error", ""))))
        elif e.type == "episode.failed":
            data.episode_failures.append((e.data["episode"], e.data["reason"]))
    keys = {k for eid in batch.episodes for k in controller.episodes[(batch_id, eid)].keys}
    for key in sorted(keys):
        state = controller.actions[key]
        if state.status == "done" and state.manifest and (state.cached or state.charged_to != batch_id):
            _add(data.saved, state.action.stage, _amounts(state.manifest.get("usage", {}), prices), count=True)
    eps = status["episodes"]
    data.facts = [("studio", batch.terms.studio), ("name", batch.name or "—"), ("status", batch.status),
                  ("priority", status["priority"]),
                  ("episodes", f"{eps['delivered']} delivered, {eps['failed']} failed of {eps['total']}")]
    data.budget = {cap: (status["spent"][cap], limit) for cap, limit in status["budget"].items() if limit is not None}
    if batch.finished_at is not None:
        data.facts.append(("wall time", _duration(batch.finished_at - batch.terms.submitted)))
    if batch.held:
        data.facts.append(("held by budget", batch.held))
    return data


def from_episode(settings: Settings, path: Path) -> ReportData:
    """Plan an episode with the facts in its stored manifests and gather its runs (no rendering)."""
    from farm.loader import load_episode

    loaded = load_episode(path)
    objects = open_objects(settings.store_spec())
    store = ArtifactStore(objects, settings.studio)
    job = EpisodeJob(settings.studio, settings.namespace, loaded.series, loaded.episode,
                     settings.catalog().choose_for(settings.backend_names(), loaded.series.backends))
    done, manifests = store.done_keys(), {}
    script, samples = None, {}
    while True:
        plan = plan_episode(job, script, samples)
        learned = False
        for action in plan.actions:
            if action.key in manifests or action.key not in done:
                continue
            manifest = manifests[action.key] = store.get_manifest(action.key)
            if action.op == "line":
                samples[action.key], learned = int(manifest.meta["samples"]), True
            elif action.op == "script":
                with tempfile.TemporaryDirectory(prefix="farm-report-") as tmp:
                    blob = store.get_blob(manifest.outputs["script"], Path(tmp, "script.json"))
                    script, learned = Script.model_validate_json(blob.read_text(encoding="utf-8")), True
        if not learned:
            break
    prices = Prices(**settings.prices)
    eid = f"{job.series.id}/{job.episode.slug}"
    data = ReportData(title=f"Episode {eid}", kind="episode")
    for m in manifests.values():
        data.bars.append(_bar(m.model_dump(mode="json"), eid))
        _add(data.spend, (settings.studio, m.stage), _amounts(m.usage.__dict__, prices))
    by_key = plan.by_key()
    for e in Journal(objects).replay():  # what the controller recorded about these actions, if it ran them
        if e.type == "episode.failed" and e.data.get("episode") == eid:
            data.episode_failures.append((eid, e.data["reason"]))
        action = by_key.get(e.key or "")
        if action is None:
            continue
        if e.type == "action.cached":
            _add(data.saved, action.stage, _amounts(e.data.get("usage", {}), prices), count=True)
        elif e.type == "action.failed":
            data.failures.append(Failure(e.at, eid, action.label, action.stage, e.data.get("worker") or "unknown node",
                                         int(e.data.get("attempt", 0)), str(e.data.get("error", ""))))
    finished = plan.final_key is not None and plan.final_key in manifests
    data.facts = [("studio", settings.studio), ("series", loaded.series.title), ("title", loaded.episode.title),
                  ("actions", f"{len(manifests)} of {len(plan.actions)} planned are done"
                              + ("" if finished else " (the episode is not finished)"))]
    if finished:
        data.facts.append(("length", f"{float(manifests[plan.final_key].meta.get('duration', 0.0)):.1f} s"))
    return data


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.1f} s"
    minutes, s = divmod(int(round(seconds)), 60)
    hours, m = divmod(minutes, 60)
    return f"{hours} h {m:02d} min" if hours else f"{m} min {s:02d} s"


def write_report(target: str, settings: Settings, out: Path | None = None) -> Path:
    """Write the report of ``target`` (a batch id, or an episode YAML path) to ``out``; return its path."""
    from farm.observe._report_html import render

    path = Path(target)
    is_episode = path.suffix in (".yaml", ".yml") or path.is_file()
    data = from_episode(settings, path) if is_episode else from_batch(settings, target)
    name = path.stem if is_episode else target
    out = out or Path(f"{re.sub(r'[^A-Za-z0-9._-]+', '-', name)}.report.html")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(data), encoding="utf-8")
    return out
