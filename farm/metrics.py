"""The only module that imports prometheus_client: the controller's metrics, accounted from events.

Usage is accounted once, centrally (DESIGN.md, invariant 6): the service hands every journaled event
to ``Metrics.observe``; workers never touch Prometheus. Labels are bounded: studio, stage, model,
outcome (and the batch id for per-batch progress, removed when the batch ends). Never an episode or
action id.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

_ACTION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.actions = Counter("farm_actions", "Actions by stage and outcome (ok, cached, failed, retried).",
                               ["studio", "stage", "outcome"], registry=r)
        self.duration = Histogram("farm_action_duration_seconds", "Wall time of finished actions.", ["stage"],
                                  buckets=_ACTION_BUCKETS, registry=r)
        self.tokens = Counter("farm_tokens", "Tokens used, by direction.", ["studio", "stage", "model", "direction"],
                              registry=r)
        self.gpu_seconds = Counter("farm_gpu_seconds", "GPU-seconds used.", ["studio", "stage", "model"], registry=r)
        self.cpu_seconds = Counter("farm_cpu_seconds", "CPU-seconds used.", ["studio", "stage"], registry=r)
        self.saved_cpu = Counter("farm_cache_saved_cpu_seconds", "CPU-seconds the cache saved.", ["studio", "stage"],
                                 registry=r)
        self.episodes = Counter("farm_episodes", "Episodes finished, by outcome.", ["studio", "outcome"], registry=r)
        self.queue = Gauge("farm_queue_depth", "Actions ready to run, by stage.", ["stage"], registry=r)
        self.running = Gauge("farm_running_actions", "Actions running, by stage.", ["stage"], registry=r)
        self.progress = Gauge("farm_batch_progress_ratio", "Episodes finished over episodes in the batch.",
                              ["batch", "studio"], registry=r)
        self.slack = Gauge("farm_batch_deadline_slack_seconds", "Deadline minus projected finish.",
                           ["batch", "studio"], registry=r)
        self.up = Gauge("farm_controller_up", "1 while the controller runs.", registry=r)
        self.up.set(1)

    def serve(self, port: int) -> None:
        start_http_server(port, addr="0.0.0.0", registry=self.registry)

    def observe(self, event, action=None) -> None:
        """Account one journaled event; ``action`` is the Action it concerns, if any."""
        data = event.data
        if event.type in ("action.completed", "action.cached") and action is not None:
            studio, stage = action.context.get("studio", ""), action.stage
            usage = data.get("usage", {})
            if event.type == "action.cached":
                self.actions.labels(studio, stage, "cached").inc()
                self.saved_cpu.labels(studio, stage).inc(usage.get("cpu_seconds", 0.0))
                return
            model = usage.get("model", "") or action.backend
            self.actions.labels(studio, stage, "ok").inc()
            self.duration.labels(stage).observe(max(0.0, data["finished_at"] - data["started_at"]))
            self.tokens.labels(studio, stage, model, "in").inc(usage.get("tokens_in", 0))
            self.tokens.labels(studio, stage, model, "out").inc(usage.get("tokens_out", 0))
            self.gpu_seconds.labels(studio, stage, model).inc(usage.get("gpu_seconds", 0.0))
            self.cpu_seconds.labels(studio, stage).inc(usage.get("cpu_seconds", 0.0))
        elif event.type == "action.failed" and action is not None:
            self.actions.labels(action.context.get("studio", ""), action.stage, "failed").inc()
        elif event.type == "action.retry" and action is not None:
            self.actions.labels(action.context.get("studio", ""), action.stage, "retried").inc()

    def episode(self, studio: str, outcome: str) -> None:
        self.episodes.labels(studio, outcome).inc()

    def batch(self, status: dict) -> None:
        """Per-batch gauges from a batch_status(); removed once the batch is over."""
        labels = (status["batch"], status["studio"])
        if status["status"] != "running":
            for gauge in (self.progress, self.slack):
                try:
                    gauge.remove(*labels)
                except KeyError:
                    pass
            return
        eps = status["episodes"]
        self.progress.labels(*labels).set((eps["delivered"] + eps["failed"]) / max(1, eps["total"]))
        if status["deadline"] is not None and status["projected_finish"] is not None:
            self.slack.labels(*labels).set(status["deadline"] - status["projected_finish"])

    def stages(self, queued: dict[str, int], running: dict[str, int]) -> None:
        for stage in set(queued) | set(running) | {"script", "image", "video", "dubbing", "assembly"}:
            self.queue.labels(stage).set(queued.get(stage, 0))
            self.running.labels(stage).set(running.get(stage, 0))
