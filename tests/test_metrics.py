"""farm.observe.metrics: usage accounted once, labels bounded, output Prometheus accepts.

Unit tests feed Metrics journal events and manifests with literal usage; the end-to-end test runs
``farm render --pushgateway --metrics-textfile`` twice against a real Pushgateway.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
import time
import types
import urllib.request

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import TypeAdapter

from farm.core.events import Event
from farm.core.plan import Action
from farm.observe.metrics import Metrics, accelerator_label
from farm.policy import Prices
from tests.conftest import media_missing, need, write_specs

KEY = "ab" * 32
PRICES = Prices(per_1k_tokens=2.0, per_gpu_hour=3600.0)  # 2 per 1k tokens, 1 per GPU-second


def action(stage="video", backend="wan", key=KEY):
    return Action(
        key=key,
        stage=stage,
        op="clip",
        backend=backend,
        version="1",
        params={},
        inputs={},
        label="clip s01-01",
        context={"studio": "acme", "series": "s", "episode": "ep001"},
    )


def event(type_, data=None, key=KEY, batch="b1"):
    """A journaled event of ``type_``; an action result's manifest fields not given are filled in."""
    data = dict(data or {})
    if type_ in ("action.completed", "action.cached"):
        data = {
            "key": key,
            "stage": "video",
            "op": "clip",
            "backend": "wan",
            "version": "1",
            "label": "clip s01-01",
            "outputs": {},
            "started_at": 0.0,
            "finished_at": 0.0,
        } | data
    elif type_ == "action.failed":
        data = {"error": "boom", "retryable": True} | data
    elif type_ == "action.retry":
        data = {"not_before": 1.0} | data
    return TypeAdapter(Event).validate_python(
        {"seq": 0, "at": 0.0, "type": type_, "batch": batch, "key": key, "data": data}
    )


def value(m: Metrics, name: str, **labels) -> float:
    got = m.registry.get_sample_value(name, labels)
    return 0.0 if got is None else got


def text(m: Metrics) -> str:
    return generate_latest(m.registry).decode()


def test_completed_action_accounts_tokens_gpu_and_money():
    """A completed action adds its tokens, GPU-seconds (with the stage's accelerator), CPU and money."""
    m = Metrics(prices=PRICES, accelerators={("video", "wan"): "H100"}, nvml=False)
    usage = {"tokens_in": 1000, "tokens_out": 500, "gpu_seconds": 30.0, "cpu_seconds": 2.0, "model": "wan-2.1"}
    m.observe(event("action.completed", {"usage": usage, "started_at": 10.0, "finished_at": 22.5}), action())
    labels = {"studio": "acme", "stage": "video"}
    assert value(m, "farm_actions_total", **labels, outcome="ok") == 1
    assert value(m, "farm_tokens_total", **labels, model="wan-2.1", direction="in") == 1000
    assert value(m, "farm_tokens_total", **labels, model="wan-2.1", direction="out") == 500
    assert value(m, "farm_gpu_seconds_total", **labels, model="wan-2.1", accelerator="H100") == 30
    assert value(m, "farm_cpu_seconds_total", **labels) == 2
    assert value(m, "farm_money_total", **labels, model="wan-2.1") == pytest.approx(3.0 + 30.0)
    assert value(m, "farm_action_duration_seconds_sum", stage="video") == 12.5


def test_cached_action_counts_a_hit_and_what_it_saved():
    """A cache hit counts as outcome cached and adds the original run's cost to the savings."""
    m = Metrics(prices=PRICES, nvml=False)
    m.observe(event("action.cached", {"usage": {"gpu_seconds": 8.0, "tokens_in": 500, "cpu_seconds": 1.5}}), action())
    labels = {"studio": "acme", "stage": "video"}
    assert value(m, "farm_actions_total", **labels, outcome="cached") == 1
    assert value(m, "farm_cache_hits_total", **labels) == 1
    assert value(m, "farm_cache_saved_gpu_seconds_total", **labels) == 8
    assert value(m, "farm_cache_saved_tokens_total", **labels) == 500
    assert value(m, "farm_cache_saved_money_total", **labels) == pytest.approx(9.0)
    assert value(m, "farm_gpu_seconds_total", **labels, model="wan", accelerator="none") == 0


def test_failures_and_retries_are_outcomes():
    """action.failed and action.retry count as outcomes failed and retried; episodes by outcome."""
    m = Metrics(nvml=False)
    m.observe(event("action.failed", {"error": "boom"}), action())
    m.observe(event("action.retry", {"not_before": 5.0}), action())
    m.episode("acme", "delivered", 41.5)
    m.episode("acme", "failed")
    assert value(m, "farm_actions_total", studio="acme", stage="video", outcome="failed") == 1
    assert value(m, "farm_actions_total", studio="acme", stage="video", outcome="retried") == 1
    assert value(m, "farm_episodes_total", studio="acme", outcome="delivered") == 1
    assert value(m, "farm_episodes_total", studio="acme", outcome="failed") == 1
    assert value(m, "farm_delivered_video_seconds_total", studio="acme") == 41.5


def test_an_interruption_by_the_farm_is_no_failure():
    """An action a controller restart interrupted is not counted as failed."""
    m = Metrics(nvml=False)
    m.observe(event("action.failed", {"error": "interrupted", "interrupted": True}), action())
    assert value(m, "farm_actions_total", studio="acme", stage="video", outcome="failed") == 0


def test_submitted_batch_creates_its_studios_series_at_zero():
    """batch.submitted creates the studio's series at 0, so a first failure shows in rate()."""
    m = Metrics(nvml=False)
    backends = {s: [n, "1"] for s, n in {"script": "outline", "video": "ffmpeg-motion"}.items()}
    series = {
        "id": "s",
        "title": "S",
        "style": {"description": "d", "palette": ["#000000", "#ffffff"]},
        "characters": [{"id": "a", "name": "A", "look": {"description": "d"}, "voice": {"voice": "en-us"}}],
    }
    episode = {"series": "s.yaml", "number": 1, "title": "E", "outline": [{"beat": "b"}]}
    m.observe(
        event(
            "batch.submitted",
            {
                "studio": "acme",
                "namespace": "acme",
                "backends": backends,
                "episodes": [{"series": series, "episode": episode}],
            },
            key=None,
        ),
        None,
    )
    out = text(m)
    assert 'farm_actions_total{outcome="failed",stage="dubbing",studio="acme"} 0.0' in out
    assert 'farm_tokens_total{direction="in",model="outline",stage="script",studio="acme"} 0.0' in out
    assert 'farm_episodes_total{outcome="failed",studio="acme"} 0.0' in out


def _status(**over):
    status = {
        "batch": "acme-1",
        "studio": "acme",
        "status": "running",
        "episodes": {"total": 4, "delivered": 1, "failed": 1},
        "projected_finish": 1_000.0,
        "deadline": 900.0,
        "budget": {"tokens": 1000, "gpu_seconds": None, "money": 0.0},
        "spent": {"tokens": 950, "gpu_seconds": 10.0, "money": 0.0},
    }
    return status | over


def test_batch_gauges_while_running_then_removed():
    """A running batch has progress, projected finish, deadline, slack and budget used per cap; all go when it ends."""
    m = Metrics(nvml=False)
    m.batch(_status())
    b = {"batch": "acme-1", "studio": "acme"}
    assert value(m, "farm_batch_progress_ratio", **b) == 0.5
    assert value(m, "farm_batch_deadline_slack_seconds", **b) == -100
    assert value(m, "farm_batch_projected_finish_timestamp_seconds", **b) == 1000
    assert value(m, "farm_batch_budget_used_ratio", **b, cap="tokens") == 0.95
    assert value(m, "farm_batch_budget_used_ratio", **b, cap="money") == 0.0  # a zero cap with nothing spent
    assert m.registry.get_sample_value("farm_batch_budget_used_ratio", b | {"cap": "gpu_seconds"}) is None  # no cap
    assert m.tracks("acme-1")
    m.batch(_status(status="finished"))
    assert "acme-1" not in text(m) and not m.tracks("acme-1")


def test_batch_gauges_are_refreshed_less_often_when_working_them_out_is_slow(monkeypatch):
    """The controller loop refreshes the gauges every second, or every 20 times what a refresh took
    (a batch status is O(actions)), so a huge batch's gauges cost it at most 5% of its time."""
    from farm.service.host import ControllerService
    from tests.test_controller import Harness

    h = Harness()
    h.submit(episodes=1)
    service = types.SimpleNamespace(
        controller=h.c, runtime=None, metrics=Metrics(nvml=False), _gauges_at=0.0, _gauges_every=1.0
    )
    ControllerService._refresh_gauges(service)
    assert (
        service._gauges_every == 1.0
        and value(service.metrics, "farm_batch_progress_ratio", batch="b1", studio="acme") == 0.0
    )
    slow_status = h.c.batch_status
    monkeypatch.setattr(h.c, "batch_status", lambda *a: (time.sleep(0.1), slow_status(*a))[1])
    service._gauges_at = 0.0
    ControllerService._refresh_gauges(service)
    assert service._gauges_every >= 2.0
    refreshed = service._gauges_at
    ControllerService._refresh_gauges(service)  # too soon: not again
    assert service._gauges_at == refreshed


def test_labels_never_carry_ids():
    """After a run of events the only label names are the bounded ones, and no value is a key or an episode."""
    m = Metrics(prices=PRICES, nvml=False)
    m.prepare("acme", {"video": "wan"})
    result = {"usage": {"model": "wan"}, "started_at": 0.0, "finished_at": 1.0}
    for type_ in ("action.completed", "action.cached", "action.failed", "action.retry"):
        m.observe(event(type_, result if type_ in ("action.completed", "action.cached") else {}), action())
    m.observe(judge_event("action.completed", "fail"), judge())
    m.stages({"video": 3}, {"video": 1})
    m.batch(_status(held_for_review=1))
    out = text(m)
    assert set(re.findall(r"[{,](\w+)=", out)) <= {
        "studio",
        "stage",
        "backend",
        "verdict",
        "outcome",
        "model",
        "direction",
        "accelerator",
        "batch",
        "cap",
        "le",
        "state",
    }
    assert KEY not in out and KEY[:12] not in out and "ep001" not in out


JUDGE_KEY = "cd" * 32


def judge(backend="frames", target_stage="video", target_backend="ffmpeg-motion"):
    """A judge action of take 1 of a clip (the judged action's op, stage and backend are in its params)."""
    target = {"op": "clip", "stage": target_stage, "backend": target_backend, "take": 1}
    return Action(
        key=JUDGE_KEY,
        stage="judge",
        op="judge",
        backend=backend,
        version="1",
        params={"target": target, "thresholds": {}, "expect": {}},
        inputs={},
        label="judge clip s01-01",
        context={"studio": "acme", "series": "s", "episode": "ep001"},
    )


def judge_event(type_, verdict, usage=None, backend="frames", checks=()):
    """A judge action's action.completed or action.cached event: its manifest's meta carries the verdict."""
    meta = {"verdict": verdict, "score": 1.0 if verdict == "pass" else 0.3, "checks": list(checks)}
    result = {"stage": "judge", "op": "judge", "backend": backend, "label": "judge clip s01-01", "meta": meta}
    return event(type_, result | {"usage": usage or {}, "started_at": 5.0, "finished_at": 6.0}, key=JUDGE_KEY)


def test_each_fresh_judge_verdict_is_a_take_of_the_judged_stage_and_backend():
    """A completed judge action counts one take, labelled with the judged action's stage and backend and the
    verdict; a cached verdict is no new take, and a verdict-like meta of another stage counts nowhere."""
    m = Metrics(nvml=False)
    for verdict in ("fail", "fail", "pass"):
        m.observe(judge_event("action.completed", verdict), judge())
    m.observe(judge_event("action.completed", "pass"), judge("audio", "dubbing", "espeak"))
    m.observe(judge_event("action.cached", "pass"), judge())
    m.observe(event("action.completed", {"meta": {"verdict": "pass"}}), action())
    clip = {"studio": "acme", "stage": "video", "backend": "ffmpeg-motion"}
    assert value(m, "farm_takes_total", **clip, verdict="fail") == 2
    assert value(m, "farm_takes_total", **clip, verdict="pass") == 1
    assert value(m, "farm_takes_total", studio="acme", stage="dubbing", backend="espeak", verdict="pass") == 1
    assert value(m, "farm_takes_total", studio="acme", stage="video", backend="wan", verdict="pass") == 0
    assert value(m, "farm_actions_total", studio="acme", stage="judge", outcome="ok") == 4
    assert value(m, "farm_actions_total", studio="acme", stage="judge", outcome="cached") == 1


def test_judging_spend_by_judge_as_well_as_in_the_judge_stage():
    """A judge's usage adds to farm_judge_* by studio and judge (money at the price table) and to the stage
    "judge" of the per-stage counters; a cached verdict and other stages' work add nothing to farm_judge_*."""
    m = Metrics(prices=PRICES, accelerators={("judge", "vision-qwen"): "L4"}, nvml=False)
    usage = {"tokens_in": 1000, "tokens_out": 500, "gpu_seconds": 4.0, "cpu_seconds": 1.5, "model": "qwen2.5-vl"}
    m.observe(judge_event("action.completed", "fail", usage, backend="vision-qwen"), judge("vision-qwen"))
    m.observe(judge_event("action.cached", "fail", usage, backend="vision-qwen"), judge("vision-qwen"))
    m.observe(event("action.completed", {"usage": usage, "started_at": 0.0, "finished_at": 1.0}), action())
    by_judge = {"studio": "acme", "backend": "vision-qwen"}
    assert value(m, "farm_judge_tokens_total", **by_judge) == 1500
    assert value(m, "farm_judge_gpu_seconds_total", **by_judge) == 4
    assert value(m, "farm_judge_cpu_seconds_total", **by_judge) == 1.5
    assert value(m, "farm_judge_money_total", **by_judge) == pytest.approx(3.0 + 4.0)
    stage = {"studio": "acme", "stage": "judge"}
    assert value(m, "farm_money_total", **stage, model="qwen2.5-vl") == pytest.approx(7.0)
    assert value(m, "farm_gpu_seconds_total", **stage, model="qwen2.5-vl", accelerator="L4") == 4
    assert value(m, "farm_action_duration_seconds_sum", stage="judge") == 1.0
    assert value(m, "farm_cache_saved_money_total", **stage) == pytest.approx(7.0)
    assert 'farm_judge_money_total{backend="wan"' not in text(m)


def test_the_judge_stage_and_takes_are_declared_at_zero():
    """The judge stage has its histogram, queue and per-studio series at 0 like the plan's stages; a studio's
    takes of its judged stages' backends and its judge's spend start at 0, so their first increase shows."""
    m = Metrics(nvml=False)
    m.prepare("acme", {"video": "ffmpeg-motion", "script": "outline", "judge": "frames"})
    m.stages({}, {})
    get = m.registry.get_sample_value
    assert get("farm_action_duration_seconds_count", {"stage": "judge"}) == 0
    assert get("farm_queue_depth", {"stage": "judge"}) == 0
    assert get("farm_actions_total", {"studio": "acme", "stage": "judge", "outcome": "failed"}) == 0
    clip = {"studio": "acme", "stage": "video", "backend": "ffmpeg-motion"}
    assert (
        get("farm_takes_total", clip | {"verdict": "pass"}) == get("farm_takes_total", clip | {"verdict": "fail"}) == 0
    )
    assert (
        get("farm_takes_total", {"studio": "acme", "stage": "script", "backend": "outline", "verdict": "pass"}) is None
    )
    assert get("farm_judge_money_total", {"studio": "acme", "backend": "frames"}) == 0


def test_episodes_held_for_review_per_running_batch():
    """held_for_review of a running batch's status is a gauge (0 when the status has none); it goes when the
    batch ends, with the batch's other gauges."""
    m = Metrics(nvml=False)
    b = {"batch": "acme-1", "studio": "acme"}
    m.batch(_status(held_for_review=2))
    assert m.registry.get_sample_value("farm_batch_held_for_review_episodes", b) == 2
    m.batch(_status())
    assert m.registry.get_sample_value("farm_batch_held_for_review_episodes", b) == 0
    m.batch(_status(status="finished", held_for_review=2))
    assert "farm_batch_held_for_review_episodes{" not in text(m)


def test_accounting_counts_a_judges_take_and_logs_its_verdict():
    """Accounting hands a judge's completed event to the metrics (a take of the judged backend) and logs the
    verdict, its score, the take and the names of the checks that failed."""
    from structlog.testing import capture_logs

    from farm.observe import logs as farm_logs
    from farm.observe.accounting import Accounting

    farm_logs.configure(level="DEBUG")  # an earlier render may have left WARNING, which drops info lines
    m = Metrics(nvml=False)
    state = types.SimpleNamespace(action=judge(), charged_to="b1", episodes=set())
    accounting = Accounting(m, types.SimpleNamespace(actions={JUDGE_KEY: state}))  # the controller's action states
    checks = [{"name": "black_frames", "passed": False}, {"name": "frozen_frames", "passed": True}]
    with capture_logs() as logs:
        accounting(judge_event("action.completed", "fail", checks=checks))
    line = next(e for e in logs if e["event"] == "action.completed")
    assert (line["stage"], line["verdict"], line["score"], line["take"]) == ("judge", "fail", 0.3, 1)
    assert line["failed"] == ["black_frames"]
    takes = {"studio": "acme", "stage": "video", "backend": "ffmpeg-motion", "verdict": "fail"}
    assert value(m, "farm_takes_total", **takes) == 1


def test_accelerator_label_of_a_profile():
    """Named accelerator, "any" GPU, or "none" for CPU stages."""
    gpu = types.SimpleNamespace(gpus=1, accelerator="A100")
    assert accelerator_label(gpu) == "A100"
    assert accelerator_label(types.SimpleNamespace(gpus=0.5, accelerator=None)) == "any"
    assert accelerator_label(types.SimpleNamespace(gpus=0, accelerator=None)) == accelerator_label(None) == "none"


def test_a_render_is_accounted_per_journaled_event_as_a_batch_is(tmp_path):
    """farm render runs the engine with the same accounting as the controller: its completed and cached
    actions, a failed and retried attempt, and the delivered episode, event by event (in-process runtime)."""
    from farm.loader import load_episode
    from farm.runtime.local import InProcessRuntime
    from farm.service.local import render_episode
    from farm.settings import Settings

    settings = Settings(
        store=str(tmp_path / "store"),
        studio="acme",
        retry={"base_s": 0.01, "max_delay_s": 0.01},
        backends={
            "flaky": {"kind": "tests.support.fake_backends:Flaky", "stage": "dubbing", "marks": str(tmp_path / "marks")}
        },
        **{f"backend_{s}": "noop" for s in ("script", "image", "video", "assembly")},
        backend_dubbing="flaky",
    )
    episode = load_episode(write_specs(tmp_path / "specs"))
    for run in range(2):
        m = Metrics(prices=PRICES, controller=False, nvml=False)
        runtime = InProcessRuntime(settings.store_spec(), settings.catalog(), cpus=2)
        try:
            result = render_episode(episode, settings, runtime, metrics=m)
        finally:
            runtime.shutdown()
        ok = sum(
            value(m, "farm_actions_total", studio="acme", stage=s, outcome="ok")
            for s in ("image", "video", "dubbing", "assembly")
        )
        cached = sum(
            value(m, "farm_actions_total", studio="acme", stage=s, outcome="cached")
            for s in ("image", "video", "dubbing", "assembly")
        )
        if run == 0:
            assert ok == len(result.ran) == 15 and cached == 0
            lines = value(m, "farm_actions_total", studio="acme", stage="dubbing", outcome="ok")
            assert value(m, "farm_actions_total", studio="acme", stage="dubbing", outcome="failed") == lines == 3
            assert value(m, "farm_actions_total", studio="acme", stage="dubbing", outcome="retried") == 3
        else:
            assert ok == 0 and cached == len(result.cached) == 15
        assert value(m, "farm_episodes_total", studio="acme", outcome="delivered") == 1
        assert "farm_controller_up" not in text(m)  # a one-shot render is not the controller


def test_textfile_adds_up_across_renders(tmp_path):
    """Each render adds its counters and histogram to the textfile's; gauges are the latest."""
    path = tmp_path / "farm.prom"
    for _ in range(2):
        m = Metrics(controller=False, nvml=False)
        m.prepare("acme", {"video": "ffmpeg-motion"})
        m.completed("acme", "video", "ffmpeg-motion", {"cpu_seconds": 1.5}, 2.0)
        m.episode("acme", "delivered", 10.0)
        m.write_textfile(path)
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(path.read_text())
        for s in f.samples
    }
    assert samples[("farm_actions_total", (("outcome", "ok"), ("stage", "video"), ("studio", "acme")))] == 2
    assert samples[("farm_action_duration_seconds_count", (("stage", "video"),))] == 2
    assert samples[("farm_action_duration_seconds_bucket", (("le", "2.5"), ("stage", "video")))] == 2
    assert samples[("farm_delivered_video_seconds_total", (("studio", "acme"),))] == 20


class _FakeNvml:
    """Just enough of pynvml for two GPUs."""

    class NVMLError(Exception):
        pass

    def nvmlInit(self):
        pass

    def nvmlDeviceGetCount(self):
        return 2

    def nvmlDeviceGetHandleByIndex(self, i):
        return i

    def nvmlDeviceGetName(self, handle):
        return b"NVIDIA H100 80GB HBM3"

    def nvmlDeviceGetUtilizationRates(self, handle):
        return types.SimpleNamespace(gpu=[87, 3][handle])

    def nvmlDeviceGetMemoryInfo(self, handle):
        return types.SimpleNamespace(used=40 * 2**30, total=80 * 2**30)


def test_gpu_gauges_from_nvml_where_a_gpu_is(monkeypatch):
    """With pynvml and GPUs, utilisation and memory are read at each scrape."""
    monkeypatch.setitem(sys.modules, "pynvml", _FakeNvml())
    m = Metrics(nvml=True)
    gpu = {"gpu": "0", "gpu_model": "NVIDIA H100 80GB HBM3"}
    assert value(m, "farm_gpu_utilization_ratio", **gpu) == 0.87
    assert value(m, "farm_gpu_memory_used_bytes", **gpu | {"gpu": "1"}) == 40 * 2**30
    assert value(m, "farm_gpu_memory_total_bytes", **gpu) == 80 * 2**30


def test_no_gpu_no_gpu_series(monkeypatch):
    """Without pynvml, or with NVML that cannot start (no driver), there are no GPU series and no error."""
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails
    assert "farm_gpu_utilization_ratio" not in text(Metrics(nvml=True))
    broken = _FakeNvml()
    broken.nvmlInit = lambda: (_ for _ in ()).throw(broken.NVMLError("Driver Not Loaded"))
    monkeypatch.setitem(sys.modules, "pynvml", broken)
    assert "farm_gpu_utilization_ratio" not in text(Metrics(nvml=True))


def _tools_missing(*tools: str) -> str | None:
    missing = [t for t in tools or ("promtool", "prometheus-pushgateway") if shutil.which(t) is None]
    return (
        f"not installed: {', '.join(missing)} (apt-get install prometheus prometheus-pushgateway)" if missing else None
    )


@pytest.mark.prometheus
def test_promtool_accepts_the_output(tmp_path):
    """`promtool check metrics` passes on everything the farm exports (names, units, help, types)."""
    need(_tools_missing("promtool"))
    m = Metrics(prices=PRICES, accelerators={("video", "wan"): "H100"}, nvml=False)
    m.prepare("acme", {"video": "wan"})
    m.observe(
        event(
            "action.completed", {"usage": {"gpu_seconds": 3.0, "model": "wan"}, "started_at": 0.0, "finished_at": 2.0}
        ),
        action(),
    )
    m.observe(judge_event("action.completed", "pass", {"gpu_seconds": 1.0}), judge())
    m.stages({"video": 2}, {})
    m.batch(_status(held_for_review=1))
    m.write_textfile(tmp_path / "farm.prom")
    for exposition in (text(m), (tmp_path / "farm.prom").read_text()):
        proc = subprocess.run(["promtool", "check", "metrics"], input=exposition, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.fixture
def pushgateway(tmp_path):
    need(_tools_missing())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(tmp_path / "pushgateway.log", "wb")  # noqa: SIM115 - open while the Pushgateway runs
    proc = subprocess.Popen(
        [
            "prometheus-pushgateway",
            f"--web.listen-address=127.0.0.1:{port}",
            f"--persistence.file={tmp_path / 'pushgateway.data'}",
        ],  # not Debian's default file
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            urllib.request.urlopen(url + "/-/ready", timeout=1).read()
            break
        except OSError:
            time.sleep(0.1)
    yield url
    proc.terminate()
    proc.wait(timeout=10)
    log.close()


def _pushed(url: str) -> dict:
    body = urllib.request.urlopen(url + "/metrics", timeout=10).read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(body)
        if f.name.startswith("farm_")
        for s in f.samples
    }


@pytest.mark.prometheus
@pytest.mark.ray
@pytest.mark.media
@pytest.mark.e2e
def test_render_pushes_to_a_pushgateway_and_writes_a_textfile(tmp_path, pushgateway):
    """`farm render --pushgateway --metrics-textfile`: a cold render's 15 actions (with its judges and any
    retakes), then a warm one's cache hits of each of them, add up in the Pushgateway's group (job farm-render,
    this host) and in the textfile; each fresh verdict is one take, and the warm render's reused ones are none."""
    need(media_missing())
    episode = write_specs(tmp_path / "specs")
    textfile = tmp_path / "textfile" / "farm.prom"
    args = [
        sys.executable,
        "-m",
        "farm.cli",
        "render",
        str(episode),
        "--store",
        str(tmp_path / "store"),
        "--quiet",
        "--num-cpus",
        "2",
        "--studio",
        "acme",
        "--pushgateway",
        pushgateway,
        "--metrics-textfile",
        str(textfile),
    ]
    for _ in range(2):
        proc = subprocess.run(args, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr
    group = (("instance", socket.gethostname()), ("job", "farm-render"))
    pushed = _pushed(pushgateway)

    def total(name, **labels):
        want = set(labels.items()) | set(group)
        return sum(v for (n, lab), v in pushed.items() if n == name and want <= set(lab))

    ran = total("farm_actions_total", outcome="ok")
    judged = total("farm_actions_total", stage="judge", outcome="ok")  # the default judges of the embedded media
    assert ran - judged >= 15 and total("farm_actions_total", outcome="cached") == ran
    assert total("farm_takes_total") == judged
    assert total("farm_episodes_total", studio="acme", outcome="delivered") == 2
    assert total("farm_action_duration_seconds_count") == ran
    assert total("farm_cpu_seconds_total") > 0
    written = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(textfile.read_text())
        for s in f.samples
    }
    assert sum(v for (n, lab), v in written.items() if n == "farm_cache_hits_total") == ran
    check = subprocess.run(["promtool", "check", "metrics"], input=textfile.read_text(), capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_unreachable_pushgateway_fails_the_command_after_the_render(tmp_path, monkeypatch):
    """A push that cannot reach its gateway is reported and exits 1; it never hides."""
    from farm.cli import app as cli
    from farm.cli import render

    monkeypatch.setattr(render, "render_one", lambda *a, **k: _Result())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"
    assert cli.main(["render", str(tmp_path / "ep.yaml"), "--pushgateway", dead, "--quiet", "--json"]) == 1


class _Result:
    def summary(self):
        return {"video": "v"}
