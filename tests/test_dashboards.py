"""Dashboards and alert rules, checked against real software.

The dashboards are plain Grafana JSON (file provisioning and the dashboard sidecar's ConfigMaps load
the same files); the rules are Prometheus rule groups. ``promtool`` checks and unit-tests the rules;
a real Prometheus server (Debian's package) on loopback scrapes a real farm run, and every PromQL
expression of every panel and rule is sent to its HTTP API and must parse and return data.
"""

from __future__ import annotations

import copy
import json
import math
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.conftest import SMALL_SCRIPT, SMALL_SERIES, need

ROOT = Path(__file__).resolve().parent.parent
DASHBOARDS = sorted((ROOT / "dashboards").glob("*.json"))
ALERTS = ROOT / "dashboards" / "alerts.yaml"
# Grafana's variables, as a 24-hour view with every studio selected would send them
VARIABLES = {"$studio": ".*", "${studio}": ".*", "$__rate_interval": "5m", "$__range": "1h", "$__interval": "1m"}
NVML_ONLY = re.compile(r"farm_gpu_(utilization_ratio|memory_\w+_bytes)")
JUDGES_ONLY = re.compile(r"farm_judge_\w+|farm_takes_total\{[^}]*verdict=")  # data once a judge has judged


def prometheus_missing() -> str | None:
    missing = [t for t in ("prometheus", "promtool") if shutil.which(t) is None]
    return f"not installed: {', '.join(missing)} (apt-get install prometheus)" if missing else None


@pytest.fixture(autouse=True)
def _require_prometheus(request):
    if request.node.get_closest_marker("prometheus"):
        need(prometheus_missing())


def panels(node):
    for panel in node.get("panels", []):
        yield panel
        yield from panels(panel)


def expressions(dashboard) -> list[tuple[str, str]]:
    """(panel title, PromQL) of every target of every panel."""
    return [(p["title"], t["expr"]) for p in panels(dashboard) for t in p.get("targets", []) if t.get("expr")]


def substitute(expr: str) -> str:
    for name, value in sorted(VARIABLES.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace(name, value)
    assert "$" not in expr, f"a Grafana variable the test does not know: {expr}"
    return expr


def rules() -> list[dict]:
    return [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]


# -- the files themselves --------------------------------------------------------------------------------
def test_three_dashboards_as_plain_grafana_json():
    """Overview, spend and stages: unique uids, a Prometheus datasource variable every panel uses, no ids."""
    loaded = {p.name: json.loads(p.read_text(encoding="utf-8")) for p in DASHBOARDS}
    assert set(loaded) == {"farm-overview.json", "farm-spend.json", "farm-stages.json"}
    assert len({d["uid"] for d in loaded.values()}) == 3
    for name, d in loaded.items():
        assert d["title"] and d["schemaVersion"] >= 36 and "id" not in d, name
        variables = {v["name"]: v for v in d["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
        ids = [p["id"] for p in panels(d)]
        assert len(ids) == len(set(ids)), f"{name}: panel ids repeat"
        for p in panels(d):
            if p["type"] == "row":
                continue
            assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, (name, p["title"])
            assert p["targets"] and all(t["datasource"] == p["datasource"] for t in p["targets"]), (name, p["title"])
            refs = [t["refId"] for t in p["targets"]]
            assert len(refs) == len(set(refs))


def test_dashboards_fit_configmaps():
    """Each file can be a ConfigMap key (name, size) for Grafana's dashboard sidecar."""
    for path in DASHBOARDS:
        assert re.fullmatch(r"[-._a-zA-Z0-9]+", path.name)
        assert path.stat().st_size < 900_000
        assert json.loads(path.read_text(encoding="utf-8"))  # UTF-8 JSON, nothing to template


def test_every_metric_named_exists():
    """Dashboards and rules name only metrics the farm exports."""
    from prometheus_client import generate_latest

    from farm.observe.metrics import Metrics

    m = Metrics(nvml=False)
    m.prepare("s", {"video": "ffmpeg-motion", "judge": "frames"})
    m.stages({}, {})
    m.batch(
        {
            "batch": "b",
            "studio": "s",
            "status": "running",
            "episodes": {"total": 1, "delivered": 0, "failed": 0},
            "projected_finish": 1.0,
            "deadline": 2.0,
            "budget": {"tokens": 1},
            "spent": {"tokens": 0},
        }
    )
    exported = set(re.findall(r"^(farm_\w+?)(?:\{| )", generate_latest(m.registry).decode(), re.M))
    exported |= {"farm_gpu_utilization_ratio", "farm_gpu_memory_used_bytes", "farm_gpu_memory_total_bytes"}
    named = {
        n
        for path in DASHBOARDS
        for _, e in expressions(json.loads(path.read_text()))
        for n in re.findall(r"farm_\w+", e)
    }
    named |= {n for r in rules() for n in re.findall(r"farm_\w+", r["expr"])}
    assert named - exported == set()


def test_rules_cover_the_seven_alerts():
    """A batch missing its deadline, a budget 90% used, a high failure rate, a backend's low yield of judged takes,
    the controller down, its store down, GPUs that spend their time loading models."""
    alerts = {r["alert"]: r for r in rules()}
    assert set(alerts) == {
        "FarmBatchProjectedToMissDeadline",
        "FarmBatchBudgetNearlySpent",
        "FarmActionFailureRateHigh",
        "FarmBackendYieldLow",
        "FarmControllerDown",
        "FarmStoreDown",
        "FarmGpuLoadTimeHigh",
    }
    for rule in alerts.values():
        assert rule["labels"]["severity"] in ("warning", "critical") and rule["annotations"]["summary"] and rule["for"]


@pytest.mark.prometheus
def test_promtool_checks_the_rules():
    """`promtool check rules` accepts dashboards/alerts.yaml."""
    proc = subprocess.run(["promtool", "check", "rules", str(ALERTS)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


ANNOTATIONS = {
    "FarmBatchProjectedToMissDeadline": {
        "summary": "Batch late of acme is projected to miss its deadline",
        "description": 'Its slack (deadline minus projected finish) is -5m 0s. Look at the "Farm overview" and '
        '"Farm stages" dashboards for the queue and the bottleneck stage; raise the batch\'s priority '
        "or add capacity.",
    },
    "FarmBatchBudgetNearlySpent": {
        "summary": "Batch late of acme has used 95% of its money budget",
        "description": "New actions that cost money are held before projected spend would pass the cap, so the batch "
        "will stall there. Raise the budget or cancel the batch.",
    },
    "FarmActionFailureRateHigh": {
        "summary": "25% of dubbing attempts fail for acme",
        "description": "More than 10% of the dubbing stage's attempts failed in the last 15 minutes. The reasons are in "
        "the controller's logs (event action.failed) and in `farm report BATCH`.",
    },
    "FarmBackendYieldLow": {
        "summary": "Only 25% of wan's video takes pass their judges",
        "description": "Fewer than half of the takes judged in the last hour passed. Each failed take is made again (up "
        "to the series' takes.max), so the stage costs more and takes longer. Check the backend (its model, its "
        'settings) and the judges\' thresholds; "Yield by backend" on the "Farm stages" dashboard shows when it began.',
    },
    "FarmControllerDown": {
        "summary": "The farm controller is down or not scraped",
        "description": "No batch is being scheduled. Ray restarts the controller actor on failure; check `farm "
        "controller status` and the Ray head, and that Prometheus scrapes the controller's /metrics.",
    },
    "FarmStoreDown": {
        "summary": "The farm controller cannot write to its store",
        "description": "Nothing new is dispatched until the store answers again; finished work is kept and journaled "
        "then. Check the S3 endpoint or the store's disk (full or read-only); `farm controller status` shows the "
        "last error.",
    },
}


@pytest.mark.prometheus
def test_promtool_unit_tests_every_alert(tmp_path):
    """Each alert fires on the series that call for it, with its labels and rendered annotations, and stays
    quiet on healthy ones (promtool's rule unit tests)."""
    series = {
        'farm_batch_deadline_slack_seconds{batch="late",studio="acme"}': "-300x20",
        'farm_batch_deadline_slack_seconds{batch="fine",studio="acme"}': "600x20",
        'farm_batch_budget_used_ratio{batch="late",studio="acme",cap="money"}': "0.5 0.8 0.95x20",
        'farm_batch_budget_used_ratio{batch="fine",studio="acme",cap="tokens"}': "0.1x20",
        'farm_actions_total{studio="acme",stage="dubbing",outcome="failed"}': "0+1x30",
        'farm_actions_total{studio="acme",stage="dubbing",outcome="ok"}': "0+3x30",
        'farm_actions_total{studio="acme",stage="video",outcome="failed"}': "0x30",
        'farm_actions_total{studio="acme",stage="video",outcome="ok"}': "0+5x30",
        # yield 1/4 over 40 takes an hour: low; 3/4: fine; 0/6 an hour: low, but too few takes to say
        **_takes("video", "wan", passed=1, failed=3),
        **_takes("dubbing", "espeak", passed=3, failed=1),
        **_takes("image", "quiet", passed=0, failed=0.1),
        'farm_controller_up{job="farm"}': "1x5 stale",
        'farm_store_up{job="farm"}': "1x10 0x15",
    }
    expected = {
        "FarmBatchProjectedToMissDeadline": {"severity": "warning", "batch": "late", "studio": "acme"},
        "FarmBatchBudgetNearlySpent": {"severity": "warning", "batch": "late", "studio": "acme", "cap": "money"},
        "FarmActionFailureRateHigh": {"severity": "warning", "studio": "acme", "stage": "dubbing"},
        "FarmBackendYieldLow": {"severity": "warning", "stage": "video", "backend": "wan"},
        "FarmControllerDown": {"severity": "critical"},
        "FarmStoreDown": {"severity": "critical", "job": "farm"},
    }
    alert_tests = [
        {
            "eval_time": "20m",
            "alertname": name,
            "exp_alerts": [{"exp_labels": labels, "exp_annotations": ANNOTATIONS[name]}],
        }
        for name, labels in expected.items()
    ]
    alert_tests += [
        {"eval_time": "3m", "alertname": "FarmControllerDown", "exp_alerts": []},
        {"eval_time": "10m", "alertname": "FarmStoreDown", "exp_alerts": []},
        {"eval_time": "11m", "alertname": "FarmStoreDown", "exp_alerts": []},  # down for less than a minute
        {"eval_time": "1m", "alertname": "FarmBatchBudgetNearlySpent", "exp_alerts": []},
        {"eval_time": "8m", "alertname": "FarmBackendYieldLow", "exp_alerts": []},  # low for less than 10 minutes
        {  # an hour later, still only wan: the quiet backend's 6 takes an hour are too few to judge it by
            "eval_time": "80m",
            "alertname": "FarmBackendYieldLow",
            "exp_alerts": [
                {"exp_labels": expected["FarmBackendYieldLow"], "exp_annotations": ANNOTATIONS["FarmBackendYieldLow"]}
            ],
        },
    ]
    unit = {
        "rule_files": [str(ALERTS)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [{"series": s, "values": v} for s, v in series.items()],
                "alert_rule_test": alert_tests,
            }
        ],
    }
    path = tmp_path / "alerts_test.yaml"
    path.write_text(yaml.safe_dump(unit, sort_keys=False))
    proc = subprocess.run(["promtool", "test", "rules", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _takes(stage: str, backend: str, passed: float, failed: float, studio: str = "acme") -> dict[str, str]:
    """Input series of farm_takes_total for promtool: ``passed`` and ``failed`` takes a minute, for 90 minutes."""
    base = f'farm_takes_total{{studio="{studio}",stage="{stage}",backend="{backend}",verdict='
    return {base + '"pass"}': f"0+{passed}x90", base + '"fail"}': f"0+{failed}x90"}


@pytest.mark.prometheus
def test_yield_panel_is_the_pass_share_per_backend(tmp_path):
    """The "Yield by backend" panel's PromQL, evaluated by promtool on takes of two studios: passed over judged
    takes per stage and backend in the last hour, and no series for a backend that judged nothing."""
    stages = json.loads((ROOT / "dashboards" / "farm-stages.json").read_text(encoding="utf-8"))
    expr = next(e for title, e in expressions(stages) if title == "Yield by backend")
    series = {
        **_takes("video", "wan", passed=1, failed=3),
        **_takes("video", "wan", passed=2, failed=2, studio="zen"),  # 3 of 8 a minute over both studios
        **_takes("dubbing", "espeak", passed=3, failed=1),
        **_takes("image", "idle", passed=0, failed=0),
    }
    unit = {
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [{"series": s, "values": v} for s, v in series.items()],
                "promql_expr_test": [
                    {
                        "expr": substitute(expr),
                        "eval_time": "80m",
                        "exp_samples": [
                            {"labels": '{stage="video", backend="wan"}', "value": 0.375},
                            {"labels": '{stage="dubbing", backend="espeak"}', "value": 0.75},
                        ],
                    }
                ],
            }
        ],
    }
    path = tmp_path / "yield_test.yaml"
    path.write_text(yaml.safe_dump(unit, sort_keys=False))
    proc = subprocess.run(["promtool", "test", "rules", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# -- a real Prometheus scraping a real farm run ---------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Prometheus:
    """A Prometheus server on loopback with a generated config; ``query`` uses the HTTP API."""

    def __init__(self, folder: Path, targets: list[str], rule_files: list[str]):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {
            "global": {"scrape_interval": "500ms", "scrape_timeout": "500ms", "evaluation_interval": "500ms"},
            "rule_files": rule_files,
            "scrape_configs": [{"job_name": "farm", "static_configs": [{"targets": targets}]}],
        }
        (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log = open(folder / "prometheus.log", "wb")  # noqa: SIM115 - open while Prometheus runs
        self.proc = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={folder / 'prometheus.yml'}",
                f"--storage.tsdb.path={folder / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(self.url + "/-/ready", timeout=1).read()
                return
            except OSError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.2)
        self.close()
        raise AssertionError(f"prometheus did not start: {(folder / 'prometheus.log').read_text()[-2000:]}")

    def api(self, path: str, **params) -> dict:
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params, doseq=True)}"
        try:
            with urllib.request.urlopen(url, timeout=30) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:  # a bad query answers 400 with the error in JSON
            return json.loads(exc.read())

    def query(self, expr: str, at: float | None = None) -> dict:
        return self.api("query", query=expr, **({"time": f"{at:.3f}"} if at is not None else {}))

    def wait_for(self, expr: str, timeout: float = 60.0) -> float:
        """Poll until ``expr`` returns data; return the evaluation time that did."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            at = time.time()
            answer = self.query(expr, at)
            if answer["status"] == "success" and answer["data"]["result"]:
                return at
            time.sleep(0.25)
        raise AssertionError(f"no data for {expr} within {timeout}s")

    def close(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def _payload(episodes, **terms):
    from farm.core.spec import Episode, Series

    return {
        "studio": "acme",
        "namespace": "acme",
        "priority": "normal",
        "name": "prometheus test",
        "webhook": None,
        "budget": {"tokens": 1_000_000, "gpu_seconds": 36_000, "money": 100.0},
        "deadline": time.time() + 3600,
        "episodes": [
            {
                "series": Series.model_validate(s).model_dump(mode="json"),
                "episode": Episode.model_validate(e).model_dump(mode="json"),
            }
            for s, e in episodes
        ],
    } | terms


def _episode(number: int, first_line: str | None = None):
    script = copy.deepcopy(SMALL_SCRIPT)
    if first_line:
        script["scenes"][1]["shots"][0]["lines"][0]["text"] = first_line
    return {"series": "series.yaml", "number": number, "title": f"Episode {number}", "script": script}


def _finish(service, batch_id, timeout=300):
    deadline = time.monotonic() + timeout
    while service.status(batch_id)["status"] == "running":
        assert time.monotonic() < deadline, service.status(batch_id)
        time.sleep(0.1)
    return service.status(batch_id)


@pytest.fixture(scope="module")
def scraped(tmp_path_factory, ray_local):
    """A controller in this process runs three real batches on a local Ray while Prometheus scrapes it:

    A: the small episode (delivered; it also creates the studio's series at zero, scraped before
       anything else happens, so the first failure shows in rate()); B: the small episode again
       (every action reused: cache hits) and one whose character has a voice espeak-ng does not
       know (its line fails, the episode fails with the reason); C: an episode of a new, full-size
       series, deadline already past, scraped at least twice while it runs. Yields (prometheus,
       service, T, batch ids) where T is a time at which C ran and Prometheus had its series.
    """
    need(prometheus_missing())
    from tests.conftest import media_missing

    need(media_missing())
    from farm.service.host import ControllerService
    from farm.settings import Settings

    folder = tmp_path_factory.mktemp("prometheus")
    port = free_port()
    settings = Settings(
        store=str(folder / "store"), metrics_port=port, prices={"per_1k_tokens": 0.002, "per_gpu_hour": 2.5}
    )
    service = ControllerService(settings.model_dump(mode="json"))
    prom = Prometheus(folder, [f"127.0.0.1:{port}"], [str(ALERTS)])
    try:
        prom.wait_for('up{job="farm"} == 1')
        a = service.submit(_payload([(SMALL_SERIES, _episode(1))]))
        assert _finish(service, a)["episodes"]["delivered"] == 1
        prom.wait_for('farm_episodes_total{studio="acme", outcome="delivered"} == 1')
        bad = copy.deepcopy(SMALL_SERIES) | {"id": "bad-voice"}
        bad["characters"][1]["voice"]["voice"] = "zz-nope"
        b = service.submit(_payload([(SMALL_SERIES, _episode(1)), (bad, _episode(2))]))
        status = _finish(service, b)
        assert status["episodes"] == {"total": 2, "delivered": 1, "failed": 1, "running": 0}, status
        prom.wait_for('farm_episodes_total{studio="acme", outcome="failed"} == 1')
        big = copy.deepcopy(SMALL_SERIES) | {
            "id": "full-size",
            "resolution": {"width": 1080, "height": 1920},
            "fps": 30,
        }
        c = service.submit(_payload([(big, _episode(3, "Something new to say, slowly."))], deadline=time.time() - 60))
        at = prom.wait_for(f'count_over_time(farm_batch_deadline_slack_seconds{{batch="{c}"}}[1m]) >= 2', timeout=30)
        assert service.status(c)["status"] == "running", "batch C finished before Prometheus saw it twice"
        yield prom, service, at, {"A": a, "B": b, "C": c}
    finally:
        prom.close()
        service.stop()
        service.runtime.shutdown()


def _check(prom, expr, at, name, require_data=True):
    answer = prom.query(substitute(expr), at)
    assert answer["status"] == "success", f"{name}: {expr}\n  {answer.get('errorType')}: {answer.get('error')}"
    result = answer["data"]["result"]
    values = (
        [float(r["value"][1]) for r in result]
        if answer["data"]["resultType"] == "vector"
        else [float(result[1])]
        if answer["data"]["resultType"] == "scalar"
        else []
    )
    if require_data:
        assert result, f"{name}: no data for {expr}"
        assert any(math.isfinite(v) for v in values), f"{name}: only NaN or infinite values for {expr}: {result}"
    return result


@pytest.mark.prometheus
@pytest.mark.ray
@pytest.mark.media
@pytest.mark.e2e
def test_every_panel_expression_parses_and_returns_data(scraped):
    """Each PromQL expression of each dashboard panel returns data from the scraped run (GPU panels
    only where NVML exported GPU gauges: this machine's farm has no GPU; yield and judging spend only
    where a judge judged a take in the run)."""
    prom, _, at, _ = scraped
    has_gpu = bool(prom.query("farm_gpu_utilization_ratio", at)["data"]["result"])
    judged = bool(prom.query("sum(farm_takes_total) > 0", at)["data"]["result"])
    checked = 0
    for path in DASHBOARDS:
        for title, expr in expressions(json.loads(path.read_text(encoding="utf-8"))):
            optional = (NVML_ONLY.search(expr) and not has_gpu) or (JUDGES_ONLY.search(expr) and not judged)
            _check(prom, expr, at, f"{path.name}: {title}", require_data=not optional)
            checked += 1
    assert checked >= 50


@pytest.mark.prometheus
@pytest.mark.ray
@pytest.mark.media
@pytest.mark.e2e
def test_dashboard_variables_find_the_studio(scraped):
    """The studio variable's label_values() query lists the studio of the run."""
    prom, _, at, _ = scraped
    for path in DASHBOARDS:
        var = next(v for v in json.loads(path.read_text())["templating"]["list"] if v["name"] == "studio")
        metric, label = re.fullmatch(r"label_values\((\w+), (\w+)\)", var["definition"]).groups()
        assert "acme" in prom.api(f"label/{label}/values", **{"match[]": metric})["data"]


@pytest.mark.prometheus
@pytest.mark.ray
@pytest.mark.media
@pytest.mark.e2e
def test_alerts_fire_on_the_run(scraped):
    """At T the late batch's deadline alert and the failure-rate alert (the unknown voice) return data;
    the budget alert's quantity is there, below its threshold (no backend here reports GPU-seconds or
    tokens, so no budget fills: promtool's unit test makes it fire); Prometheus evaluates every rule
    without error and holds the two alerts pending or firing."""
    prom, _, at, batches = scraped
    alerts = {r["alert"]: r["expr"] for r in rules()}
    late = _check(prom, alerts["FarmBatchProjectedToMissDeadline"], at, "deadline")
    assert {r["metric"]["batch"] for r in late} == {batches["C"]}
    failing = _check(prom, alerts["FarmActionFailureRateHigh"], at, "failures")
    assert {(r["metric"]["studio"], r["metric"]["stage"]) for r in failing} == {("acme", "dubbing")}
    assert _check(prom, alerts["FarmBatchBudgetNearlySpent"], at, "budget", require_data=False) == []
    used = _check(prom, alerts["FarmBatchBudgetNearlySpent"].replace(">=", ">= bool"), at, "budget quantity")
    assert {r["metric"]["cap"] for r in used} == {"tokens", "gpu_seconds", "money"}
    assert _check(prom, alerts["FarmControllerDown"], at, "controller", require_data=False) == []
    assert _check(prom, alerts["FarmStoreDown"], at, "store", require_data=False) == []  # it answered all along
    _check(prom, alerts["FarmBackendYieldLow"], at, "yield", require_data=False)  # fires or not as the judges found
    groups = prom.api("rules")["data"]["groups"]
    assert [r["health"] for g in groups for r in g["rules"]] == ["ok"] * len(rules()), groups
    active = {a["labels"]["alertname"] for a in prom.api("alerts")["data"]["alerts"]}
    assert {"FarmBatchProjectedToMissDeadline", "FarmActionFailureRateHigh"} <= active


@pytest.mark.prometheus
@pytest.mark.ray
@pytest.mark.media
@pytest.mark.e2e
def test_live_metrics_pass_promtool_and_stay_bounded(scraped):
    """The controller's /metrics passes `promtool check metrics`, and no label carries an episode or action id."""
    prom, service, _, _ = scraped
    port = service.settings.metrics_port
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    proc = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    labels = set(re.findall(r"[{,](\w+)=", text))
    assert labels <= {
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
        "gpu",
        "gpu_model",
        "state",
    }
    keys = set(service.controller.actions)
    values = set(re.findall(r'="([^"]*)"', text))
    assert not values & (set(keys) | {k[:12] for k in keys} | {"ep001", "ep002", "ep003"})


@pytest.mark.prometheus
@pytest.mark.ray
@pytest.mark.media
@pytest.mark.e2e
def test_controller_down_alert_fires_when_it_stops_answering(scraped):
    """Once the controller's /metrics stops answering, FarmControllerDown's expression returns data."""
    prom, service, _, _ = scraped
    expr = next(r["expr"] for r in rules() if r["alert"] == "FarmControllerDown")
    service.metrics.close()
    prom.wait_for(expr, timeout=30)
    assert prom.query('up{job="farm"}')["data"]["result"][0]["value"][1] == "0"
