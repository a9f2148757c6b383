"""The farm's metrics, accounted once, centrally (with farm.observe.exposition, the only modules that
import prometheus_client).

Usage is accounted where it is recorded (DESIGN.md, invariant 6): wherever the engine runs, it hands
each journaled event to ``Metrics.observe`` (through farm.observe.accounting). The batch controller
serves ``/metrics``; ``farm render`` pushes its registry to a Pushgateway (``push``) or writes it for
node_exporter's textfile collector (``write_textfile``). Workers never touch Prometheus.

Labels are bounded: studio, stage, backend, model, accelerator, outcome, verdict, direction, cap, state, and the
id of a batch while it runs (its series are removed when it ends). Never an episode or action id. The GPU
time metrics name a model "stage/backend" (``model_label``), as the residency names the models GPUs hold.

A judge (stage ``judge``) counts like any stage, plus a take per fresh verdict and its cost by judge. Yield is PromQL
over farm_takes_total, not a gauge: one process's ratio would forget restarts and other renders and have no window.

===================================================  =============================================
metric {labels}                                       meaning
===================================================  =============================================
farm_actions_total {studio,stage,outcome}             actions by outcome: ok, cached, failed, retried
farm_action_duration_seconds {stage}                  histogram of finished actions' wall time
farm_tokens_total {studio,stage,model,direction}      tokens used, direction in/out
farm_gpu_seconds_total {studio,stage,model,accelerator} GPU-seconds used
farm_gpu_time_seconds_total {state,accelerator,model}  GPU time by state: work (usage), load, idle (residency)
farm_model_loads_total {model,accelerator}            actions whose run loaded their model
farm_cpu_seconds_total {studio,stage}                 CPU-seconds used
farm_money_total {studio,stage,model}                 money at the price table (settings ``prices``)
farm_cache_hits_total {studio,stage}                  actions served from the store
farm_cache_saved_{gpu_seconds,tokens,cpu_seconds,money}_total {studio,stage}  what those hits saved
farm_episodes_total {studio,outcome}                  episodes delivered / failed
farm_delivered_video_seconds_total {studio}           seconds of finished video delivered
farm_takes_total {studio,stage,backend,verdict}       judged takes by verdict (pass, fail): the judged stage, backend
farm_judge_{cpu_seconds,gpu_seconds,tokens,money}_total {studio,backend}  what judging cost, by judge
farm_queue_depth {stage}, farm_running_actions {stage}  ready and running actions (controller)
farm_batch_progress_ratio {batch,studio}              finished episodes over the batch's episodes
farm_batch_projected_finish_timestamp_seconds, farm_batch_deadline_timestamp_seconds,
farm_batch_deadline_slack_seconds {batch,studio}      projected finish against the deadline
farm_batch_budget_used_ratio {batch,studio,cap}       spent over the cap, per capped dimension
farm_batch_held_for_review_episodes {batch,studio}    episodes with a shot whose every take failed
farm_controller_up                                    1 while the controller serves /metrics
farm_store_up, farm_store_errors_total                1 while the controller's store answers; its failed tries
farm_gpu_utilization_ratio, farm_gpu_memory_{used,total}_bytes {gpu,gpu_model}  NVML, where a GPU is
===================================================  =============================================
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping, Sequence
from contextlib import suppress
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily

from farm.core.manifest import spend_of
from farm.core.plan import STAGES
from farm.observe import exposition
from farm.observe.nvml import open_nvml
from farm.policy.residency import Gpu
from farm.policy.types import Prices, Spend
from workers.api import Usage

OUTCOMES = ("ok", "cached", "failed", "retried")
JUDGE, VERDICTS = "judge", ("pass", "fail")
STAGES_ = tuple(dict.fromkeys((*STAGES, JUDGE)))  # the plan's stages and the judge's, pre-declared alike
JUDGED = ("image", "video", "dubbing", "assembly")  # whose ops a judge judges: keyframe, clip, line, episode
JUDGE_SPEND = {"cpu_seconds": "CPU-seconds", "gpu_seconds": "GPU-seconds", "tokens": "Tokens", "money": "Money"}
CAPS = ("tokens", "gpu_seconds", "money")
_ACTION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


def accelerator_label(profile) -> str:
    """The accelerator label of a stage's profile: its named accelerator, "any" GPU, or "none"."""
    if profile is None or not getattr(profile, "gpus", 0):
        return "none"
    return getattr(profile, "accelerator", None) or "any"


def model_label(stage: str, backend: str) -> str:
    """The model label of the GPU time metrics: "stage/backend" (the residency's name for a model)."""
    return _label(f"{stage}/{backend}")


def _usage(usage: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(usage) and not isinstance(usage, type):
        return dataclasses.asdict(usage)
    return dict(usage or {})


def _spend(u: Mapping[str, Any], prices: Prices) -> Spend:
    fields = {f.name for f in dataclasses.fields(Usage)}
    return spend_of(Usage(**{k: v for k, v in u.items() if k in fields}), prices)


def _amount(usage: Mapping[str, Any], name: str) -> float:
    value = float(usage.get(name) or 0)
    return value if math.isfinite(value) and value > 0 else 0.0  # counters only go up


def _label(*values: Any) -> str:
    """The first value given (a usage's model, a backend's name), or "unknown"; never longer than 64."""
    return next((str(v) for v in values if v), "unknown")[:64]


class Metrics:
    """The farm's metrics in one registry.

    Args:
        registry: where to register (default: a fresh one; never prometheus_client's global).
        prices: the price table money is computed from.
        accelerators: (stage, backend) -> accelerator label (``accelerator_label`` of its profile).
        controller: export ``farm_controller_up`` (the controller; not a one-shot render).
        nvml: export GPU gauges when NVML and a GPU are present.
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        prices: Prices = Prices(),
        accelerators: Mapping[tuple[str, str], str] | None = None,
        controller: bool = True,
        nvml: bool = True,
    ):
        # *_created series double the series count and nothing reads them (a process-wide switch; this
        # module and its exposition are the only users of prometheus_client in the farm)
        disable_created_metrics()
        self.registry = registry or CollectorRegistry()
        self.prices, self.accelerators = prices, dict(accelerators or {})
        r = self.registry
        ss = ["studio", "stage"]
        self.actions = Counter(
            "farm_actions",
            "Actions by outcome: ok (ran), cached (found in the store), "
            "failed (an attempt failed), retried (scheduled again).",
            ss + ["outcome"],
            registry=r,
        )
        self.duration = Histogram(
            "farm_action_duration_seconds",
            "Wall time of actions that ran to completion.",
            ["stage"],
            buckets=_ACTION_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "farm_tokens",
            "Model tokens used, by direction (in: prompt, out: completion).",
            ss + ["model", "direction"],
            registry=r,
        )
        self.gpu_seconds = Counter(
            "farm_gpu_seconds",
            "GPU-seconds used, as reported by the backends.",
            ss + ["model", "accelerator"],
            registry=r,
        )
        self.cpu_seconds = Counter("farm_cpu_seconds", "CPU-seconds used, as reported by the backends.", ss, registry=r)
        self.money = Counter(
            "farm_money",
            "Money spent on tokens and GPU time at the price table (FARM_PRICES), in its currency.",
            ss + ["model"],
            registry=r,
        )
        self.cache_hits = Counter(
            "farm_cache_hits", "Actions served from the store instead of running.", ss, registry=r
        )
        self.saved_gpu = Counter("farm_cache_saved_gpu_seconds", "GPU-seconds the cache saved.", ss, registry=r)
        self.saved_tokens = Counter("farm_cache_saved_tokens", "Tokens the cache saved.", ss, registry=r)
        self.saved_cpu = Counter("farm_cache_saved_cpu_seconds", "CPU-seconds the cache saved.", ss, registry=r)
        self.saved_money = Counter(
            "farm_cache_saved_money", "Money the cache saved, at the price table.", ss, registry=r
        )
        self.episodes = Counter(
            "farm_episodes", "Episodes finished, by outcome (delivered, failed).", ["studio", "outcome"], registry=r
        )
        self.video_seconds = Counter(
            "farm_delivered_video_seconds", "Seconds of finished video delivered.", ["studio"], registry=r
        )
        self.takes = Counter(  # stage and backend: the judged action's
            "farm_takes", "Judged takes by verdict (pass, fail).", ss + ["backend", "verdict"], registry=r
        )
        self.judge_spend = {  # money at the price table, as farm_money_total
            k: Counter(f"farm_judge_{k}", f"{what} the judges used, by judge.", ["studio", "backend"], registry=r)
            for k, what in JUDGE_SPEND.items()
        }
        self.gpu_time = Counter(  # work and load from actions' usage, idle from residency snapshots
            "farm_gpu_time_seconds",
            "GPU-seconds by state: work (the models' own, as the backends report), load (loading a model, "
            "times the GPUs that waited for it), idle (a GPU that ran no action, by the model it held or none).",
            ["state", "accelerator", "model"],
            registry=r,
        )
        self.loads = Counter(
            "farm_model_loads", "Actions whose run loaded their model.", ["model", "accelerator"], registry=r
        )
        self._slots: dict[str, tuple[float, str, tuple[str, ...], bool]] = {}  # GPU id -> its last snapshot
        self.queue = Gauge(
            "farm_queue_depth", "Actions ready to run and waiting for capacity, by stage.", ["stage"], registry=r
        )
        self.running = Gauge("farm_running_actions", "Actions running now, by stage.", ["stage"], registry=r)
        bs = ["batch", "studio"]
        self.progress = Gauge(
            "farm_batch_progress_ratio",
            "Finished (delivered or failed) episodes over the episodes of a running batch.",
            bs,
            registry=r,
        )
        self.projected = Gauge(
            "farm_batch_projected_finish_timestamp_seconds",
            "When a running batch is projected to finish (now plus the work left over the lanes it holds, "
            "or its remaining critical path if longer; estimates corrected by what actions took), Unix time.",
            bs,
            registry=r,
        )
        self.deadline = Gauge(
            "farm_batch_deadline_timestamp_seconds", "A running batch's deadline, Unix time.", bs, registry=r
        )
        self.slack = Gauge(
            "farm_batch_deadline_slack_seconds",
            "Deadline minus projected finish of a running batch (negative: projected to miss it).",
            bs,
            registry=r,
        )
        self.budget_used = Gauge(
            "farm_batch_budget_used_ratio",
            "Spent over the budget cap of a running batch, per capped dimension (tokens, gpu_seconds, money).",
            bs + ["cap"],
            registry=r,
        )
        self.held = Gauge(  # an episode with a shot whose every take failed, delivered or not
            "farm_batch_held_for_review_episodes", "Episodes of a running batch held for review.", bs, registry=r
        )
        self._batches: dict[str, str] = {}  # batch -> studio, for the batches whose series exist
        self._server: Any = None
        for stage in STAGES_:
            self.duration.labels(stage)
        if controller:
            self.up = Gauge(
                "farm_controller_up", "1 while the farm controller runs and serves these metrics.", registry=r
            )
            self.up.set(1)
            self.store_up = Gauge(
                "farm_store_up", "1 while the controller's journal and store answer, 0 while it retries.", registry=r
            )
            self.store_up.set(1)
            self.store_errors = Counter(
                "farm_store_errors",
                "Tries of the controller's journal or store that failed because the store was unavailable.",
                registry=r,
            )
        reader = open_nvml() if nvml else None
        if reader is not None:
            r.register(_GpuCollector(reader))

    # -- accounting ------------------------------------------------------------------------------
    def prepare(self, studio: str, backends: Mapping[str, str]) -> None:
        """Create a studio's series at zero (stage -> backend name as the model), so that its first
        failure, delivery, take or spend shows in ``rate()`` and ``increase()``."""
        for stage in STAGES_:
            model = backends.get(stage, "unknown")
            for outcome in OUTCOMES:
                self.actions.labels(studio, stage, outcome)
            for direction in ("in", "out"):
                self.tokens.labels(studio, stage, model, direction)
            self.gpu_seconds.labels(studio, stage, model, self.accelerators.get((stage, model), "none"))
            self.money.labels(studio, stage, model)
            saved = (self.saved_gpu, self.saved_tokens, self.saved_cpu, self.saved_money)
            for counter in (self.cpu_seconds, self.cache_hits, *saved):
                counter.labels(studio, stage)
        for stage, backend in backends.items():
            model, accelerator = model_label(stage, backend), self.accelerators.get((stage, backend), "none")
            for state in ("work", "load"):  # idle: once residency shows the GPU (observe_residency)
                self.gpu_time.labels(state, accelerator, model)
            self.loads.labels(model, accelerator)
        for stage, verdict in ((s, v) for s in JUDGED if s in backends for v in VERDICTS):
            self.takes.labels(studio, stage, _label(backends[stage]), verdict)
        for counter in self.judge_spend.values() if JUDGE in backends else ():
            counter.labels(studio, _label(backends[JUDGE]))
        for outcome in ("delivered", "failed"):
            self.episodes.labels(studio, outcome)
        self.video_seconds.labels(studio)

    def completed(
        self, studio: str, stage: str, backend: str, usage: Any, seconds: float, worker: Mapping[str, str] | None = None
    ) -> None:
        """An action ran to completion with ``usage`` (a Usage or its JSON) in ``seconds`` of wall time,
        on ``worker`` (the manifest's: the GPUs it held, their accelerator kind)."""
        u = _usage(usage)
        model = _label(u.get("model"), backend)
        tokens_in, tokens_out = _amount(u, "tokens_in"), _amount(u, "tokens_out")
        gpu = _amount(u, "gpu_seconds")
        self.actions.labels(studio, stage, "ok").inc()
        self.duration.labels(stage).observe(max(0.0, seconds))
        self.tokens.labels(studio, stage, model, "in").inc(tokens_in)
        self.tokens.labels(studio, stage, model, "out").inc(tokens_out)
        self.gpu_seconds.labels(studio, stage, model, self.accelerators.get((stage, backend), "none")).inc(gpu)
        self.cpu_seconds.labels(studio, stage).inc(_amount(u, "cpu_seconds"))
        money = _spend(u, self.prices).money
        self.money.labels(studio, stage, model).inc(money)
        spent = {"cpu_seconds": _amount(u, "cpu_seconds"), "gpu_seconds": gpu, "tokens": tokens_in + tokens_out}
        for k, amount in (spent | {"money": money}).items() if stage == JUDGE else ():
            self.judge_spend[k].labels(studio, _label(backend)).inc(amount)
        self._gpu_time(stage, backend, gpu, _amount(u, "load_seconds"), worker or {})

    def _gpu_time(self, stage: str, backend: str, work: float, load: float, worker: Mapping[str, str]) -> None:
        """An action's work and load GPU-seconds, on the accelerator it ran on (the worker's kind, else its
        profile's); a load holds every GPU the worker held (none where it held none and needs none)."""
        accelerator = _label(worker.get("accelerator"), self.accelerators.get((stage, backend), "none"))
        model = model_label(stage, backend)
        gpus = len(worker["gpus"].split(",")) if worker.get("gpus") else int(accelerator != "none")
        self.gpu_time.labels("work", accelerator, model).inc(work)
        self.gpu_time.labels("load", accelerator, model).inc(load * gpus)
        if load > 0:
            self.loads.labels(model, accelerator).inc()

    def observe_residency(self, slots: Sequence[Gpu], now: float) -> None:
        """A snapshot of the GPUs (farm.policy.residency) at ``now`` (seconds, one clock for every call):
        each GPU idle at the previous snapshot (running no action) adds the seconds since to
        idle{accelerator, model it held}, shared between the models it held, or model "none". A GPU
        seen for the first time starts counting; one no longer in the snapshot is forgotten."""
        seen: dict[str, tuple[float, str, tuple[str, ...], bool]] = {}
        for gpu in slots:
            at, accelerator, held, busy = self._slots.get(gpu.id, (now, "", (), True))
            if not busy and now > at:
                for model in held or ("none",):
                    self.gpu_time.labels("idle", accelerator, _label(model)).inc((now - at) / max(1, len(held)))
            accelerator, held = _label(gpu.accelerator, "any"), tuple(gpu.resident)
            for model in held or ("none",):  # at zero from the first sight, for rate()
                self.gpu_time.labels("idle", accelerator, _label(model))
            seen[gpu.id] = (now, accelerator, held, gpu.busy())
        self._slots = seen

    def cached(self, studio: str, stage: str, usage: Any) -> None:
        """An action was found done; ``usage`` is what its original run cost, which is what it saved."""
        u = _usage(usage)
        tokens, gpu = _amount(u, "tokens_in") + _amount(u, "tokens_out"), _amount(u, "gpu_seconds")
        self.actions.labels(studio, stage, "cached").inc()
        self.cache_hits.labels(studio, stage).inc()
        self.saved_gpu.labels(studio, stage).inc(gpu)
        self.saved_tokens.labels(studio, stage).inc(tokens)
        self.saved_cpu.labels(studio, stage).inc(_amount(u, "cpu_seconds"))
        self.saved_money.labels(studio, stage).inc(_spend(u, self.prices).money)

    def failed(self, studio: str, stage: str) -> None:
        self.actions.labels(studio, stage, "failed").inc()

    def retried(self, studio: str, stage: str) -> None:
        self.actions.labels(studio, stage, "retried").inc()

    def episode(self, studio: str, outcome: str, video_seconds: float = 0.0) -> None:
        """An episode was delivered (with its length in seconds) or failed."""
        self.episodes.labels(studio, outcome).inc()
        if outcome == "delivered":
            self.video_seconds.labels(studio).inc(max(0.0, video_seconds))

    def observe(self, event: Any, action: Any = None) -> None:
        """Account one journaled event (farm.core.events); ``action`` is the Action it concerns, if any."""
        data = event.data
        if event.type == "batch.submitted":
            self.prepare(data.studio, {s: b[0] for s, b in data.backends.items()})
            return
        if action is None:
            return
        studio, stage = action.context.get("studio", ""), action.stage
        if event.type == "action.completed":
            self.completed(studio, stage, action.backend, data.usage, data.finished_at - data.started_at, data.worker)
            verdict, target = data.meta.get("verdict"), action.params.get("target") or {}
            if stage == JUDGE and verdict in VERDICTS:  # a take per fresh verdict: a cached one is no new take
                self.takes.labels(studio, _label(target.get("stage")), _label(target.get("backend")), verdict).inc()
        elif event.type == "action.cached":
            self.cached(studio, stage, data.usage)
        elif event.type == "action.failed" and not data.interrupted:  # the farm's own stop is no failure
            self.failed(studio, stage)
        elif event.type == "action.retry":
            self.retried(studio, stage)

    # -- gauges the controller refreshes -----------------------------------------------------------
    def stages(self, queued: Mapping[str, int], running: Mapping[str, int]) -> None:
        for stage in set(queued) | set(running) | set(STAGES_):
            self.queue.labels(stage).set(queued.get(stage, 0))
            self.running.labels(stage).set(running.get(stage, 0))

    def tracks(self, batch: str) -> bool:
        """Whether a batch's series exist (it ran since this process started and has not been dropped)."""
        return batch in self._batches

    def batch(self, status: Mapping[str, Any]) -> None:
        """Per-batch gauges from a controller ``batch_status``; removed once the batch is over."""
        batch, studio = status["batch"], status["studio"]
        if status["status"] != "running":
            self._drop(batch)
            return
        self._batches[batch] = studio
        eps = status["episodes"]
        self.progress.labels(batch, studio).set((eps["delivered"] + eps["failed"]) / max(1, eps["total"]))
        self.held.labels(batch, studio).set(status.get("held_for_review", 0))
        projected, deadline = status.get("projected_finish"), status.get("deadline")
        if projected is not None:
            self.projected.labels(batch, studio).set(projected)
        if deadline is not None:
            self.deadline.labels(batch, studio).set(deadline)
            if projected is not None:
                self.slack.labels(batch, studio).set(deadline - projected)
        for cap in CAPS:
            limit = status["budget"].get(cap)
            if limit is None:
                continue
            spent = float(status["spent"].get(cap, 0))
            ratio = spent / limit if limit > 0 else (math.inf if spent > 0 else 0.0)
            self.budget_used.labels(batch, studio, cap).set(ratio)

    def _drop(self, batch: str) -> None:
        studio = self._batches.pop(batch, None)
        if studio is None:
            return
        gauges = (self.progress, self.projected, self.deadline, self.slack, self.held)
        series: list[tuple[Gauge, tuple[str, ...]]] = [(g, (batch, studio)) for g in gauges]
        series += [(self.budget_used, (batch, studio, cap)) for cap in CAPS]
        for gauge, labels in series:
            with suppress(KeyError):
                gauge.remove(*labels)

    # -- exposition ------------------------------------------------------------------------------
    def serve(self, port: int, addr: str = "0.0.0.0") -> int:
        """Serve ``/metrics`` on ``port`` (0: any free port) in a daemon thread; return the port."""
        server, _ = start_http_server(port, addr=addr, registry=self.registry)
        self._server = server
        return int(server.server_port)

    def close(self) -> None:
        """Stop serving ``/metrics`` and free the port."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def push(self, gateway: str, job: str = "farm-render", instance: str | None = None, timeout: float = 10.0) -> None:
        """Push to a Pushgateway, grouped by ``job`` and ``instance`` (default: this host's name), adding
        counters to what the group pushed before (farm.observe.exposition.push)."""
        exposition.push(self.registry, gateway, job, instance, timeout)

    def write_textfile(self, path: str | os.PathLike) -> None:
        """Write for node_exporter's textfile collector (name it ``*.prom``), adding counters to the file's."""
        exposition.write_textfile(self.registry, path)


class _GpuCollector:
    """GPU gauges read from NVML at each scrape."""

    def __init__(self, read):
        self.read = read

    def describe(self):
        return self._families([])

    def collect(self):
        return self._families(self.read())

    @staticmethod
    def _families(readings):
        labels = ["gpu", "gpu_model"]
        util = GaugeMetricFamily(
            "farm_gpu_utilization_ratio",
            "Share of the last NVML sample period in which a kernel ran on the GPU.",
            labels=labels,
        )
        used = GaugeMetricFamily("farm_gpu_memory_used_bytes", "GPU memory in use (NVML).", labels=labels)
        total = GaugeMetricFamily("farm_gpu_memory_total_bytes", "GPU memory installed (NVML).", labels=labels)
        for g in readings:
            key = [str(g.index), g.name]
            util.add_metric(key, g.utilization)
            used.add_metric(key, g.memory_used)
            total.add_metric(key, g.memory_total)
        return [util, used, total]
