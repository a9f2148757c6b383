"""``farm report BATCH_OR_EPISODE``: one self-contained HTML file of what a batch or an episode did.

Everything comes from the store, nothing from a running farm:

* a batch id: the journal is replayed into a pure Controller (as the controller does when it
  starts); the batch's ``action.completed`` events carry each manifest (start, finish, worker,
  usage), ``action.failed`` / ``episode.failed`` the reasons, ``webhook.failed`` the notifications
  that were never delivered, and what the batch found already done is its cache saving;
* an episode YAML file: the journals of its ``farm render`` runs (each render is a batch of one,
  journaled in the studio's tree) are replayed in order, the same way: every completed action is
  a run, every cache hit a saving, every failed attempt a failure with its reason.

The picture (farm.observe._report_html): a Gantt chart of every attempt on its worker lane (a worker process
on a node; GPU lanes marked), spend by stage and studio, the slowest actions, failures with their
reasons (failed attempts, failed episodes, webhooks never delivered), cache savings, and every judged
shot's takes (farm.observe.review's data): verdict, score, the take used, what people said, and a
thumbnail of each take's evidence, read from the store and embedded. Inline SVG, CSS and data URIs
only: it opens offline.

Example::

    farm report acme-20261120-230000-1a2b3c4d --out nightly.html
    farm report examples/midnight-tea/ep001.yaml
"""

from __future__ import annotations

import base64
import io
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from farm.core.manifest import spend_of
from farm.errors import FarmError
from farm.observe.review import EpisodeReview, episode_review, latest_render, renders_of, replay
from farm.policy import Prices
from farm.settings import Settings, controller_for
from farm.store import open_objects
from farm.store.artifacts import ArtifactStore
from farm.store.base import ObjectStore
from farm.store.journal import StoreJournal, render_prefix
from workers.api import Usage

SPEND = ("cpu_seconds", "gpu_seconds", "tokens", "money")
MAX_THUMBS = 400  # thumbnails one report embeds at most (past that, it says how many it left out)
MAX_THUMB_BYTES = 20_000  # one embedded thumbnail's PNG at most
MAX_EVIDENCE_BYTES = 50_000_000  # evidence larger than this is not read to make a thumbnail
STRIP_BOX, THUMB_BOX = (240, 80), (160, 90)  # a wide strip of frames; anything else (a keyframe, a waveform)


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
class NotificationFailure:
    """A webhook its sender gave up on (after its retries), and not delivered since."""

    at: float
    kind: str  # what it told: episode.delivered, batch.finished, ...
    episode: str | None
    host: str | None  # the receiver's host only
    attempts: int
    error: str


@dataclass
class TakesData:
    """Every judged shot's takes (farm.observe.review's rows, per episode) and what the page shows
    beside them: a thumbnail of each take's evidence, or why there is none."""

    episodes: list[EpisodeReview] = field(default_factory=list)
    made_by: dict[str, str] = field(default_factory=dict)  # take key -> the backend that made it ("noop")
    thumbs: dict[str, str] = field(default_factory=dict)  # take key -> data:image/png;base64,...
    notes: dict[str, str] = field(default_factory=dict)  # take key -> why its evidence is not shown
    left_out: int = 0  # thumbnails past MAX_THUMBS


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
    notification_failures: list[NotificationFailure] = field(default_factory=list)
    budget: dict[str, tuple[float, float]] = field(default_factory=dict)  # cap -> (spent, cap)
    deadline: float | None = None
    submitted: float | None = None
    takes: TakesData = field(default_factory=TakesData)


def _amounts(usage: Usage, prices: Prices) -> dict[str, float]:
    spend = spend_of(usage, prices)
    cpu = usage.cpu_seconds if isinstance(usage.cpu_seconds, (int, float)) and usage.cpu_seconds > 0 else 0.0
    return {
        "cpu_seconds": float(cpu),
        "gpu_seconds": spend.gpu_seconds,
        "tokens": float(spend.tokens),
        "money": spend.money,
    }


def _add(table: dict, key, amounts: dict[str, float], count: bool = False) -> None:
    row = table.setdefault(key, dict.fromkeys(SPEND, 0.0) | ({"actions": 0.0} if count else {}))
    for k, v in amounts.items():
        row[k] += v
    if count:
        row["actions"] += 1


def _lane(worker: dict[str, Any]) -> str:
    """A GPU (per node) for work that held one, else a worker process."""
    where = f"{worker.get('host') or 'node'}/{str(worker.get('node') or '?')[:6]}"
    return f"{where} GPU {worker['gpus']}" if worker.get("gpus") else f"{where} pid {worker.get('pid') or '?'}"


def _bar(result: Any, episode: str) -> Bar:
    worker = result.worker
    return Bar(
        lane=_lane(worker),
        start=result.started_at,
        end=result.finished_at,
        stage=result.stage,
        label=result.label,
        episode=episode,
        key=result.key,
        gpu=bool(worker.get("gpus")),
    )


def _episode_of(state) -> str:
    ctx = state.action.context
    return f"{ctx.get('series', '?')}/{ctx.get('episode', '?')}"


def _runs(data: ReportData, controller: Any, events: list[Any], studio: str, prices: Prices) -> None:
    """Bars, spend, failures and savings from events (in journal order)."""
    dispatched: dict[str, float] = {}
    for e in events:
        state = controller.actions.get(e.key) if e.key else None
        if e.type == "action.dispatched":
            dispatched[e.key] = e.at
        elif e.type == "action.completed" and state is not None:
            data.bars.append(_bar(e.data, _episode_of(state)))
            _add(data.spend, (studio, state.action.stage), _amounts(e.data.usage, prices))
        elif e.type == "action.failed" and state is not None:
            worker = e.data.worker or "unknown node"
            lane = f"node {worker[:6]} failed attempts" if e.data.worker else "failed attempts (worker lost)"
            if e.data.interrupted:
                lane = "interrupted by a controller restart"
            data.bars.append(
                Bar(
                    lane=lane,
                    start=dispatched.get(e.key, e.at),
                    end=e.at,
                    stage=state.action.stage,
                    label=state.action.label,
                    episode=_episode_of(state),
                    key=e.key,
                    ok=False,
                    error=e.data.error,
                )
            )
            if e.data.interrupted:  # not a failure of the action's: shown as a bar only
                continue
            data.failures.append(
                Failure(
                    e.at,
                    _episode_of(state),
                    state.action.label,
                    state.action.stage,
                    worker,
                    e.data.attempt,
                    e.data.error,
                )
            )
        elif e.type == "episode.failed":
            data.episode_failures.append((e.data.episode, e.data.reason))
        elif e.type == "batch.failed":
            data.episode_failures.append(("(the whole batch)", e.data.reason))
    _notifications(data, events)


def _notifications(data: ReportData, events: list[Any]) -> None:
    """The webhooks whose last outcome is a failure (a restarted controller sends a failed one again)."""
    last: dict[str, Any] = {}
    for e in events:
        if e.type in ("webhook.delivered", "webhook.failed"):
            last.pop(e.data.id, None)
            last[e.data.id] = e
    for e in last.values():
        if e.type == "webhook.failed":
            d = e.data
            data.notification_failures.append(
                NotificationFailure(e.at, d.kind, d.episode, d.host, d.attempts, d.detail or "failed")
            )


def _evidence(controller: Any, judge_key: str) -> list[Any]:
    """The evidence blobs a judge action kept (not its verdict), in name order."""
    state = controller.actions.get(judge_key)
    if state is None or state.manifest is None:
        return []
    return [blob for name, blob in sorted(state.manifest.outputs.items()) if name.startswith("evidence")]


def thumbnail(artifacts: ArtifactStore, blob: Any, tmp: Path) -> str:
    """The image ``blob`` as a small PNG's data URI: a wide strip of frames within STRIP_BOX, anything
    else within THUMB_BOX, on white. Raises FarmError (missing or corrupt in the store), OSError or
    ValueError (not an image, too large)."""
    from PIL import Image

    if blob.size > MAX_EVIDENCE_BYTES:
        raise ValueError(f"it is {blob.size:,} bytes, too large to read for a thumbnail")
    path = artifacts.get_blob(blob, tmp / blob.digest)
    try:
        with Image.open(path) as img:
            img.thumbnail(STRIP_BOX if img.width >= 2 * img.height else THUMB_BOX)
            small = img.convert("RGBA")
    except Image.DecompressionBombError as exc:
        raise ValueError(str(exc)) from exc
    finally:
        path.unlink(missing_ok=True)
    flat = Image.new("RGBA", small.size, "white")
    flat.alpha_composite(small)
    out = io.BytesIO()
    for colours in (256, 32):  # a palette keeps a thumbnail small; fewer colours if it is still too big
        out = io.BytesIO()
        flat.convert("RGB").quantize(colours).save(out, "PNG", optimize=True)
        if out.tell() <= MAX_THUMB_BYTES:
            return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode("ascii")
    raise ValueError(f"its thumbnail is {out.tell():,} bytes, over the {MAX_THUMB_BYTES:,} a report embeds")


def _takes(data: ReportData, controller: Any, batch: str, eids: list[str], objects: ObjectStore, studio: str) -> None:
    """The takes of episodes ``eids`` as ``batch`` (a render or a batch) last planned them, each with a
    thumbnail of its judges' first evidence (MAX_THUMBS in all). A blob that cannot be read is a note
    in its take's cell, never a report that fails."""
    takes, artifacts = data.takes, ArtifactStore(objects, studio)
    made: dict[str, str] = {}  # blob digest -> its thumbnail: identical evidence is read once
    with tempfile.TemporaryDirectory(prefix="farm-report-") as tmp:
        for eid in (eid for eid in eids if (batch, eid) in controller.episodes):
            takes.episodes.append(episode_review(controller, batch, eid, objects, studio))
            for take in (t for judged in controller.episodes[(batch, eid)].takes for t in judged.takes):
                state = controller.actions.get(take.key)
                if state is not None:
                    takes.made_by[take.key] = state.action.backend
                blobs = [blob for key in take.judges for blob in _evidence(controller, key)]
                if not blobs:
                    continue
                if len(takes.thumbs) >= MAX_THUMBS:
                    takes.left_out += 1
                    takes.notes[take.key] = f"evidence not embedded (a report embeds {MAX_THUMBS} thumbnails)"
                    continue
                try:
                    if blobs[0].digest not in made:
                        made[blobs[0].digest] = thumbnail(artifacts, blobs[0], Path(tmp))
                    takes.thumbs[take.key] = made[blobs[0].digest]
                except (FarmError, OSError, ValueError) as exc:
                    takes.notes[take.key] = f"evidence unreadable: {exc}"


def from_batch(settings: Settings, batch_id: str) -> ReportData:
    """Replay the store's journal and gather what batch ``batch_id`` ran, spent, saved and failed.

    Raises FarmError when the journal knows no such batch.
    """
    prices = Prices(**settings.prices)
    objects = open_objects(settings.store_spec())
    journal = StoreJournal(objects)
    controller, events = replay(settings, [journal], lambda e: e.batch == batch_id)
    if batch_id in controller.archives:
        # compacted: the live journal keeps its summary; its archive (and its actions' events charged
        # to other batches) rebuild it
        controller = controller_for(settings)
        related = journal.events_of(batch_id, related=True)
        for event in related:
            controller.apply(event)
        events = [e for e in related if e.batch == batch_id]
    if batch_id not in controller.batches:
        known = ", ".join(sorted(controller.batches)[-5:]) or "none"
        raise FarmError(f"no batch {batch_id!r} in the journal of {settings.store} (latest: {known})")
    batch = controller.batches[batch_id]
    status = controller.batch_status(batch_id, batch.finished_at or (events[-1].at if events else 0.0))
    data = ReportData(
        title=f"Batch {batch_id}", kind="batch", deadline=batch.terms.deadline, submitted=batch.terms.submitted
    )
    _runs(data, controller, events, batch.terms.studio, prices)
    keys = {k for eid in batch.episodes for k in controller.episodes[(batch_id, eid)].keys}
    for key in sorted(keys):
        state = controller.actions[key]
        if state.status == "done" and state.manifest and (state.cached or state.charged_to != batch_id):
            _add(data.saved, state.action.stage, _amounts(state.manifest.usage, prices), count=True)
    eps = status["episodes"]
    data.facts = [
        ("studio", batch.terms.studio),
        ("name", batch.name or "—"),
        ("status", batch.status),
        ("priority", status["priority"]),
        ("episodes", f"{eps['delivered']} delivered, {eps['failed']} failed of {eps['total']}"),
    ]
    data.budget = {cap: (status["spent"][cap], limit) for cap, limit in status["budget"].items() if limit is not None}
    if batch.finished_at is not None:
        data.facts.append(("wall time", _duration(batch.finished_at - batch.terms.submitted)))
    if batch.held:
        data.facts.append(("held by budget", batch.held))
    notes = status["notifications"]
    if notes["sent"] or notes["failed"]:
        data.facts.append(("webhooks", f"{notes['sent']} delivered, {notes['failed']} failed"))
    _takes(data, controller, batch_id, list(batch.episodes), objects, batch.terms.studio)
    return data


def from_episode(settings: Settings, path: Path) -> ReportData:
    """Replay the journals of an episode's ``farm render`` runs and gather what they ran, spent,
    saved and failed. Raises UsageError when the store has no render of it."""
    from farm.loader import load_episode

    loaded = load_episode(path)
    objects, series, slug, renders = renders_of(settings, path)
    eid = f"{series}/{slug}"
    journals = [StoreJournal(objects, render_prefix(settings.studio, series, slug, r)) for r in renders]
    controller, events = replay(settings, journals, lambda e: True)
    prices = Prices(**settings.prices)
    data = ReportData(title=f"Episode {eid}", kind="episode")
    _runs(data, controller, events, settings.studio, prices)
    for e in events:
        if e.type == "action.cached" and e.key in controller.actions:
            _add(data.saved, controller.actions[e.key].action.stage, _amounts(e.data.usage, prices), count=True)
    latest = controller.episodes.get((renders[-1], eid))
    done = [k for k in (latest.keys if latest else []) if controller.actions[k].status == "done"]
    planned = len(latest.keys) if latest else 0
    finished = latest is not None and latest.status == "delivered"
    data.facts = [
        ("studio", settings.studio),
        ("series", loaded.series.title),
        ("title", loaded.episode.title),
        ("renders", str(len(renders))),
        (
            "actions",
            f"{len(done)} of {planned} planned are done" + ("" if finished else " (the episode is not finished)"),
        ),
    ]
    if finished and latest is not None and latest.final_key is not None:
        final = controller.actions[latest.final_key].manifest
        data.facts.append(("length", f"{float(final.meta.get('duration', 0.0)) if final else 0.0:.1f} s"))
    controller, render, eid, objects = latest_render(settings, path)
    _takes(data, controller, render, [eid], objects, settings.studio)
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
    if out is None:  # every series has an ep001: an episode's report is named by its series too
        if is_episode:
            from farm.loader import load_episode

            loaded = load_episode(path)
            target = f"{loaded.series.id}-{loaded.episode.slug}"
        out = Path(f"{re.sub(r'[^A-Za-z0-9._-]+', '-', target)}.report.html")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(data), encoding="utf-8")
    return out
