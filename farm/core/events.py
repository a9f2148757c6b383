"""The controller's events: one model per type, each with a typed payload, validated on replay.

An event is what the journal records and the controller applies (DESIGN.md, invariant 5). The
controller *proposes* events (``seq`` and ``at`` left unset); the journal numbers and time-stamps
them as it writes them, and gives them back in that order on replay::

    ActionDispatched(batch="b-1", key=k, data=Dispatched(label="clip s01-02", episode="s/ep001"))

``parse`` reads one journal line into its model. A line that does not validate (a newer or older
schema, a torn write) is not an exception on replay: it becomes ``Unreadable``, which the controller
judges against the batch it names (DESIGN.md, invariant 10).

Schema versions: 1 (the first journals: the same shapes, without ``batch.failed``); 2 (``webhook.*``
say only the notification's id, kind and detail); 3 (``webhook.*`` also name the episode, the
receiver's host and the attempts made); 4 (``batch.archived``, a finished batch's summary, which
the journal's compaction writes in place of the batch's events); 5 (this one: each submitted episode's
``judging`` and ``reviews``, ``review.recorded`` and ``take.declined``). Older lines read as this version's
models, the new fields unset (a batch from before judges judges nothing).
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from farm.core.manifest import Manifest
from farm.core.script import Script
from farm.core.spec import BudgetSpec, Episode, Series, Webhook

SCHEMA_VERSION = 5
READABLE_VERSIONS = (1, 2, 3, 4, 5)
MAX_REVIEWS = 2000  # reviews one submitted episode may carry


class _Data(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Empty(_Data):
    pass


class Reason(_Data):
    reason: str


class JudgingData(_Data):
    """Which judges run on which op (op -> [[name, version, {threshold: value}], ...]: the batch's choice,
    else its series', else settings'), how many takes an action may have, and whether an episode with a
    flagged shot fails."""

    judges: dict[str, list[list[Any]]] = Field(default_factory=dict)
    takes: int = Field(3, ge=1, le=10)
    strict: bool = False


class ReviewData(_Data):
    """A person's verdict on the take of a shot that was used: approve, or reject (make the next take)."""

    episode: str  # "<series>/<episode slug>"
    shot: str
    key: str = Field(pattern=r"^[0-9a-f]{64}$")  # the reviewed take's action key
    verdict: Literal["approve", "reject"]
    reason: str = Field("", max_length=2000)
    at: float = 0.0
    by: str = Field("", max_length=200)


class SubmittedEpisode(_Data):
    series: Series
    episode: Episode
    # stage -> [name, version, features]: the batch's choice, else its series', else settings'
    backends: dict[str, list[Any]] | None = None
    judging: JudgingData | None = None  # None: nothing is judged (schema 4 and older)
    reviews: list[ReviewData] = Field(default_factory=list, max_length=MAX_REVIEWS)  # the episode's, when submitted


class Submission(_Data):
    """A batch as the controller keeps it: validated specs as values (it reads no user files)."""

    studio: str
    namespace: str
    name: str | None = None
    priority: Literal["low", "normal", "high", "urgent"] = "normal"
    deadline: float | None = None
    budget: BudgetSpec = BudgetSpec()
    webhook: Webhook | None = None
    backends: dict[str, list[Any]] = Field(default_factory=dict)  # the settings' defaults, per stage
    episodes: list[SubmittedEpisode] = Field(min_length=1)
    # the client's name for this submission (``farm batch submit --idempotency-key``): a second
    # submission by the same studio with the same key is answered with the first one's batch
    idempotency_key: str | None = Field(default=None, max_length=200)


class Facts(_Data):
    """What a finished action adds to the plan beyond its manifest (the script a script action wrote)."""

    script: Script | None = None


class ActionResult(Manifest):
    """A finished action's manifest, and the facts its outputs carry."""

    facts: Facts | None = None


class Dispatched(_Data):
    label: str
    episode: str


class Failed(_Data):
    error: str
    retryable: bool
    worker: str | None = None
    attempt: int = 0
    # the farm itself stopped it (its controller restarted): not an attempt of the action's, it runs
    # again at once (schema 3; older lines: False)
    interrupted: bool = False


class RetryAt(_Data):
    not_before: float
    attempt: int = 0


class EpisodeFailed(_Data):
    episode: str
    reason: str


class Delivered(_Data):
    episode: str
    deliverables: dict[str, str]


class WebhookResult(_Data):
    """How a notification ended: delivered, or failed after every retry of its sender.

    Never the receiver's full URL (its path, query or userinfo may hold a token) nor the secret."""

    id: str  # "<batch>:<kind>:<episode>"
    kind: str  # what it told: episode.delivered | episode.failed | batch.finished | batch.failed
    detail: str = ""  # the receiver's last answer ("HTTP 200", "HTTP 500") or the last error
    episode: str | None = None  # the episode it was about, if one (schema 3)
    host: str | None = None  # the receiver's host[:port] only (schema 3)
    attempts: int = 0  # how many times it was sent (schema 3; 0: not recorded)


class Archive(_Data):
    """A finished batch as a restarted controller keeps it once the journal has compacted its events:
    when it was submitted and ended, and what ``farm batch status`` said of it when it was archived
    (the view ``Controller.batch_status`` returns; its events are in the batch's archive object)."""

    submitted: float
    finished_at: float | None = None
    status: dict[str, Any]
    idempotency_key: str | None = Field(default=None, max_length=200)  # its submission's, if it had one


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    v: int = SCHEMA_VERSION
    seq: int = -1  # set by the journal
    at: float = 0.0  # set by the journal
    batch: str | None = None
    key: str | None = None


class BatchSubmitted(_Event):
    type: Literal["batch.submitted"] = "batch.submitted"
    data: Submission


class BatchCancelled(_Event):
    type: Literal["batch.cancelled"] = "batch.cancelled"
    data: Empty = Empty()


class BatchFinished(_Event):
    type: Literal["batch.finished"] = "batch.finished"
    data: Empty = Empty()


class BatchFailed(_Event):
    """Applying an event of this batch raised: the batch stops with the reason, the others go on."""

    type: Literal["batch.failed"] = "batch.failed"
    data: Reason


class BudgetExhausted(_Event):
    type: Literal["budget.exhausted"] = "budget.exhausted"
    data: Reason


class ActionCached(_Event):
    type: Literal["action.cached"] = "action.cached"
    data: ActionResult


class ActionCompleted(_Event):
    type: Literal["action.completed"] = "action.completed"
    data: ActionResult


class ActionDispatched(_Event):
    type: Literal["action.dispatched"] = "action.dispatched"
    data: Dispatched


class ActionFailed(_Event):
    type: Literal["action.failed"] = "action.failed"
    data: Failed


class ActionRetry(_Event):
    type: Literal["action.retry"] = "action.retry"
    data: RetryAt


class ActionQuarantined(_Event):
    type: Literal["action.quarantined"] = "action.quarantined"
    data: Reason


class EpisodeDelivered(_Event):
    type: Literal["episode.delivered"] = "episode.delivered"
    data: Delivered


class EpisodeFailedEvent(_Event):
    type: Literal["episode.failed"] = "episode.failed"
    data: EpisodeFailed


class WebhookDelivered(_Event):
    type: Literal["webhook.delivered"] = "webhook.delivered"
    data: WebhookResult


class WebhookFailed(_Event):
    type: Literal["webhook.failed"] = "webhook.failed"
    data: WebhookResult


class BatchArchived(_Event):
    """A finished batch's summary, in place of its events (written by the journal's compaction only)."""

    type: Literal["batch.archived"] = "batch.archived"
    data: Archive


class ReviewRecorded(_Event):
    """A person approved or rejected the take of a shot an episode of this batch uses."""

    type: Literal["review.recorded"] = "review.recorded"
    data: ReviewData


class TakeDeclined(_Event):
    """The batch's budget would not pay for this take (``key``): the shot uses its best take so far."""

    type: Literal["take.declined"] = "take.declined"
    data: Reason


class Unreadable(_Event):
    """Not a journaled type: what replay yields for a line it cannot read. Never written."""

    type: Literal["journal.unreadable"] = "journal.unreadable"
    data: Reason


Event = Annotated[
    BatchSubmitted
    | BatchCancelled
    | BatchFinished
    | BatchFailed
    | BudgetExhausted
    | ActionCached
    | ActionCompleted
    | ActionDispatched
    | ActionFailed
    | ActionRetry
    | ActionQuarantined
    | EpisodeDelivered
    | EpisodeFailedEvent
    | WebhookDelivered
    | WebhookFailed
    | BatchArchived
    | ReviewRecorded
    | TakeDeclined,
    Field(discriminator="type"),
]

JournaledEvent = (
    BatchSubmitted,
    BatchCancelled,
    BatchFinished,
    BatchFailed,
    BudgetExhausted,
    ActionCached,
    ActionCompleted,
    ActionDispatched,
    ActionFailed,
    ActionRetry,
    ActionQuarantined,
    EpisodeDelivered,
    EpisodeFailedEvent,
    WebhookDelivered,
    WebhookFailed,
    BatchArchived,
    ReviewRecorded,
    TakeDeclined,
)
_ADAPTER: TypeAdapter[Any] = TypeAdapter(Event)


def parse(line: str | bytes) -> Event | Unreadable:
    """One journal line as its event model; ``Unreadable`` (with the reason) when it does not validate."""
    try:
        event: Event = _ADAPTER.validate_json(line)
    except ValidationError as exc:
        return _unreadable(line, f"{exc.error_count()} problem(s), first: {_first(exc)}")
    if event.v not in READABLE_VERSIONS:
        return _unreadable(line, f"schema version {event.v} (this farm reads {READABLE_VERSIONS})")
    return event


def dump(event: Event) -> str:
    """One journal line (no newline)."""
    return event.model_dump_json(exclude_none=False)


def _first(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err.get("loc", ()))
    return f"{where}: {err.get('msg', '')}"[:300]


def _unreadable(line: str | bytes, reason: str) -> Unreadable:
    """Keep what can be told of an unreadable line: its number, time, batch and key."""
    try:
        raw = json.loads(line)
    except ValueError:
        raw = {}
    raw = raw if isinstance(raw, dict) else {}

    def pick(name: str, kind: type, default: Any) -> Any:
        value = raw.get(name)
        return value if isinstance(value, kind) and not isinstance(value, bool) else default

    return Unreadable(
        seq=pick("seq", int, -1),
        at=float(pick("at", (int, float), 0.0)),  # type: ignore[arg-type]
        batch=pick("batch", str, None),
        key=pick("key", str, None),
        data=Reason(reason=f"journal event {pick('seq', int, '?')} ({pick('type', str, '?')}) is unreadable: {reason}"),
    )
