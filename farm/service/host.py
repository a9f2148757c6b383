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
import functools
import os
import queue
import threading
import time
from typing import Any

import structlog

from farm.core.engine import Engine, StoreDown
from farm.core.ports import Runtime
from farm.core.state import Notified, Notify
from farm.errors import FarmError, Fenced, UsageError
from farm.observe import logs
from farm.observe.accounting import Accounting
from farm.observe.metrics import Metrics, accelerator_label
from farm.policy import Prices
from farm.runtime.clock import SystemClock
from farm.runtime.ray_runtime import RayRuntime
from farm.service import submissions
from farm.service.artifacts import StoreArtifacts
from farm.service.health import StoreHealth
from farm.service.submissions import batch_payload, check_payload, submission  # noqa: F401 (the API)
from farm.service.tenants import Caller, NotAllowed, Tenants, check_idempotency_key
from farm.service.webhooks import Notification, send
from farm.settings import Settings, controller_for, profiles_for
from farm.store import open_objects
from farm.store.journal import StoreJournal
from farm.store.reviews import add_review, load_reviews
from farm.store.yields import add_yields, load_yields

log = structlog.get_logger("farm.controller")


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
        self.journal = StoreJournal(self.objects, writer=True)  # claims the next epoch before it replays
        self.engine = Engine(
            self.controller,
            self.journal,
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
        self.store = StoreHealth(self.metrics)
        self.fenced: str | None = None  # why this incarnation stopped: a newer one holds the journal
        self.reconcile_every_s = 30.0  # how often running actions are checked for a worker behind them
        self.compact_after_s = 600.0  # a batch finished this long ago is compacted into its archive
        self._compacting: threading.Thread | None = None
        self._outcomes: list[Notified] = []  # webhook outcomes not journaled yet (the store was down)
        with self.lock:
            count = self.engine.recover()
            self.controller.yields.load(load_yields(self.objects))  # (what replay counted is in the store's)
        log.info("controller.replayed", events=count, batches=len(self.controller.batches))
        self._threads = []
        if start_loop:
            for target in (self._loop, self._webhook_loop):
                thread = threading.Thread(target=target, daemon=True, name=target.__name__)
                thread.start()
                self._threads.append(thread)

    # -- the loop ---------------------------------------------------------------------------------
    def _loop(self) -> None:
        reconciled = time.monotonic()
        while not self._stop.is_set():
            try:
                # while the store is down the engine holds what comes back; keep taking it in
                finished = self.runtime.wait(timeout=0.05)
                with self.lock:
                    self._journal_outcomes()
                    self.engine.advance(finished)
                    if time.monotonic() - reconciled > self.reconcile_every_s:
                        reconciled = time.monotonic()
                        if settled := self.engine.reconcile():
                            log.warning("controller.reconciled", actions=settled)
                        self._maybe_compact()
                        self._save_yields()
                    self.store.ok(time.time())
                    self._refresh_gauges()
                if not finished and self.runtime.running == 0:
                    self._wake.wait(0.05)
                    self._wake.clear()
            except StoreDown as exc:  # kept by the engine: try again after a backoff
                self._stop.wait(self.store.failed(exc, time.time()))
            except Fenced as exc:  # a newer controller writes the journal now: this one must not act
                log.error("controller.fenced", error=str(exc))
                self.fenced = str(exc)
                return
            except Exception:  # keep scheduling; the error is in the log with its traceback
                log.exception("controller.loop_error")
                self._stop.wait(1.0)

    def _save_yields(self) -> None:
        """Under the lock: add what the judges said since the last save to the yields the store keeps."""
        new = self.controller.yields.new()
        if new:
            try:
                self.controller.yields.load(add_yields(self.objects, new))
            except FarmError as exc:  # a statistic: tried again at the next round
                log.warning("controller.yields_unsaved", error=str(exc))

    def _maybe_compact(self) -> None:
        """Under the lock: plan a compaction of batches finished over ``compact_after_s`` ago, and write
        it on a thread of its own (it is fenced like a write, and safe beside appends)."""
        if self._compacting is not None and self._compacting.is_alive():
            return
        journal = self.journal
        plan = journal.plan_compaction(self.controller, time.time(), older_than=self.compact_after_s)
        if plan is None:
            return

        def compact() -> None:
            try:
                log.info("controller.compacted", **journal.compact(plan))
            except Exception:  # the next round tries again; replay is correct either way
                log.exception("controller.compaction_failed")

        self._compacting = threading.Thread(target=compact, daemon=True, name="compaction")
        self._compacting.start()

    def _journal_outcomes(self) -> None:
        """Journal the webhook outcomes a store failure kept back (under the lock)."""
        while self._outcomes:
            self.engine.notified(self._outcomes[0])
            self._outcomes.pop(0)

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
        if hasattr(self.runtime, "slots"):  # the GPUs and the models they hold: idle time by model
            self.metrics.observe_residency(self.runtime.slots(), now)
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
        # The secret is the studio's, bound by the controller's settings (FARM_WEBHOOK_SECRETS), whatever a
        # journaled batch named; it stays in the controller's environment (a Secret), never in the journal.
        studio = self.controller.batches[command.batch].terms.studio
        variable = self.settings.webhook_secrets.get(studio)
        secret = os.environ.get(variable) if variable else None
        problem = None
        if variable and not secret:
            problem = f"the controller has no value for studio {studio!r}'s webhook secret (FARM_WEBHOOK_SECRETS)"
        logs.hide(secret)
        body = {"batch": command.batch, **command.payload}
        self._webhooks.put(Notification(note_id, hook["url"], secret, command.kind, body, problem=problem))

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
            try:
                self.engine.notified(outcome)
            except StoreDown:
                self._outcomes.append(outcome)  # the loop journals it once the store is back

    # -- the API (Ray actor methods) ----------------------------------------------------------------
    # Each takes the caller's ``token`` (farm.service.tenants): a studio sees and acts on its own batches
    # only, and another studio's batch is answered exactly as one that does not exist.
    @functools.cached_property
    def tenants(self) -> Tenants:
        return Tenants(self.objects, self.settings.admin_token.get_secret_value())

    def _caller(self, token: str | None) -> Caller:
        with self.lock:
            return self.tenants.resolve(token)

    def submit(self, payload: dict[str, Any], idempotency_key: str | None = None, *, token: str | None = None) -> str:
        """Record a batch durably and return its id (only after the journal holds it). With an
        ``idempotency_key`` its studio used before (journaled, so across restarts too), return that
        batch's id and record nothing. Raises UsageError when the batch is not valid, NotAllowed when
        the token may not submit for the batch's studio."""
        caller = self._caller(token)
        if idempotency_key is not None:
            check_idempotency_key(idempotency_key)
        if isinstance(payload, dict) and not caller.sees(str(payload.get("studio"))):
            raise NotAllowed(
                f"studio: this token is studio {caller.studio!r}'s, and a studio submits only its own batches: "
                f"set studio: {caller.studio} in the batch file, or use studio {payload.get('studio')!r}'s token"
            )
        sub = submission(payload, self.settings, self.catalog, functools.partial(load_reviews, self.objects))
        if idempotency_key is not None:
            sub = sub.model_copy(update={"idempotency_key": idempotency_key})
        with self.lock:
            if idempotency_key is not None and (sub.studio, idempotency_key) in self.controller.keyed:
                return self.controller.keyed[(sub.studio, idempotency_key)]  # journaled: known after a restart
            new_id = submissions.batch_id(sub.studio, payload, time.time(), self.controller.batches)
            self.engine.submit(new_id, sub)
        self._wake.set()
        return new_id

    def cancel(self, batch_id: str, *, token: str | None = None) -> dict[str, Any]:
        caller = self._caller(token)
        with self.lock:
            self._known(batch_id, caller)
            self.engine.cancel(batch_id)
            return self.controller.batch_status(batch_id, time.time())

    def review(
        self, batch_id: str, episode: str, shot: str, verdict: str, reason: str = "", *, token: str | None = None
    ) -> list[dict[str, Any]]:
        """A person's ``approve`` or ``reject`` of a shot of one of the batch's episodes: journaled (a running
        episode is planned again with it) and kept in the studio's store for its next submissions.
        Returns the reviews recorded. Raises UsageError naming the episodes or shots that exist."""
        from farm.observe.review import episode_review, reviews_for

        caller = self._caller(token)
        if verdict not in ("approve", "reject"):
            raise UsageError(f"a review is approve or reject, not {verdict!r}")
        with self.lock:
            self._known(batch_id, caller)
            batch = self.controller.batches[batch_id]
            if episode not in batch.episodes:
                raise UsageError(f"batch {batch_id} has no episode {episode!r}; it has: {', '.join(batch.episodes)}")
            view = episode_review(self.controller, batch_id, episode, self.objects, batch.terms.studio)
            by = caller.studio or "admin"
            reviews = reviews_for(view, shot, verdict == "approve", reason[:2000], time.time(), by)
            for item in reviews:
                add_review(self.objects, batch.terms.studio, episode.split("/")[0], item)
                self.engine.review(batch_id, item)
        self._wake.set()
        return [r.model_dump(mode="json") for r in reviews]

    def _known(self, batch_id: str, caller: Caller) -> None:
        batch = self.controller.batches.get(batch_id)
        if batch is None or not caller.sees(batch.terms.studio):  # another studio's: as if there were none
            raise KeyError(f"no batch {batch_id!r}; `farm batch list` shows the known ones")

    def status(self, batch_id: str, *, token: str | None = None) -> dict[str, Any]:
        caller = self._caller(token)
        with self.lock:
            self._known(batch_id, caller)
            return self.controller.batch_status(batch_id, time.time())

    def list(self, *, token: str | None = None) -> list[dict[str, Any]]:
        caller = self._caller(token)
        with self.lock:
            now = time.time()
            return [
                self.controller.batch_status(b, now)
                for b, batch in self.controller.batches.items()
                if caller.sees(batch.terms.studio)
            ]

    def events(self, batch_id: str, *, token: str | None = None) -> builtins.list[dict[str, Any]]:
        caller = self._caller(token)
        with self.lock:
            self._known(batch_id, caller)
            getattr(self.engine.journal, "flush", lambda: None)()  # what a grouping journal holds back is history too
        return [e.model_dump(mode="json") for e in StoreJournal(self.objects).events_of(batch_id)]

    def studio(self, action: str, name: str = "", *, token: str | None = None) -> Any:
        """Manage the studios' credentials (admin only): ``add`` NAME returns its new token (the store
        keeps only its hash), ``revoke`` NAME whether it had one, ``list`` the studios known."""
        self._caller(token).require_admin(f"`farm studio {action}`")
        with self.lock:
            if action == "add":
                answer: Any = self.tenants.add(name)
            elif action == "revoke":
                answer = self.tenants.revoke(name)
            else:
                return self.tenants.studios()
        log.info(f"studio.{action}", studio=name)
        return answer

    def ping(self, *, token: str | None = None) -> dict[str, Any]:
        caller = self._caller(token)
        if not caller.admin:  # a studio learns of its own batches only
            own = [b for b in self.controller.batches.values() if caller.sees(b.terms.studio)]
            return {"started_at": self.started_at, "batches": len(own), "store": self.objects.describe()}
        return {
            "started_at": self.started_at,
            "pid": os.getpid(),
            "batches": len(self.controller.batches),
            "last_seq": self.controller.last_seq,
            "store": self.objects.describe(),
            "store_health": self.store.describe(),
            "errors": self.controller.errors[-10:],
        }

    def stop(self, *, token: str | None = None) -> None:
        self._caller(token).require_admin("stopping the controller")
        self._stop.set()
        self._wake.set()
        for thread in self._threads:
            thread.join(timeout=5)
        with self.lock:
            self._save_yields()
        self.runtime.shutdown()  # its workers outlive a crash, not a stop
        self.metrics.close()
