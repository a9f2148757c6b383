"""The batch controller: the engine (farm.core.engine) hosted in a Ray actor, with its API.

It runs as a named, detached Ray actor (``farm-controller`` in namespace ``farm``, see
farm.runtime.cluster) that Ray restarts when it dies. On start the engine replays the journal
and settles what the last incarnation left. A loop thread steps the engine; a second thread
delivers webhooks and hands each one's outcome back to the engine (``Engine.notified``: journaled as
``webhook.delivered`` or, after its retries, ``webhook.failed``). RPCs (submit, cancel, status, ...),
the loop and the webhook thread share one lock.
"""

from __future__ import annotations

import builtins
import hashlib
import json
import os
import queue
import threading
import time
from datetime import datetime, timezone
from typing import Annotated, Any, Literal

import structlog
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from farm.catalog import Catalog
from farm.core.engine import Engine
from farm.core.events import Submission
from farm.core.ports import Runtime
from farm.core.script import Slug
from farm.core.spec import BackendNames, BudgetSpec, Episode, Series, Webhook, check_episode
from farm.core.state import Notified, Notify
from farm.errors import UsageError
from farm.observe import logs
from farm.observe.accounting import Accounting
from farm.observe.metrics import Metrics, accelerator_label
from farm.policy import Prices
from farm.runtime.clock import SystemClock
from farm.runtime.ray_runtime import RayRuntime
from farm.service.artifacts import StoreArtifacts
from farm.service.webhooks import Notification, send
from farm.settings import Settings, controller_for, profiles_for
from farm.store import open_objects
from farm.store.journal import StoreJournal

log = structlog.get_logger("farm.controller")


def batch_payload(loaded_batch: Any, settings: Settings) -> dict[str, Any]:
    """What ``farm batch submit`` sends: the validated specs as values (the controller reads no user files)."""
    spec = loaded_batch.spec
    return {
        "studio": spec.studio,
        "name": spec.name,
        "priority": spec.priority,
        "namespace": spec.studio if settings.cache_namespace is None else settings.cache_namespace,
        "deadline": spec.deadline.timestamp() if spec.deadline else None,
        "budget": spec.budget.model_dump(),
        "webhook": spec.webhook.model_dump() if spec.webhook else None,
        "backends": dict(spec.backends),
        "episodes": [
            {"series": e.series.model_dump(mode="json"), "episode": e.episode.model_dump(mode="json")}
            for e in loaded_batch.episodes
        ],
    }


class _PayloadEpisode(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    series: Series
    episode: Episode


class _Payload(BaseModel):
    """What ``batch_payload`` sends, as the controller accepts it from any Ray client: ``studio`` and
    ``namespace`` are slugs (no '/', no leading '_': ``_farm`` is the farm's own tree in the store)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    studio: Slug
    namespace: Slug
    name: Annotated[str, StringConstraints(min_length=1, max_length=120)] | None = None
    priority: Literal["low", "normal", "high", "urgent"] = "normal"
    deadline: float | None = None
    budget: BudgetSpec = BudgetSpec()
    webhook: Webhook | None = None
    backends: BackendNames = Field(default_factory=dict)
    episodes: list[_PayloadEpisode] = Field(min_length=1)


def check_payload(payload: Any) -> None:
    """Raise UsageError naming each field of a raw batch payload that is not valid (checked before
    anything reads it: its studio and namespace become store paths and batch ids)."""
    if not isinstance(payload, dict):
        raise UsageError(f"the batch is not valid: the payload is a {type(payload).__name__}, not a mapping")
    try:
        _Payload.model_validate(payload)
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False, include_input=False):
            field = ".".join(str(part) for part in err["loc"]) or "payload"
            if err["loc"] and err["loc"][0] in ("studio", "namespace") and err["type"] == "string_pattern_mismatch":
                message = "must be a slug: lowercase letters, digits, '-' and '_', not starting with '_' (e.g. acme)"
            else:
                message = err["msg"]
            problems.append(f"{field}: {message}")
        raise UsageError("the batch is not valid: " + "; ".join(problems)) from None


def submission(payload: dict[str, Any], settings: Settings, catalog: Catalog) -> Submission:
    """A batch payload as the controller journals it: each episode's backends chosen (the batch's
    choice, else its series', else settings') and every spec checked again, since any Ray client
    may send one. Raises UsageError naming each problem."""
    check_payload(payload)
    namespace = settings.cache_namespaces.get(payload["studio"], payload["studio"])
    if payload["namespace"] != namespace:  # which cache a studio reads is the farm's to say, not a client's
        raise UsageError(
            f"the batch is not valid: namespace: studio {payload['studio']!r} uses the cache namespace "
            f"{namespace!r} (set on the controller: FARM_CACHE_NAMESPACES), not {payload['namespace']!r}: "
            "unset FARM_CACHE_NAMESPACE where you submit"
        )
    try:
        episodes = []
        for item in payload["episodes"]:
            chosen = catalog.choose_for(
                settings.backend_names(), item["series"].get("backends"), payload.get("backends")
            )
            episodes.append(dict(item, backends={stage: c.to_json() for stage, c in chosen.items()}))
        defaults = {s: c.to_json() for s, c in catalog.choose(settings.backend_names()).items()}
        sub = Submission.model_validate(dict(payload, episodes=episodes, backends=defaults))
    except ValidationError as exc:
        raise UsageError(f"the batch is not valid: {exc}") from exc
    except (KeyError, TypeError, AttributeError) as exc:
        raise UsageError(f"the batch is not valid: it has no {exc}") from exc
    problems = [
        f"{e.series.id}/{e.episode.slug}: {field}: {message}"
        for e in sub.episodes
        for field, message in check_episode(e.series, e.episode)
    ]
    if problems:
        raise UsageError("the batch is not valid: " + "; ".join(problems))
    return sub


def batch_id(studio: str, payload: Any, now: float, taken: Any) -> str:
    """``<studio>-<UTC time>-<digest of the payload>``, unique among ``taken``."""
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:8]
    stamp = datetime.fromtimestamp(now, timezone.utc).strftime("%Y%m%d-%H%M%S")
    base = candidate = f"{studio}-{stamp}-{digest}"
    n = 1
    while candidate in taken:
        n += 1
        candidate = f"{base}-{n}"
    return candidate


class ControllerService:
    """Owns every batch on the cluster. Thread-safe: RPCs and the scheduling loop share one lock."""

    def __init__(
        self,
        settings_json: dict[str, Any],
        *,
        start_loop: bool = True,
        runtime: Runtime | None = None,
        webhook_attempts: int = 5,
        webhook_backoff_s: float = 1.0,
    ):
        """``runtime``: where actions run (default: Ray, the cluster this process is on).
        ``webhook_attempts``, ``webhook_backoff_s``: how often a webhook is sent before it has failed,
        and the first wait between two tries (doubling after each)."""
        self.webhook_attempts, self.webhook_backoff_s = webhook_attempts, webhook_backoff_s
        self.settings = Settings.model_validate(settings_json)
        logs.configure(
            level=self.settings.log_level,
            json=True,
            secrets=[
                self.settings.s3_access_key.get_secret_value(),
                self.settings.s3_secret_key.get_secret_value(),
                *self.settings.catalog().secrets(),
            ],
        )
        self.spec = self.settings.store_spec()
        self.objects = open_objects(self.spec)
        self.catalog = self.settings.catalog()
        self.profiles = profiles_for(self.settings, self.catalog)
        self.controller = controller_for(self.settings, self.catalog)
        self.runtime = (
            runtime
            if runtime is not None
            else RayRuntime(
                self.spec,
                log_level=self.settings.log_level,
                catalog=self.catalog,
                cpu_ahead=self.settings.dispatch_ahead,
            )
        )
        self.metrics = Metrics(
            prices=Prices(**self.settings.prices),
            accelerators={k: accelerator_label(p) for k, p in self.profiles.items()},
        )
        self.engine = Engine(
            self.controller,
            StoreJournal(self.objects),
            self.runtime,
            SystemClock(),
            StoreArtifacts(self.objects),
            notify=self._notify,
            observe=Accounting(self.metrics, self.controller),
        )
        self.lock = threading.RLock()
        self._webhooks: queue.Queue[Notification] = queue.Queue()
        self._stop = threading.Event()
        self._wake = threading.Event()  # set when new work arrives, so an idle loop reacts at once
        self.started_at = time.time()
        if self.settings.metrics_port:
            self.metrics.serve(self.settings.metrics_port)
        self._gauges_at, self._gauges_every = 0.0, 1.0
        with self.lock:
            count = self.engine.recover()
        log.info("controller.replayed", events=count, batches=len(self.controller.batches))
        self._threads = []
        if start_loop:
            for target in (self._loop, self._webhook_loop):
                thread = threading.Thread(target=target, daemon=True, name=target.__name__)
                thread.start()
                self._threads.append(thread)

    # -- the loop ---------------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                finished = self.runtime.wait(timeout=0.05)
                with self.lock:
                    self.engine.advance(finished)
                    self._refresh_gauges()
                if not finished and self.runtime.running == 0:
                    self._wake.wait(0.05)
                    self._wake.clear()
            except Exception:  # keep scheduling; the error is in the log with its traceback
                log.exception("controller.loop_error")
                self._stop.wait(1.0)

    def _refresh_gauges(self) -> None:
        """The stage and batch gauges, every second, or less often when the batches are so big that
        working out their status (O(actions)) would take more than 5% of the loop's time."""
        now = time.time()
        if now - self._gauges_at < self._gauges_every:
            return
        self._gauges_at, started = now, time.perf_counter()
        queued: dict[str, int] = {}
        running: dict[str, int] = {}
        for task in self.controller.queued():
            queued[task.stage] = queued.get(task.stage, 0) + 1
        for state in self.controller.running():
            running[state.action.stage] = running.get(state.action.stage, 0) + 1
        self.metrics.stages(queued, running)
        for batch_id, batch in self.controller.batches.items():
            if batch.status == "running" or self.metrics.tracks(batch_id):  # a finished batch: drop its series once
                self.metrics.batch(self.controller.batch_status(batch_id, now))
        self._gauges_every = max(1.0, 20 * (time.perf_counter() - started))

    def _notify(self, command: Notify) -> None:
        hook = self.controller.batches[command.batch].webhook
        if not hook:
            return
        note_id = f"{command.batch}:{command.kind}:{command.payload.get('episode', '')}"
        if note_id in self.engine.sent:
            return
        # The secret stays in the controller's environment (a Kubernetes Secret, say), never in the journal.
        secret = os.environ.get(hook["secret_env"]) if hook.get("secret_env") else None
        logs.hide(secret)
        self._webhooks.put(
            Notification(note_id, hook["url"], secret, command.kind, {"batch": command.batch, **command.payload})
        )

    def _webhook_loop(self) -> None:
        while not self._stop.is_set():
            try:
                note = self._webhooks.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                self._send(note)
            except Exception:  # keep delivering the others; the error is in the log with its traceback
                log.exception("controller.webhook_error", batch=note.payload.get("batch"), kind=note.kind)

    def _send(self, note: Notification) -> None:
        """Send one notification (with its retries, outside the lock), then hand how it ended to the
        engine under the lock, as the loop hands it finished actions: a fact of its batch."""
        sent = send(
            note,
            attempts=self.webhook_attempts,
            base_delay_s=self.webhook_backoff_s,
            allow_link_local=self.settings.webhook_allow_link_local,
        )
        episode = note.payload.get("episode")
        outcome = Notified(
            batch=note.payload["batch"],
            id=note.id,
            kind=note.kind,
            ok=sent.ok,
            detail=sent.detail,
            episode=episode if isinstance(episode, str) else None,
            host=sent.host,
            attempts=sent.attempts,
        )
        with self.lock:
            self.engine.sent.add(note.id)  # this incarnation does not send it again (a restart retries a failure)
            self.engine.notified(outcome)

    # -- the API (Ray actor methods) ----------------------------------------------------------------
    def submit(self, payload: dict[str, Any]) -> str:
        """Record a batch durably and return its id (only after the journal holds it).
        Raises UsageError when the batch is not valid."""
        sub = submission(payload, self.settings, self.catalog)
        with self.lock:
            new_id = batch_id(sub.studio, payload, time.time(), self.controller.batches)
            self.engine.submit(new_id, sub)
        self._wake.set()
        return new_id

    def cancel(self, batch_id: str) -> dict[str, Any]:
        with self.lock:
            self._known(batch_id)
            self.engine.cancel(batch_id)
            return self.controller.batch_status(batch_id, time.time())

    def _known(self, batch_id: str) -> None:
        if batch_id not in self.controller.batches:
            raise KeyError(f"no batch {batch_id!r}; `farm batch list` shows the known ones")

    def status(self, batch_id: str) -> dict[str, Any]:
        with self.lock:
            self._known(batch_id)
            return self.controller.batch_status(batch_id, time.time())

    def list(self) -> list[dict[str, Any]]:
        with self.lock:
            now = time.time()
            return [self.controller.batch_status(b, now) for b in self.controller.batches]

    def events(self, batch_id: str) -> builtins.list[dict[str, Any]]:
        self._known(batch_id)
        return [e.model_dump(mode="json") for e in StoreJournal(self.objects).replay() if e.batch == batch_id]

    def ping(self) -> dict[str, Any]:
        return {
            "started_at": self.started_at,
            "pid": os.getpid(),
            "batches": len(self.controller.batches),
            "last_seq": self.controller.last_seq,
            "store": self.objects.describe(),
            "errors": self.controller.errors[-10:],
        }

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        for thread in self._threads:
            thread.join(timeout=5)
        self.metrics.close()
