"""The values the controller works with: what a backend holds (``Profile``), the commands it gives
the engine, and its state per action, episode and batch (rebuilt from the journal on replay)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from farm.core.events import ActionResult
from farm.core.plan import Action, EpisodeJob, ScriptPlan
from farm.core.script import Script
from farm.core.takes import Review, Takes, Verdict
from farm.policy import BatchTerms, Spend
from farm.policy.residency import Placement


@dataclass(frozen=True)
class Profile:
    """What the scheduler knows of a backend before it runs: resources and cost estimates."""

    cpus: float = 1.0
    gpus: float = 0.0
    accelerator: str | None = None
    load_s: float = 0.0  # how long loading its model takes on a fresh worker (residency weighs swaps by it)
    memory_gb: float = 0.0  # GPU memory its model holds (0: unknown, a whole GPU)


Estimator = Callable[[Action], tuple[float, int, float]]  # -> (seconds, tokens, gpu_seconds)


# -- commands the engine carries out ---------------------------------------------------------------
@dataclass(frozen=True)
class Lookup:
    keys: tuple[str, ...]  # newly planned: is a manifest already in the store?


@dataclass(frozen=True)
class Dispatch:
    key: str
    batch: str
    placement: Placement | None = None  # its GPU, and whether its model is loaded there first (farm.core.placing)


@dataclass(frozen=True)
class Deliver:
    batch: str
    episode: str


@dataclass(frozen=True)
class Notify:
    batch: str
    kind: str  # episode.delivered | episode.failed | batch.finished | batch.failed
    payload: dict[str, Any]


@dataclass(frozen=True)
class Notified:
    """How carrying out a ``Notify`` ended, after every retry of the host's sender: what it hands back
    to the engine (``Engine.notified``), as a runtime hands back a finished action.

    ``host`` is the receiver's host[:port] alone and ``detail`` says nothing of its URL's path, query
    or userinfo, nor of the secret: the sender reduces them before they reach the journal."""

    batch: str
    id: str  # "<batch>:<kind>:<episode>"
    kind: str  # the Notify's kind
    ok: bool
    detail: str = ""  # the receiver's last answer, or the last error
    episode: str | None = None
    host: str | None = None
    attempts: int = 0


@dataclass(frozen=True)
class Cancel:
    keys: tuple[str, ...]


@dataclass(frozen=True)
class Fault:
    """Applying an event of ``batch`` raised: the batch has stopped; journal why (``batch.failed``)."""

    batch: str
    reason: str


Command = Lookup | Dispatch | Deliver | Notify | Cancel | Fault


# -- state -----------------------------------------------------------------------------------
@dataclass
class ActionState:
    action: Action
    episodes: set[tuple[str, str]] = field(default_factory=set)  # (batch, episode id) that need it
    status: str = "pending"  # pending | running | done | quarantined
    manifest: ActionResult | None = None
    cached: bool = False
    attempts: int = 0
    failed_workers: set[str] = field(default_factory=set)
    not_before: float = 0.0
    charged_to: str | None = None
    started_at: float | None = None  # when its latest attempt was dispatched (journal time)


@dataclass
class EpisodeState:
    id: str
    batch: str
    job: EpisodeJob
    script: Script | None = None
    fixed: ScriptPlan | None = None  # what its script fixes, planned once (plan.plan_script)
    line_samples: dict[str, int] = field(default_factory=dict)
    faces: dict[str, dict[str, Any]] = field(default_factory=dict)  # a keyframe's key -> where its faces are
    spoken: dict[str, list[dict[str, float]]] = field(default_factory=dict)  # a speech clip's key -> its line times
    keys: list[str] = field(default_factory=list)
    final_key: str | None = None
    status: str = "running"  # running | delivering | delivered | failed
    reason: str | None = None
    deliverables: dict[str, str] = field(default_factory=dict)
    # takes (farm.core.takes): people's reviews by the reviewed take's key, the takes its batch's budget
    # declined, the judge actions whose verdicts it has learned; and as last planned: every judged
    # action's takes, the judges of the assembled episode and what they said, the shots flagged for review
    reviews: dict[str, Review] = field(default_factory=dict)
    declined: set[str] = field(default_factory=set)
    judged: set[str] = field(default_factory=set)
    takes: list[Takes] = field(default_factory=list)
    final_judges: tuple[str, ...] = ()
    delivery: Verdict | None = None
    flagged: list[str] = field(default_factory=list)


@dataclass
class BatchState:
    terms: BatchTerms
    name: str | None
    episodes: list[str]
    webhook: dict[str, Any] | None
    status: str = "running"  # running | finished | cancelled | failed
    spent: Spend = field(default_factory=Spend)
    saved: Spend = field(default_factory=Spend)
    held: str | None = None
    finished_at: float | None = None
    reason: str | None = None  # why it failed (status "failed")
    failure_journaled: bool = False  # a batch.failed event says so (it may have failed while applying one)
    open: int = 0  # episodes neither delivered nor failed
    # notification id -> None once delivered, else why its last delivery failed (after its retries);
    # in the order of their latest outcome (a restarted controller sends a failed one again)
    notifications: dict[str, str | None] = field(default_factory=dict)
