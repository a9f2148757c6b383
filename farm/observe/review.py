"""``farm review``: every shot of an episode with its takes, their judges' scores and verdicts, the
evidence they kept, and what people said; and the reviews people record (approve, reject).

Everything is read from the store, as ``farm report`` reads it: an episode's latest ``farm render``
journal, or a batch's journal, replayed into a pure Controller; each take's judges' manifests give
the checks and evidence. A reject of a shot rejects the clip take its episode used, so the next
render or batch makes the shot's next take and re-renders only what reads it (its mux and the
episode's assembly); an approve of a shot approves each of its flagged takes (or its clip's), so an
episode held for review is published.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from farm.core.controller import Controller
from farm.core.events import ReviewData
from farm.core.takes import Takes
from farm.errors import UsageError
from farm.settings import Settings, controller_for
from farm.store import open_objects
from farm.store.artifacts import ArtifactStore
from farm.store.base import ObjectStore
from farm.store.journal import StoreJournal, render_prefix
from farm.store.local import LocalStore


@dataclass
class TakeRow:
    take: int
    key: str
    status: str  # the take's action: pending | running | done | quarantined
    verdict: str | None  # pass | fail | None (not judged yet, or nothing judges it)
    score: float | None
    used: bool
    checks: list[dict[str, Any]] = field(default_factory=list)  # every judge's named checks
    evidence: dict[str, str] = field(default_factory=dict)  # "<judge> <output>" -> where it is kept
    review: str | None = None  # approve | reject, by a person
    reason: str = ""


@dataclass
class JudgedRow:
    label: str  # "clip s01-02"
    op: str
    flagged: str | None
    takes: list[TakeRow]


@dataclass
class ShotRow:
    shot: str
    judged: list[JudgedRow]

    @property
    def flagged(self) -> bool:
        return any(j.flagged for j in self.judged)


@dataclass
class EpisodeReview:
    episode: str  # "<series>/<slug>"
    source: str  # the render or batch whose plan this is
    status: str
    reason: str | None
    shots: list[ShotRow]
    delivery: list[dict[str, Any]]  # the delivery checks of the assembled episode, when judged

    def shot(self, shot_id: str) -> ShotRow:
        found = next((s for s in self.shots if s.shot == shot_id), None)
        if found is None:
            known = ", ".join(s.shot for s in self.shots) or "none yet (render it first)"
            raise UsageError(f"{self.episode} has no shot {shot_id!r}; its shots are: {known}")
        return found

    def to_json(self) -> dict[str, Any]:
        return {
            "episode": self.episode,
            "source": self.source,
            "status": self.status,
            "reason": self.reason,
            "held_for_review": any(s.flagged for s in self.shots),
            "shots": [
                {"shot": s.shot, "flagged": s.flagged, "judged": [asdict(j) for j in s.judged]} for s in self.shots
            ],
            "delivery": self.delivery,
        }


def replay(settings: Settings, journals: list[StoreJournal], keep: Any) -> tuple[Controller, list[Any]]:
    """Replay ``journals`` in turn into one controller, as the controller does when it starts;
    return it and the events ``keep(event)`` selects (``farm report`` keeps a batch's or a render's)."""
    controller = controller_for(settings)
    kept = []
    for journal in journals:
        for event in journal.replay():
            controller.apply(event)
            if keep(event):
                kept.append(event)
    return controller, kept


def where(objects: ObjectStore, name: str) -> str:
    """Where a person finds a stored object: a file path in a local store, an s3:// URL otherwise."""
    if isinstance(objects, LocalStore):
        return str(Path(objects.describe()) / name)
    return f"{objects.describe().split(' at ')[0].rstrip('/')}/{name}"


def episode_review(controller: Controller, batch: str, eid: str, objects: ObjectStore, studio: str) -> EpisodeReview:
    """The review of episode ``eid`` as ``batch`` (a render or a batch) last planned it."""
    ep = controller.episodes[(batch, eid)]
    artifacts = ArtifactStore(objects, studio)
    shots: dict[str, ShotRow] = {}
    for takes in ep.takes:
        row = JudgedRow(
            takes.label, takes.op, takes.flagged, [_take(controller, t, takes, artifacts) for t in takes.takes]
        )
        shot = takes.shot or "-"
        shots.setdefault(shot, ShotRow(shot, [])).judged.append(row)
    delivery = [c for key in ep.final_judges for c in _checks(controller, key)]
    return EpisodeReview(eid, batch, ep.status, ep.reason, list(shots.values()), delivery)


def _checks(controller: Controller, judge_key: str) -> list[dict[str, Any]]:
    state = controller.actions.get(judge_key)
    if state is None or state.manifest is None:
        return []
    judge = state.action.backend
    return [dict(c, judge=judge) for c in state.manifest.meta.get("checks", [])]


def _take(controller: Controller, take: Any, takes: Takes, artifacts: ArtifactStore) -> TakeRow:
    state = controller.actions.get(take.key)
    row = TakeRow(
        take=take.number,
        key=take.key,
        status=state.status if state else "pending",
        verdict=None if take.verdict is None else ("pass" if take.verdict.passed else "fail"),
        score=None if take.verdict is None else round(take.verdict.score, 4),
        used=take.key == takes.chosen,
    )
    if take.review is not None:
        row.review, row.reason = ("approve" if take.review.approve else "reject"), take.review.reason
    for key in take.judges:
        row.checks += _checks(controller, key)
        judge = controller.actions.get(key)
        if judge is not None and judge.manifest is not None:
            for name, blob in judge.manifest.outputs.items():
                row.evidence[f"{judge.action.backend} {name}"] = where(
                    artifacts.objects, artifacts._blob_name(blob.digest)
                )
    return row


def reviews_for(
    review: EpisodeReview, shot_id: str, approve: bool, reason: str, at: float, by: str = ""
) -> list[ReviewData]:
    """The reviews ``approve``/reject of one shot records: a reject, of the clip take the episode used;
    an approve, of each flagged take of the shot (else of its clip's used take)."""
    shot = review.shot(shot_id)
    clip = next((j for j in shot.judged if j.op == "clip"), None)
    if approve:
        chosen = [j for j in shot.judged if j.flagged] or ([clip] if clip else [])
    else:
        chosen = [clip] if clip else []
    picked = [(j, next((t for t in j.takes if t.used), None)) for j in chosen]
    if not picked or any(t is None for _, t in picked):
        raise UsageError(
            f"{review.episode} shot {shot_id} has no judged clip take in use yet: render it first (or wait for its judges)"
        )
    return [
        ReviewData(
            episode=review.episode,
            shot=shot_id,
            key=t.key,
            verdict="approve" if approve else "reject",
            reason=reason,
            at=at,
            by=by,
        )
        for _, t in picked
        if t is not None
    ]


def renders_of(settings: Settings, path: Path) -> tuple[ObjectStore, str, str, list[str]]:
    """The store, the episode's series and slug, and the ids of its ``farm render`` runs, oldest first.
    Raises UsageError when the store has no render of it."""
    from farm.loader import load_episode

    loaded = load_episode(path)
    objects = open_objects(settings.store_spec())
    series, slug = loaded.series.id, loaded.episode.slug
    folder = render_prefix(settings.studio, series, slug)
    renders = sorted({name[len(folder) + 1 :].split("/", 1)[0] for name in objects.list(folder + "/")})
    if not renders:
        raise UsageError(
            f"{series}/{slug} has no `farm render` in {objects.describe()} for studio {settings.studio}: "
            "render it first (a batch's episodes are in `farm report BATCH_ID` and `farm review BATCH_ID`)"
        )
    return objects, series, slug, renders


def latest_render(settings: Settings, path: Path) -> tuple[Controller, str, str, ObjectStore]:
    """The controller replayed from an episode's latest ``farm render`` journal; the render's id, the
    episode id and the store. Raises UsageError when the store has no render of it."""
    objects, series, slug, renders = renders_of(settings, path)
    eid = f"{series}/{slug}"
    journal = StoreJournal(objects, render_prefix(settings.studio, series, slug, renders[-1]))
    controller, _ = replay(settings, [journal], lambda e: False)
    return controller, renders[-1], eid, objects


def of_episode(settings: Settings, path: Path) -> EpisodeReview:
    controller, render, eid, objects = latest_render(settings, path)
    return episode_review(controller, render, eid, objects, settings.studio)


def of_batch(settings: Settings, batch_id: str) -> list[EpisodeReview]:
    """Every episode of a batch, from the store's journal (its archive, once compacted)."""
    objects = open_objects(settings.store_spec())
    journal = StoreJournal(objects)
    controller, _ = replay(settings, [journal], lambda e: False)
    if batch_id in controller.archives:
        controller = controller_for(settings)
        for event in journal.events_of(batch_id, related=True):
            controller.apply(event)
    batch = controller.batches.get(batch_id)
    if batch is None:
        raise UsageError(f"no batch {batch_id!r} in the journal of {objects.describe()}")
    studio = batch.terms.studio
    return [episode_review(controller, batch_id, eid, objects, studio) for eid in batch.episodes]
