"""The Helm chart (helm/farm): lint, render, schema, and how the controller, Ray and monitoring are wired."""

from __future__ import annotations

import json
import shlex
import subprocess
import tarfile

import pytest
import yaml

from farm.policy import Prices, RetryPolicy, Share
from farm.settings import Settings
from tests.deploy.conftest import CHART, DASHBOARDS, NAMESPACE, RELEASE, merged, values_file

CI_VALUES = sorted(p.name for p in (CHART / "ci").glob("*-values.yaml"))
# farm.settings fields the chart sets itself (store.*, controller.*, the Ray address) or never needs.
CHART_OWNED = {
    "store",
    "s3_endpoint",
    "s3_access_key",
    "s3_secret_key",
    "s3_secure",
    "s3_region",
    "ray_address",
    "metrics_port",
    "controller_resources",
    "num_cpus",
}


def containers(pod_spec: dict) -> list[dict]:
    return pod_spec.get("containers", []) + pod_spec.get("initContainers", [])


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def ray_pod_specs(cluster: dict) -> list[dict]:
    spec = cluster["spec"]
    return [spec["headGroupSpec"]["template"]["spec"]] + [g["template"]["spec"] for g in spec["workerGroupSpecs"]]


def shell_resources(value: str) -> dict:
    """What ``ray start --resources=<value>`` receives once KubeRay's bash line is parsed."""
    (arg,) = shlex.split(f"--resources={value}")
    return json.loads(arg.split("=", 1)[1])


# -- lint and render -------------------------------------------------------------------------------


@pytest.mark.parametrize("values_name", [None, *CI_VALUES])
def test_strict_lint_passes(helm, chart, values_name):
    """`helm lint --strict` finds no error or warning with the default values and each ci/ values file."""
    values = values_file(values_name) if values_name else None
    report = helm.lint(chart.path, values, strict=True, namespace=NAMESPACE)
    problems = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
    assert report["total_charts_linted"] == 1 and not problems, problems


def test_default_values_render_a_cpu_farm_with_minio_and_monitoring(chart):
    """Defaults: RayCluster, controller, its metrics Service, MinIO with a volume, monitors; no GPU group, no Secret."""
    r = chart()
    assert {
        "RayCluster",
        "Deployment",
        "Service",
        "ConfigMap",
        "PersistentVolumeClaim",
        "ServiceMonitor",
        "PodMonitor",
    } <= r.kinds()
    assert "Secret" not in r.kinds()  # the default credentials come from an existing Secret
    groups = r.one("RayCluster")["spec"]["workerGroupSpecs"]
    assert [g["groupName"] for g in groups] == ["cpu"]
    assert {d["metadata"]["name"] for d in r.all("Deployment")} == {f"{RELEASE}-controller", f"{RELEASE}-minio"}


def test_gpu_values_render_one_group_per_accelerator(chart, gpu_values):
    """Each GPU group declares nvidia.com/gpu, Ray's num-gpus and accelerator_type:<name>, with its placement."""
    r = chart(gpu_values)
    groups = {g["groupName"]: g for g in r.one("RayCluster")["spec"]["workerGroupSpecs"]}
    for spec in gpu_values["ray"]["gpuGroups"]:
        group = groups[spec["groupName"]]
        container = group["template"]["spec"]["containers"][0]
        gpus = spec["gpusPerPod"]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == gpus
        assert container["resources"]["requests"]["nvidia.com/gpu"] == gpus
        assert container["image"].endswith("-cuda")
        assert group["rayStartParams"]["num-gpus"] == str(gpus)
        assert shell_resources(group["rayStartParams"]["resources"]) == {f"accelerator_type:{spec['accelerator']}": 1}
        assert (group["minReplicas"], group["maxReplicas"]) == (spec["minReplicas"], spec["maxReplicas"])
        assert group["template"]["spec"]["nodeSelector"] == spec["nodeSelector"]
        default_tolerations = chart.chart.values["ray"]["gpuTolerations"]
        assert group["template"]["spec"]["tolerations"] == spec.get("tolerations", default_tolerations)
    assert "minReplicas 0" in r.notes  # the a100 group starts empty: NOTES says what that means


def test_release_names_stay_short_enough_for_kuberay(chart):
    """KubeRay names pods and services after the RayCluster: the chart keeps it to 40 characters."""
    r = chart(name="a-very-long-release-name-for-the-nightly-renders")
    name = r.one("RayCluster")["metadata"]["name"]
    assert len(name) <= 40 and not name.endswith("-")


# -- the schema and the checks it cannot make ------------------------------------------------------

WRONG_VALUES = [
    ({"workers": {"replicas": 2}}, "additional properties 'workers'"),
    ({"ray": {"cpuWorkers": {"minReplicas": -1}}}, "/ray/cpuWorkers/minReplicas"),
    ({"ray": {"gpuGroups": [{"groupName": "h100", "maxReplicas": 4}]}}, "missing property 'accelerator'"),
    (
        {"ray": {"gpuGroups": [{"groupName": "H100 nodes", "accelerator": "H100", "maxReplicas": 4}]}},
        "/ray/gpuGroups/0/groupName",
    ),
    ({"ray": {"auth": {"mode": "tokens"}}}, "/ray/auth/mode"),
    ({"settings": {"stage_resource": {"video": {"num_gpus": 1}}}}, "additional properties 'stage_resource'"),
    ({"settings": {"s3_secret_key": "hunter2hunter2"}}, "additional properties 's3_secret_key'"),
    ({"settings": {"stage_resources": {"vidoe": {"num_gpus": 1}}}}, "/settings/stage_resources"),
    ({"store": {"url": "./farm-store"}}, "/store/url"),
    ({"store": {"s3": {"existingSecret": ""}}}, "/store/s3/secretKey"),
    ({"store": {"s3": {"existingSecret": "", "accessKey": "farm", "secretKey": "short"}}}, "/store/s3/secretKey"),
    ({"minio": {"enabled": False}}, "/store/s3/endpoint"),
    ({"nightly": {"schedule": "every night at one"}}, "/nightly/schedule"),
    ({"nightly": {"kind": "Job"}}, "/nightly/kind"),
    ({"monitoring": {"podMonitor": {"interval": "30"}}}, "/monitoring/podMonitor/interval"),
    (
        {"settings": {"backends": {"llm": {"kind": "openai-chat", "api_key": "sk-in-values"}}}},
        "/settings/backends/llm/api_key",
    ),
    ({"settings": {"backends": {"llm": {"model": "m"}}}}, "/settings/backends/llm"),
    ({"controller": {"metricsPort": 80}}, "/controller/metricsPort"),
    ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
]


@pytest.mark.parametrize("values,where", WRONG_VALUES, ids=[w for _, w in WRONG_VALUES])
def test_schema_refuses_wrong_values(helm, chart, values, where):
    """values.schema.json refuses the values, and the message names where the mistake is."""
    with pytest.raises(helm.HelmValuesError) as refused:
        chart(values)
    assert where in str(refused.value)


CHECKS = [
    ({"ray": {"gpuGroups": [{"groupName": "cpu", "accelerator": "L4", "maxReplicas": 2}]}}, "is used twice"),
    (
        {"settings": {"stage_resources": {"video": {"num_gpus": 1, "accelerator": "H100"}}}},
        'asks for accelerator "H100" but no ray.gpuGroups entry declares it',
    ),
    ({"nightly": {"enabled": True}}, 'nightly.files has no "nightly.yaml"'),
]


@pytest.mark.parametrize("values,message", CHECKS, ids=["duplicate-group", "undeclared-accelerator", "no-batch-file"])
def test_render_refuses_values_the_schema_cannot_judge(helm, chart, values, message):
    """Cross-field mistakes fail the render with a sentence that says what to fix."""
    with pytest.raises(helm.HelmError) as refused:
        chart(values)
    assert message in str(refused.value)


def test_schema_accepts_the_shipped_values(chart, gpu_values):
    """The defaults and every ci/ values file pass the schema."""
    chart.chart.validate_schema(None)
    for name in CI_VALUES:
        chart.chart.validate_schema(values_file(name))
    chart.chart.validate_schema(gpu_values)


def test_schema_settings_are_the_farms_settings():
    """Every farm setting is either settable through `settings` or set by the chart, and nothing else is."""
    schema = json.loads((CHART / "values.schema.json").read_text(encoding="utf-8"))
    settable = set(schema["properties"]["settings"]["properties"])
    farm = set(Settings.model_fields)
    assert settable.isdisjoint(CHART_OWNED)
    assert settable | CHART_OWNED == farm, (
        f"farm settings unknown to the chart: {sorted(farm - settable - CHART_OWNED)}; "
        f"chart settings unknown to the farm: {sorted((settable | CHART_OWNED) - farm)}"
    )


def test_rendered_settings_are_valid_farm_settings(chart, gpu_values):
    """The settings ConfigMap, read as the controller reads its environment, is valid for farm.settings."""
    data = chart(gpu_values).one("ConfigMap", f"{RELEASE}-settings")["data"]
    env = dict(data, FARM_S3_ACCESS_KEY="k", FARM_S3_SECRET_KEY="s")
    settings = Settings.from_env(env)
    assert settings.store == gpu_values["store"]["url"]
    assert settings.s3_endpoint == gpu_values["store"]["s3"]["endpoint"] and settings.s3_secure
    assert settings.controller_resources == {"farm_controller": 1.0}
    assert settings.stage_resources == gpu_values["settings"]["stage_resources"]
    Prices(**settings.prices), RetryPolicy(**settings.retry), [Share(**s) for s in settings.shares]
    settings.store_spec()


# -- the controller, its /metrics and Ray --------------------------------------------------------------


def test_controller_actor_lands_on_the_head_and_its_metrics_are_served_from_there(chart):
    """Head declares farm_controller and port farm-metrics; the Service and ServiceMonitor lead there."""
    r = chart()
    cluster = r.one("RayCluster")
    cluster_name = cluster["metadata"]["name"]
    head = cluster["spec"]["headGroupSpec"]
    assert shell_resources(head["rayStartParams"]["resources"]) == {"farm_controller": 1}
    for group in cluster["spec"]["workerGroupSpecs"]:
        assert "farm_controller" not in group["rayStartParams"].get("resources", "")
    settings = r.one("ConfigMap", f"{RELEASE}-settings")["data"]
    assert json.loads(settings["FARM_CONTROLLER_RESOURCES"]) == {"farm_controller": 1}
    ports = {p["name"]: p["containerPort"] for p in head["template"]["spec"]["containers"][0]["ports"]}
    assert ports["farm-metrics"] == int(settings["FARM_METRICS_PORT"]) == 9108
    assert ports["client"] == 10001 and ports["metrics"] == 8080

    service = r.one("Service", f"{RELEASE}-controller-metrics")
    assert service["spec"]["selector"] == {"ray.io/cluster": cluster_name, "ray.io/node-type": "head"}
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] == "farm-metrics"
    monitor = r.one("ServiceMonitor")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] == port["name"]

    deployment = r.one("Deployment", f"{RELEASE}-controller")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env = env_of(container)
    assert env["FARM_RAY_ADDRESS"]["value"] == f"ray://{cluster_name}-head-svc.{NAMESPACE}.svc:10001"
    assert env["FARM_METRICS_HOST"]["value"].startswith(service["metadata"]["name"] + ".")
    script = r.one("ConfigMap", f"{RELEASE}-controller-script")["data"]["keep-controller.sh"]
    assert "farm controller start" in script and container["command"][-1].endswith("keep-controller.sh")


def test_podmonitor_scrapes_ray_metrics_on_every_ray_pod(chart, gpu_values):
    """The PodMonitor selects the RayCluster's pods, and every Ray container names port 8080 'metrics'."""
    r = chart(gpu_values)
    cluster = r.one("RayCluster")
    monitor = r.one("PodMonitor")
    assert monitor["spec"]["selector"]["matchLabels"] == {"ray.io/cluster": cluster["metadata"]["name"]}
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    endpoint = monitor["spec"]["podMetricsEndpoints"][0]["port"]
    for pod in ray_pod_specs(cluster):
        ports = {p["name"]: p["containerPort"] for p in pod["containers"][0]["ports"]}
        assert ports[endpoint] == 8080


@pytest.mark.parametrize("mode", ["token", "disabled"])
def test_ray_auth_mode_is_the_same_in_every_pod(chart, gpu_values, mode):
    """RAY_AUTH_MODE reaches head, workers, autoscaler, controller and nightly job; the token from one Secret."""
    values = merged(gpu_values, **{"ray.auth.mode": mode, "nightly.kind": "CronJob"})
    r = chart(values)
    cluster = r.one("RayCluster")
    envs = [env_of(c) for pod in ray_pod_specs(cluster) for c in pod["containers"]]
    envs.append({e["name"]: e for e in cluster["spec"]["autoscalerOptions"]["env"]})
    for kind in ("Deployment", "CronJob"):
        for obj in r.all(kind):
            if obj["metadata"]["name"].endswith("-minio"):
                continue
            pod = (
                obj["spec"]["template"]["spec"]
                if kind == "Deployment"
                else obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
            )
            envs += [env_of(c) for c in containers(pod)]
    assert len(envs) >= 8
    assert cluster["spec"]["authOptions"]["mode"] == mode
    for env in envs:
        assert env["RAY_AUTH_MODE"]["value"] == mode
        if mode == "token":
            ref = env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]
            assert ref == {"name": "farm-ray-token", "key": "auth_token"}
        else:
            assert "RAY_AUTH_TOKEN" not in env
    assert cluster["spec"]["authOptions"].get("secretName") == ("farm-ray-token" if mode == "token" else None)


def test_token_defaults_to_the_secret_kuberay_generates(chart):
    """Without ray.auth.secretName the pods read the Secret KubeRay creates, named like the RayCluster."""
    r = chart()
    cluster = r.one("RayCluster")
    assert cluster["spec"]["authOptions"] == {"mode": "token"}
    controller = r.one("Deployment", f"{RELEASE}-controller")["spec"]["template"]["spec"]["containers"][0]
    ref = env_of(controller)["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": cluster["metadata"]["name"], "key": "auth_token"}


def test_webhook_secrets_reach_the_head_where_the_actor_signs(chart, gpu_values):
    """A batch's webhook.secret_env is read by the controller actor, on the head pod."""
    head = chart(gpu_values).one("RayCluster")["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    ref = env_of(head)["FARM_WEBHOOK_SECRET"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "farm-webhooks", "key": "acme"}


# -- credentials ------------------------------------------------------------------------------------


def _s3_env(obj: dict) -> list[dict]:
    pod = obj["spec"]["template"]["spec"]
    return [
        e
        for c in containers(pod)
        for e in c.get("env", [])
        if e["name"] in ("FARM_S3_ACCESS_KEY", "FARM_S3_SECRET_KEY", "MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD")
    ]


@pytest.mark.parametrize("own_secret", [False, True], ids=["existing-secret", "chart-secret"])
def test_credentials_come_only_from_a_secret(chart, own_secret):
    """S3 and MinIO credentials are secretKeyRefs, never values in a manifest or ConfigMap."""
    values = (
        {"store": {"s3": {"existingSecret": "", "accessKey": "farm", "secretKey": "a-long-secret-key"}}}
        if own_secret
        else None
    )
    r = chart(values)
    secret_name = f"{RELEASE}-s3" if own_secret else "farm-s3"
    for name in (f"{RELEASE}-controller", f"{RELEASE}-minio"):
        env = _s3_env(r.one("Deployment", name))
        assert len(env) == 2
        for e in env:
            assert "value" not in e and e["valueFrom"]["secretKeyRef"]["name"] == secret_name
    for cm in r.all("ConfigMap"):
        assert not any("KEY" in k or "PASSWORD" in k for k in cm.get("data", {}))
        assert "a-long-secret-key" not in json.dumps(cm)
    assert [s["metadata"]["name"] for s in r.all("Secret")] == ([secret_name] if own_secret else [])


# -- dashboards and alert rules ---------------------------------------------------------------------


def _dashboard_maps(r) -> dict[str, dict]:
    return {k: cm for cm in r.all("ConfigMap") for k in cm.get("data", {}) if k.endswith(".json")}


def _check_dashboards(r, files: dict[str, str]) -> None:
    maps = _dashboard_maps(r)
    assert set(maps) == set(files)
    for name, text in files.items():
        cm = maps[name]
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert json.loads(cm["data"][name]) == json.loads(text)


def test_every_dashboard_file_gets_a_configmap_for_grafanas_sidecar(chart):
    """Each dashboards/*.json in the repository (there may be none yet) is one labelled ConfigMap."""
    files = (
        {p.name: p.read_text(encoding="utf-8") for p in sorted(DASHBOARDS.glob("*.json"))}
        if DASHBOARDS.is_dir()
        else {}
    )
    _check_dashboards(chart(), files)


def test_placeholder_dashboard_gets_a_configmap_and_other_files_do_not(placeholder_chart):
    """The mechanism, with a placeholder: JSON files become ConfigMaps, README and rules do not."""
    from tests.deploy.conftest import PLACEHOLDER_DASHBOARD

    r = placeholder_chart()
    _check_dashboards(r, {"placeholder.json": PLACEHOLDER_DASHBOARD})
    cm = next(iter(_dashboard_maps(r).values()))
    assert cm["metadata"]["annotations"] == {"grafana_folder": "Farm"}


def test_prometheus_rule_carries_the_repositorys_alert_groups(chart):
    """With dashboards/alerts.yaml, the PrometheusRule holds exactly its groups; without it there is none."""
    alerts = DASHBOARDS / "alerts.yaml"
    rules = chart().all("PrometheusRule")
    if not alerts.is_file():
        assert rules == []
        return
    (rule,) = rules
    assert rule["spec"]["groups"] == yaml.safe_load(alerts.read_text(encoding="utf-8"))["groups"]


def test_prometheus_rule_carries_placeholder_groups_verbatim(placeholder_chart):
    """Rule templates such as {{ $labels.instance }} are Prometheus's: Helm leaves them as they are."""
    from tests.deploy.conftest import PLACEHOLDER_ALERTS

    rule = placeholder_chart().one("PrometheusRule")
    assert rule["spec"]["groups"] == yaml.safe_load(PLACEHOLDER_ALERTS)["groups"]
    assert "{{ $labels.instance }}" in rule["spec"]["groups"][0]["rules"][0]["annotations"]["summary"]
    off = placeholder_chart(
        {"monitoring": {"prometheusRule": {"enabled": False}, "grafanaDashboards": {"enabled": False}}}
    )
    assert off.all("PrometheusRule") == [] and _dashboard_maps(off) == {}


def test_chart_reads_dashboards_through_a_link_to_the_repository(helm, tmp_path):
    """helm/farm/dashboards links to dashboards/, and the bundled Helm follows it when it resolves."""
    link = CHART / "dashboards"
    assert link.is_symlink() and str(link.readlink()) == "../../dashboards"
    if not DASHBOARDS.is_dir():
        pytest.skip("dashboards/ does not exist yet: the link resolves once it does")
    with helm.Chart.load(CHART) as real:
        names = {f["name"] for f in real.files if f["name"].startswith("dashboards/")}
    expected = {f"dashboards/{p.name}" for p in DASHBOARDS.iterdir() if p.is_file() and p.suffix != ".md"}
    assert names == expected
    archive = helm.package(CHART, destination=tmp_path)  # `helm package` stores the files, not the link
    with tarfile.open(archive) as tgz:
        packed = {m.name.removeprefix("farm/") for m in tgz.getmembers() if m.isfile()}
    assert expected <= packed and "files/keep-controller.sh" in packed


def test_controller_loop_is_valid_sh():
    """files/keep-controller.sh, run by the controller pod and by compose, parses as POSIX sh."""
    script = CHART / "files" / "keep-controller.sh"
    subprocess.run(["sh", "-n", str(script)], check=True)


# -- the nightly batch ------------------------------------------------------------------------------


def test_nightly_cronjob_submits_the_batch_from_its_specs(chart, gpu_values):
    """kind CronJob: a pod runs `farm batch submit /specs/<batch>` with every spec file mounted at its path."""
    r = chart(merged(gpu_values, **{"nightly.kind": "CronJob"}))
    cron = r.one("CronJob")
    assert cron["spec"]["schedule"] == "30 1 * * *" and cron["spec"]["timeZone"] == "Asia/Shanghai"
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["containers"][0]["command"][:4] == ["farm", "batch", "submit", "/specs/nightly.yaml"]
    items = pod["volumes"][0]["configMap"]["items"]
    data = r.one("ConfigMap", f"{RELEASE}-nightly-specs")["data"]
    assert {i["path"]: data[i["key"]] for i in items} == gpu_values["nightly"]["files"]
    assert "RayCronJob" not in r.kinds()


def test_nightly_raycronjob_runs_on_this_cluster_with_specs_on_the_head(chart, gpu_values):
    """kind RayCronJob: KubeRay submits to this RayCluster, whose head mounts the specs at /specs."""
    r = chart(gpu_values)
    job = r.one("RayCronJob")
    cluster = r.one("RayCluster")
    assert job["spec"]["jobTemplate"]["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}
    assert job["spec"]["jobTemplate"]["entrypoint"].startswith("farm batch submit /specs/nightly.yaml")
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]
    assert head["containers"][0]["volumeMounts"] == [{"name": "nightly-specs", "mountPath": "/specs", "readOnly": True}]
    assert "CronJob" not in r.kinds()


def test_nightly_specs_mounted_as_files_load_with_the_farms_loader(chart, gpu_values, tmp_path):
    """Laid out as the pod sees /specs, the batch and the specs it names validate with farm.loader."""
    from datetime import datetime, timezone

    from farm.loader import load_batch

    r = chart(merged(gpu_values, **{"nightly.kind": "CronJob"}))
    pod = r.one("CronJob")["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    data = r.one("ConfigMap", f"{RELEASE}-nightly-specs")["data"]
    for item in pod["volumes"][0]["configMap"]["items"]:
        (tmp_path / item["path"]).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / item["path"]).write_text(data[item["key"]], encoding="utf-8")
    batch_file = pod["containers"][0]["command"][3].removeprefix("/specs/")
    loaded = load_batch(tmp_path / batch_file, datetime.now(timezone.utc))
    assert loaded.spec.studio == "acme" and len(loaded.episodes) == 1
