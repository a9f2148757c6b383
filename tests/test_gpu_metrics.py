"""GPU time by state (work, load, idle) and model loads: measured on the warm worker, accounted from
journal events and residency snapshots, shown on the overview dashboard, alerted on by Prometheus.

The worker runs a real configured backend whose build sleeps (a model load) against a real local
store, in this process and as a Ray actor; the alert and panel expressions are evaluated by promtool's
rule engine, and by a real Prometheus scraping the farm's live /metrics.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import generate_latest
from pydantic import TypeAdapter

from farm.core.events import ActionResult, Event
from farm.core.manifest import Manifest
from farm.core.plan import Action
from farm.observe.metrics import Metrics, model_label
from farm.policy.residency import Gpu
from farm.runtime.workers import WarmWorker
from farm.settings import StoreSpec
from tests.conftest import need
from tests.test_dashboards import ALERTS, Prometheus, expressions, free_port, prometheus_missing, rules, substitute
from workers.api import Estimate, Resources, StageResult, Usage

ROOT = Path(__file__).resolve().parent.parent
OVERVIEW = ROOT / "dashboards" / "farm-overview.json"
PANELS = ("GPU time: work vs load vs idle", "Model loads per hour, by model")
KIND = "tests.test_gpu_metrics:SlowLoad"


class SlowLoad:
    """A video backend whose build takes ``build_s`` (a model loaded in its constructor) and, with
    ``lazy_s``, whose first run loads more and reports that load itself."""

    stage, kind = "video", KIND
    ops = ("clip",)
    features: tuple[str, ...] = ()
    tools: tuple[str, ...] = ()
    resources = Resources(num_cpus=0.5, num_gpus=0)
    version = "1"

    def __init__(self, name: str, config: Mapping[str, Any]):
        self.name, self.lazy_s, self.loaded = name, float(config.get("lazy_s", 0.0)), False
        time.sleep(float(config.get("build_s", 0.0)))

    def estimate(self, op: str, params: Mapping[str, Any]) -> Estimate:
        return Estimate(seconds=0.1, gpu_seconds=0.05)

    def run(self, op, inputs, params, out_dir) -> StageResult:
        load = 0.0
        if not self.loaded and self.lazy_s > 0:
            time.sleep(self.lazy_s)
            load = self.lazy_s
        self.loaded = True
        path = Path(out_dir) / "clip.txt"
        path.write_text(f"clip {params.get('n')}")
        return StageResult(files={"clip": path}, usage=Usage(gpu_seconds=0.05, model="slow", load_seconds=load))


def configs(**settings: float) -> dict[str, dict[str, Any]]:
    """The backend's settings, new to this process (the catalog builds each configuration once)."""
    return {"slow": {"kind": KIND, "nonce": uuid.uuid4().hex, **settings}}


def clip(n: int) -> dict[str, Any]:
    return {
        "key": f"{n:064x}",
        "stage": "video",
        "op": "clip",
        "backend": "slow",
        "version": "1",
        "params": {"n": n},
        "label": f"clip {n}",
        "inputs": {},
        "context": {"studio": "acme"},
    }


def run(worker: WarmWorker, n: int, spec: StoreSpec, settings: Mapping[str, Any]) -> ActionResult:
    return ActionResult.model_validate(worker.run(f"{n:064x}", clip(n), {}, spec, "acme", "b1", settings))


# -- the load, measured on a fresh worker --------------------------------------------------------------
def test_a_fresh_worker_charges_its_build_to_the_first_action_it_runs(tmp_path):
    """The build's 0.4 s is the first action's load_seconds; its gpu_seconds stay the model's work; the
    next action loads nothing; the outcome kept for a controller that missed it says the same."""
    spec, settings = StoreSpec(url=str(tmp_path)), configs(build_s=0.4)
    started = time.perf_counter()
    worker = WarmWorker("video", "slow", settings)
    built = time.perf_counter() - started
    first, second = run(worker, 1, spec, settings), run(worker, 2, spec, settings)
    assert 0.4 <= first.usage.load_seconds <= built
    assert first.usage.gpu_seconds == 0.05 and first.usage.model == "slow"
    assert second.usage.load_seconds == 0.0 and second.usage.gpu_seconds == 0.05
    assert ActionResult.model_validate(worker.result(f"{1:064x}")).usage.load_seconds == first.usage.load_seconds


def test_a_load_the_backend_reports_is_added_to_the_build(tmp_path):
    """A backend that loads lazily in its first run reports that load; the worker adds its build to it."""
    spec, settings = StoreSpec(url=str(tmp_path)), configs(build_s=0.2, lazy_s=0.3)
    worker = WarmWorker("video", "slow", settings)
    first, second = run(worker, 1, spec, settings), run(worker, 2, spec, settings)
    assert 0.5 <= first.usage.load_seconds < 1.5
    assert second.usage.load_seconds == 0.0


def test_an_action_found_done_does_not_take_the_load(tmp_path):
    """An action whose manifest is already in the store did not run here: the load goes to the next
    action that runs, and the stored manifest is returned as it is."""
    from farm.runtime.execute import execute

    spec = StoreSpec(url=str(tmp_path))
    earlier = configs()
    done = Manifest.model_validate(execute(clip(1), {}, spec, "acme", None, earlier))
    settings = configs(build_s=0.3)
    worker = WarmWorker("video", "slow", settings)
    found = run(worker, 1, spec, settings)
    assert found.usage.load_seconds == 0.0 and found.started_at == done.started_at
    assert run(worker, 2, spec, settings).usage.load_seconds >= 0.3


def test_manifests_without_a_load_read_zero():
    """Manifests written before load_seconds existed validate, with no load."""
    old = {
        "key": "ab" * 32,
        "stage": "video",
        "op": "clip",
        "backend": "slow",
        "version": "1",
        "label": "clip 1",
        "outputs": {},
        "usage": {"gpu_seconds": 3.0, "model": "m"},
        "started_at": 1.0,
        "finished_at": 2.0,
    }
    assert Manifest.model_validate(old).usage.load_seconds == 0.0
    assert ActionResult.model_validate(old).usage == Usage(gpu_seconds=3.0, model="m")


@pytest.fixture(scope="module")
def ray_h100():
    """A real local Ray whose one node has a GPU of kind H100 in Ray's resources (nothing touches a GPU)."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    ray.init(
        address="local",
        num_cpus=2,
        num_gpus=1,
        resources={"accelerator_type:H100": 1},
        include_dashboard=False,
        logging_level="WARNING",
    )
    yield ray
    ray.shutdown()


@pytest.mark.ray
def test_the_stage_worker_actor_reports_the_load_on_its_gpu_over_ray(tmp_path, ray_h100):
    """As a Ray actor holding a GPU (how the controller runs a GPU backend), the worker's first action
    carries its build, with the GPU and its kind; the metrics count that load on that kind."""
    from farm.runtime.workers import StageWorker

    spec, settings = StoreSpec(url=str(tmp_path)), configs(build_s=0.5)
    actor = StageWorker.options(num_gpus=1, num_cpus=0).remote("video", "slow", "WARNING", settings)
    results = []
    try:
        for n in (1, 2):
            ref = actor.run.remote(f"{n:064x}", clip(n), {}, spec, "acme", "b1", settings)
            results.append(ActionResult.model_validate(ray_h100.get(ref, timeout=120)))
        held = ray_h100.get(actor.describe.remote(), timeout=60)  # what a restarted controller asks
        assert held["finished"] == [f"{1:064x}", f"{2:064x}"] and held["running"] == []
    finally:
        ray_h100.kill(actor)
    first, second = results
    assert first.usage.load_seconds >= 0.5 and second.usage.load_seconds == 0.0
    assert first.worker["pid"] == second.worker["pid"] and first.worker["gpus"] == "0"
    kinds = {k.split(":", 1)[1] for n in ray_h100.nodes() for k in n["Resources"] if k.startswith("accelerator_type:")}
    assert "H100" in kinds and first.worker["accelerator"] in kinds  # a real GPU's kind may be listed too
    m = Metrics(accelerators={("video", "slow"): "any"}, nvml=False)
    for result in results:
        m.completed("acme", "video", "slow", result.usage, result.seconds, result.worker)
    kind = first.worker["accelerator"]
    load = value(m, "farm_gpu_time_seconds_total", state="load", accelerator=kind, model="video/slow")
    assert (
        load == first.usage.load_seconds
        and value(m, "farm_model_loads_total", model="video/slow", accelerator=kind) == 1
    )
    assert value(m, "farm_gpu_time_seconds_total", state="work", accelerator=kind, model="video/slow") == 0.1


# -- metrics from events and residency snapshots ----------------------------------------------------------
def action(stage: str = "video", backend: str = "wan", n: int = 1) -> Action:
    return Action.from_json(clip(n) | {"stage": stage, "backend": backend, "context": {"studio": "acme"}})


def completed(usage: dict[str, Any], worker: dict[str, str], n: int = 1) -> Any:
    data = {k: v for k, v in clip(n).items() if k not in ("params", "inputs", "context")}
    data |= {"outputs": {}, "usage": usage, "worker": worker, "started_at": 0.0, "finished_at": 1.0}
    event = {"seq": 0, "at": 0.0, "type": "action.completed", "batch": "b1", "key": data["key"], "data": data}
    return TypeAdapter(Event).validate_python(event)


def value(m: Metrics, name: str, **labels: str) -> float | None:
    return m.registry.get_sample_value(name, labels)


def test_work_and_load_are_counted_from_completed_actions():
    """Work is usage.gpu_seconds; load is load_seconds times the GPUs the worker held, on the accelerator
    kind it ran on (else the profile's); a model load counts once per action that loaded."""
    m = Metrics(accelerators={("video", "wan"): "any", ("script", "llm"): "none"}, nvml=False)
    on_h100 = {"node": "n1", "gpus": "0,1", "accelerator": "H100"}
    m.observe(completed({"gpu_seconds": 30.0, "load_seconds": 120.0}, on_h100), action())
    m.observe(completed({"gpu_seconds": 40.0}, on_h100, n=2), action(n=2))
    m.observe(completed({"gpu_seconds": 5.0, "load_seconds": 10.0}, {"node": "n2", "gpus": "3"}, n=3), action(n=3))
    m.observe(completed({"load_seconds": 2.0}, {"node": "n3"}, n=4), action("script", "llm", n=4))
    wan = model_label("video", "wan")
    assert wan == "video/wan"
    assert value(m, "farm_gpu_time_seconds_total", state="work", accelerator="H100", model=wan) == 70.0
    assert value(m, "farm_gpu_time_seconds_total", state="load", accelerator="H100", model=wan) == 240.0
    assert value(m, "farm_model_loads_total", model=wan, accelerator="H100") == 1
    # no kind on that node: the profile's label; one GPU
    assert value(m, "farm_gpu_time_seconds_total", state="load", accelerator="any", model=wan) == 10.0
    assert value(m, "farm_model_loads_total", model=wan, accelerator="any") == 1
    # a backend that holds no GPU loads its model on none: a load, no GPU time
    assert value(m, "farm_gpu_time_seconds_total", state="load", accelerator="none", model="script/llm") == 0.0
    assert value(m, "farm_model_loads_total", model="script/llm", accelerator="none") == 1
    # the spend metric is unchanged: work only
    assert value(m, "farm_gpu_seconds_total", studio="acme", stage="video", model="wan", accelerator="any") == 75.0


def test_nonsense_load_is_not_counted_and_a_cache_hit_loads_nothing():
    m = Metrics(accelerators={("video", "wan"): "L4"}, nvml=False)
    for n, load in enumerate((float("nan"), -5.0, float("inf")), 1):
        m.observe(completed({"gpu_seconds": 1.0, "load_seconds": load}, {"gpus": "0"}, n), action(n=n))
    cached = completed({"gpu_seconds": 9.0, "load_seconds": 60.0}, {"gpus": "0"}, n=9).model_dump()
    m.observe(TypeAdapter(Event).validate_python(cached | {"type": "action.cached"}), action(n=9))
    assert value(m, "farm_gpu_time_seconds_total", state="load", accelerator="L4", model="video/wan") == 0.0
    assert value(m, "farm_gpu_time_seconds_total", state="work", accelerator="L4", model="video/wan") == 3.0
    assert value(m, "farm_model_loads_total", model="video/wan", accelerator="L4") is None


def test_idle_is_integrated_from_residency_snapshots():
    """Each GPU idle at a snapshot adds the seconds until the next to idle{accelerator, model it held}
    (shared between two models it held; "none" when it held nothing); busy time adds nothing."""
    m = Metrics(nvml=False)
    idle = lambda acc, model: value(m, "farm_gpu_time_seconds_total", state="idle", accelerator=acc, model=model)  # noqa: E731
    empty, wan = Gpu("g0", "H100"), Gpu("g1", "H100", resident=("video/wan",), running={"video/wan": 1})
    pair = Gpu("g2", "L4", resident=("image/flux", "video/ltx"))
    m.observe_residency([empty, wan, pair], 100.0)
    assert idle("H100", "none") == 0.0 and idle("L4", "image/flux") == 0.0  # there at zero from the first sight
    wan.running = {"video/wan": 0}
    m.observe_residency([empty, wan, pair], 110.0)
    assert idle("H100", "none") == 10.0 and idle("H100", "video/wan") == 0.0  # it was busy until 110
    assert idle("L4", "image/flux") == 5.0 and idle("L4", "video/ltx") == 5.0
    empty.resident, empty.running = ("video/wan",), {"video/wan": 1}  # loading: an action runs on it
    m.observe_residency([empty, wan, pair], 125.0)
    assert idle("H100", "none") == 25.0 and idle("H100", "video/wan") == 15.0
    m.observe_residency([empty, wan], 130.0)  # g2 gone (its node left): forgotten
    m.observe_residency([empty, wan], 128.0)  # a clock that went back adds nothing
    m.observe_residency([empty, wan, pair], 140.0)  # g2 back: counts from here
    m.observe_residency([empty, wan, pair], 150.0)
    assert idle("H100", "none") == 25.0 and idle("H100", "video/wan") == 15.0 + 5.0 + 0.0 + 12.0 + 10.0
    assert idle("L4", "image/flux") == 5.0 + 7.5 + 5.0


# -- the dashboard panels and the alert -------------------------------------------------------------------
def overview_panels() -> dict[str, str]:
    return dict(expressions(json.loads(OVERVIEW.read_text(encoding="utf-8"))))


def test_panels_and_alert_name_only_exported_metrics():
    """The two panels are on the overview dashboard and, with the alert, name only metrics a controller
    exports once a batch was submitted and residency seen (at zero until something happens)."""
    m = Metrics(accelerators={("video", "wan"): "H100"}, nvml=False)
    m.prepare("acme", {"video": "wan", "script": "outline"})
    m.observe_residency([Gpu("g0", "H100")], 0.0)
    out = generate_latest(m.registry).decode()
    assert 'farm_gpu_time_seconds_total{accelerator="H100",model="video/wan",state="load"} 0.0' in out
    assert 'farm_gpu_time_seconds_total{accelerator="H100",model="none",state="idle"} 0.0' in out
    assert 'farm_model_loads_total{accelerator="none",model="script/outline"} 0.0' in out
    exported = set(re.findall(r"^(farm_\w+?)(?:\{| )", out, re.M))
    panels = overview_panels()
    alert = next(r for r in rules() if r["alert"] == "FarmGpuLoadTimeHigh")
    named = {n for title in PANELS for n in re.findall(r"farm_\w+", panels[title])}
    assert named == {"farm_gpu_time_seconds_total", "farm_model_loads_total"}
    assert set(re.findall(r"farm_\w+", alert["expr"])) <= exported and named <= exported
    assert alert["for"] == "15m" and alert["labels"]["severity"] == "warning"


def _counter(state: str, accelerator: str, per_minute: float, model: str = "video/wan") -> dict[str, str]:
    labels = f'state="{state}",accelerator="{accelerator}",model="{model}"'
    return {f"farm_gpu_time_seconds_total{{{labels}}}": f"0+{per_minute}x90"}


@pytest.mark.prometheus
def test_the_alert_fires_on_a_high_load_share_and_the_panels_add_up(tmp_path):
    """promtool evaluates the alert on an hour and a half of series: H100 GPUs spending 25% of their time
    loading fire it after 15 minutes, with the accelerator in the summary; L4 at 11% and a GPU-less
    backend that is all load do not. The panels' expressions return the stacked states (GPU-seconds per
    second, here times 60) and the loads per hour."""
    need(prometheus_missing())
    series = {  # GPU-seconds a minute: H100 work 30 + load 15 + idle 15; L4 105 + 15 + 15; none: only load
        **_counter("work", "H100", 30),
        **_counter("load", "H100", 15),
        **_counter("idle", "H100", 15, "none"),
        **_counter("work", "L4", 105),
        **_counter("load", "L4", 15),
        **_counter("idle", "L4", 15, "none"),
        **_counter("load", "none", 60, "script/llm"),
        'farm_model_loads_total{model="video/wan",accelerator="H100"}': "0+0.5x90",
        'farm_model_loads_total{model="video/wan",accelerator="L4"}': "0+0.25x90",
    }
    fired = {
        "exp_labels": {"severity": "warning", "accelerator": "H100"},
        "exp_annotations": {
            "summary": "H100 GPUs spent 25% of their time loading models",
            "description": "More than 20% of the H100 GPUs' time in the last hour went to loading models rather "
            "than running them: models swapped between GPUs too often, or warm workers retired and started again. "
            '"GPU time: work vs load vs idle" and "Model loads per hour" on the "Farm overview" dashboard show when '
            "it began and which model reloads.",
        },
    }
    panels = overview_panels()
    unit = {
        "rule_files": [str(ALERTS)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [{"series": s, "values": v} for s, v in series.items()],
                "alert_rule_test": [
                    {"eval_time": "10m", "alertname": "FarmGpuLoadTimeHigh", "exp_alerts": []},  # pending
                    {"eval_time": "30m", "alertname": "FarmGpuLoadTimeHigh", "exp_alerts": [fired]},
                    {"eval_time": "80m", "alertname": "FarmGpuLoadTimeHigh", "exp_alerts": [fired]},
                ],
                "promql_expr_test": [
                    {
                        "expr": f"round(({substitute(panels[PANELS[0]])}) * 60)",
                        "eval_time": "30m",
                        "exp_samples": [
                            {"labels": '{state="work"}', "value": 135},
                            {"labels": '{state="load"}', "value": 90},
                            {"labels": '{state="idle"}', "value": 30},
                        ],
                    },
                    {
                        "expr": f"round({substitute(panels[PANELS[1]])})",
                        "eval_time": "30m",
                        "exp_samples": [{"labels": '{model="video/wan"}', "value": 45}],
                    },
                ],
            }
        ],
    }
    path = tmp_path / "gpu_time_test.yaml"
    path.write_text(yaml.safe_dump(unit, sort_keys=False))
    proc = subprocess.run(["promtool", "test", "rules", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.prometheus
def test_a_real_prometheus_scraping_live_metrics_holds_the_alert_pending(tmp_path):
    """A real Prometheus scrapes a Metrics registry served on loopback while actions load their models
    and GPUs idle: the alert's rule is healthy and pending for the accelerator whose GPUs mostly load,
    not for the one whose GPUs mostly work; the panels' queries return data."""
    need(prometheus_missing())
    m = Metrics(accelerators={("video", "wan"): "H100", ("video", "ltx"): "L4"}, nvml=False)
    m.prepare("acme", {"video": "wan"})
    port = m.serve(free_port(), addr="127.0.0.1")
    prom = Prometheus(tmp_path, [f"127.0.0.1:{port}"], [str(ALERTS)])
    try:
        prom.wait_for('up{job="farm"} == 1')
        gpus = [Gpu("g0", "H100"), Gpu("g1", "L4", resident=("video/ltx",))]
        clock, n = time.time(), 0
        deadline = time.monotonic() + 30
        pending: set[str] = set()
        while time.monotonic() < deadline and not pending:
            n += 1  # an H100 action: 1 s of work after 9 s of load; an L4 one: 9 s of work, no load
            m.observe(completed({"gpu_seconds": 1.0, "load_seconds": 9.0}, {"gpus": "0"}, n), action(n=n))
            m.observe(completed({"gpu_seconds": 9.0}, {"gpus": "1"}, n + 1000), action(backend="ltx", n=n + 1000))
            clock += 1.0
            m.observe_residency(gpus, clock)  # the L4 idle a second each round
            time.sleep(0.5)
            alerts = prom.api("alerts")["data"]["alerts"]
            pending = {a["labels"]["accelerator"] for a in alerts if a["labels"]["alertname"] == "FarmGpuLoadTimeHigh"}
        assert pending == {"H100"}, prom.api("alerts")
        rule = next(
            r for g in prom.api("rules")["data"]["groups"] for r in g["rules"] if r["name"] == "FarmGpuLoadTimeHigh"
        )
        assert rule["health"] == "ok" and rule["state"] == "pending"
        for title in PANELS:
            answer = prom.query(substitute(overview_panels()[title]))
            assert answer["status"] == "success" and answer["data"]["result"], (title, answer)
    finally:
        prom.close()
        m.close()
