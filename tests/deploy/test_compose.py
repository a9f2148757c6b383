"""The one-machine stack (deploy/compose.yaml), its Prometheus and Grafana files, and the image:
they parse, and they say what deploy/README.md promises. No Docker engine is needed."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tests.deploy.conftest import CHART, ROOT

DEPLOY = ROOT / "deploy"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text(encoding="utf-8"))


def readme_services() -> dict[str, dict]:
    """The rows of deploy/README.md's "Services" table: service -> host ports, volumes."""
    text = (DEPLOY / "README.md").read_text(encoding="utf-8")
    table = re.search(r"### Services\n.*?\n(\| service \|.*?)\n\n", text, re.S).group(1)
    rows = {}
    for line in table.splitlines()[2:]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        service = cells[0].strip("`")
        rows[service] = {
            "ports": {int(p) for p in re.findall(r"\b(\d{4,5})\b", cells[2])},
            "volumes": set(re.findall(r"`([a-z-]+)`", cells[3])),
        }
    return rows


def host_ports(service: dict) -> set[int]:
    return {int(str(p).split(":")[0]) for p in service.get("ports", [])}


def named_volumes(service: dict) -> set[str]:
    return {v.split(":")[0] for v in service.get("volumes", []) if not v.startswith((".", "/"))}


def test_compose_names_the_services_ports_and_volumes_the_readme_promises(compose):
    """Every service, published port and named volume in the README's table is in compose.yaml, and back."""
    promised = readme_services()
    services = compose["services"]
    assert (
        set(promised)
        == set(services)
        == {"ray-head", "ray-worker", "minio", "minio-init", "controller", "prometheus", "grafana"}
    )
    for name, row in promised.items():
        assert host_ports(services[name]) == row["ports"], name
        assert named_volumes(services[name]) == row["volumes"], name
    assert set(compose["volumes"]) == set().union(*(row["volumes"] for row in promised.values()))


def test_compose_is_internally_consistent(compose):
    """Dependencies name real services, bind mounts exist, and the farm's services share one image."""
    services = compose["services"]
    for name, service in services.items():
        depends = service.get("depends_on", [])
        assert set(depends) <= set(services), name
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name} mounts {source}, which does not exist"
    farm_services = [s for s in services.values() if "build" in s]
    assert {s["image"] for s in farm_services} == {"${FARM_IMAGE:-farm:local}"}
    assert {s["build"]["dockerfile"] for s in farm_services} == {"deploy/Dockerfile"}
    assert (DEPLOY / farm_services[0]["build"]["context"] / "pyproject.toml").is_file()


def test_secrets_come_from_the_environment_and_are_required(compose):
    """No password or token is written in compose.yaml: each is ${VAR:?...} from deploy/.env."""
    secret = re.compile(r"(PASSWORD|SECRET|TOKEN)")
    seen = 0
    for name, service in compose["services"].items():
        env = service.get("environment", {})
        assert isinstance(env, dict), f"{name}: environment as a mapping"
        for key, value in env.items():
            if secret.search(key):
                seen += 1
                assert re.fullmatch(r"\$\{[A-Z0-9_]+:\?[^}]+\}", str(value)), f"{name}: {key}={value!r}"
    assert seen >= 6
    example = (DEPLOY / ".env.example").read_text(encoding="utf-8")
    for line in example.splitlines():
        if secret.search(line.split("=")[0]) and not line.startswith("#") and "MODE" not in line:
            assert line.endswith("="), f".env.example must not carry a secret: {line}"


def test_controller_service_is_pinned_to_the_head_and_scraped_there(compose):
    """The head alone declares farm_controller; Prometheus scrapes the controller's /metrics on the head."""
    services = compose["services"]
    head_args = " ".join(services["ray-head"]["command"])
    assert '--resources={"farm_controller": 1}' in head_args and "--ray-client-server-port=10001" in head_args
    assert "farm_controller" not in " ".join(services["ray-worker"]["command"])
    controller = services["controller"]["environment"]
    assert controller["FARM_CONTROLLER_RESOURCES"] == '{"farm_controller": 1}'
    assert controller["FARM_RAY_ADDRESS"] == "ray://ray-head:10001"
    assert f"{controller['FARM_METRICS_HOST']}:{controller['FARM_METRICS_PORT']}" == "ray-head:9108"
    script = services["controller"]["volumes"][0].split(":")[0]
    assert (DEPLOY / script).resolve() == CHART / "files" / "keep-controller.sh"
    for name in ("ray-head", "ray-worker", "controller"):
        assert services[name]["environment"]["RAY_AUTH_MODE"] == "${RAY_AUTH_MODE:-token}", name

    prometheus = yaml.safe_load((DEPLOY / "prometheus.yml").read_text(encoding="utf-8"))
    jobs = {
        job["job_name"]: [t for sc in job["static_configs"] for t in sc["targets"]]
        for job in prometheus["scrape_configs"]
    }
    assert jobs["farm-controller"] == ["ray-head:9108"]
    assert set(jobs["ray"]) == {"ray-head:8080", "ray-worker:8080"}


def test_prometheus_loads_the_alert_rules_where_compose_mounts_them(compose):
    """rule_files points into the mount of dashboards/, where alerts.yaml lives."""
    prometheus = yaml.safe_load((DEPLOY / "prometheus.yml").read_text(encoding="utf-8"))
    mounts = dict(v.split(":")[:2][::-1] for v in compose["services"]["prometheus"]["volumes"])
    (rules,) = prometheus["rule_files"]
    folder = str(Path(rules).parent)
    assert mounts[folder] == "../dashboards"
    assert mounts["/etc/prometheus/prometheus.yml"] == "./prometheus.yml"


def test_grafana_provisions_prometheus_and_the_dashboards_folder(compose):
    """The data source is the stack's Prometheus; the provider reads the mounted dashboards/."""
    provisioning = DEPLOY / "grafana" / "provisioning"
    sources = yaml.safe_load((provisioning / "datasources" / "prometheus.yaml").read_text(encoding="utf-8"))
    (source,) = sources["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090" and source["isDefault"]
    providers = yaml.safe_load((provisioning / "dashboards" / "farm.yaml").read_text(encoding="utf-8"))
    (provider,) = providers["providers"]
    mounts = dict(v.split(":")[:2][::-1] for v in compose["services"]["grafana"]["volumes"])
    assert mounts[provider["options"]["path"]] == "../dashboards"
    assert mounts["/etc/grafana/provisioning"] == "./grafana/provisioning"


def test_image_pins_the_ray_the_chart_declares():
    """The Dockerfile's Ray is the chart's ray.version; the chart's appVersion is the farm's version."""
    import tomllib

    dockerfile = (DEPLOY / "Dockerfile").read_text(encoding="utf-8")
    values = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text(encoding="utf-8"))
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert re.search(r"^ARG RAY_VERSION=(\S+)$", dockerfile, re.M).group(1) == values["ray"]["version"]
    assert chart["appVersion"] == project["version"]
    assert re.search(r"^ARG BASE_IMAGE=", dockerfile, re.M)
    for package in ("ffmpeg", "espeak-ng", "fonts-noto-cjk"):
        assert package in dockerfile


def test_promtool_accepts_the_prometheus_config(tmp_path):
    """`promtool check config` passes on deploy/prometheus.yml, its rule files read from dashboards/."""
    import shutil
    import subprocess

    from tests.conftest import need

    need(None if shutil.which("promtool") else "promtool not installed (Debian package prometheus)")
    config = (DEPLOY / "prometheus.yml").read_text(encoding="utf-8")
    config = config.replace("/etc/prometheus/farm/", f"{ROOT / 'dashboards'}/")
    (tmp_path / "prometheus.yml").write_text(config, encoding="utf-8")
    result = subprocess.run(
        ["promtool", "check", "config", str(tmp_path / "prometheus.yml")], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stdout + result.stderr
