"""Every object the chart renders is valid: core Kubernetes objects against the Kubernetes OpenAPI
schemas (kubernetes-validate, strict: unknown fields are errors), KubeRay objects against the CRDs of
KubeRay's operator chart (../shared/kuberay-crds), with unknown fields refused as `kubectl` does."""

from __future__ import annotations

import copy
from functools import cache

import pytest
import yaml

from tests.conftest import need
from tests.deploy.conftest import CRDS, merged

# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest the validator knows.
KUBE_VERSIONS = ("1.27", "latest")
KUBERAY_KINDS = {
    "RayCluster": "ray.io_rayclusters.yaml",
    "RayJob": "ray.io_rayjobs.yaml",
    "RayCronJob": "ray.io_raycronjobs.yaml",
}
PROMETHEUS_OPERATOR_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}


def kubernetes_validate():
    try:
        import kubernetes_validate
    except ImportError:
        need("kubernetes-validate is not installed (pip install -e '.[test]')")
    return kubernetes_validate


@pytest.fixture(scope="module")
def renders(chart, gpu_values):
    """The default render, the GPU-heavy one (RayCronJob), and a variant with a CronJob and a chart-made Secret."""
    variant = merged(
        gpu_values,
        **{
            "nightly.kind": "CronJob",
            "minio.enabled": True,
            "store.s3.endpoint": "",
            "store.s3.existingSecret": "",
            "store.s3.accessKey": "farm",
            "store.s3.secretKey": "a-long-secret-key",
            "ray.auth.mode": "disabled",
        },
    )
    return {"default": chart(), "gpu": chart(gpu_values), "cronjob": chart(variant)}


def _pod_templates(obj: dict) -> list[dict]:
    """The pod templates embedded in a KubeRay object."""
    if obj["kind"] == "RayCluster":
        spec = obj["spec"]
    elif obj["kind"] == "RayCronJob":
        spec = obj["spec"]["jobTemplate"].get("rayClusterSpec")
        if spec is None:
            return (
                [obj["spec"]["jobTemplate"]["submitterPodTemplate"]]
                if "submitterPodTemplate" in obj["spec"]["jobTemplate"]
                else []
            )
    else:
        spec = obj["spec"].get("rayClusterSpec") or {}
    return (
        [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec.get("workerGroupSpecs", [])] if spec else []
    )


def test_core_objects_validate_against_kubernetes_schemas(renders):
    """Deployments, Services, ConfigMaps, Secrets, PVCs, CronJobs and the test Pod; and Ray's pod templates."""
    kv = kubernetes_validate()
    checked = set()
    for label, rendered in renders.items():
        for obj in rendered.objects:
            documents = [obj] if "." not in obj["apiVersion"].split("/")[0] else []
            if obj["kind"] in KUBERAY_KINDS:  # KubeRay embeds core PodTemplateSpecs: validate those strictly too
                documents = [
                    {
                        "apiVersion": "v1",
                        "kind": "PodTemplate",
                        "metadata": {"name": f"{obj['metadata']['name']}-{i}"},
                        "template": t,
                    }
                    for i, t in enumerate(_pod_templates(obj))
                ]
            elif obj["kind"] in PROMETHEUS_OPERATOR_KINDS:
                continue  # CRDs of the Prometheus Operator: wiring is tested in test_chart.py
            for doc in documents:
                for version in KUBE_VERSIONS:
                    version = kv.utils.latest_version() if version == "latest" else version
                    try:
                        kv.validate(doc, version, strict=True)
                    except kv.ValidationError as exc:
                        path = ".".join(str(p) for p in exc.path)
                        pytest.fail(
                            f"{label}: {doc['kind']}/{doc['metadata']['name']} is invalid for Kubernetes "
                            f"{version} at {path}: {exc.message}"
                        )
                checked.add(doc["kind"])
    assert {
        "Deployment",
        "Service",
        "ConfigMap",
        "Secret",
        "PersistentVolumeClaim",
        "CronJob",
        "Pod",
        "PodTemplate",
    } <= checked


@cache
def _crd_schema(kind: str) -> dict:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the CRDs are large: libyaml when there is one
    crd = yaml.load((CRDS / KUBERAY_KINDS[kind]).read_text(encoding="utf-8"), Loader=loader)
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return _closed(copy.deepcopy(version["schema"]["openAPIV3Schema"]))


def _closed(schema: dict) -> dict:
    """Refuse unknown fields, as the API server's strict field validation (kubectl's default) does."""
    if isinstance(schema, dict):
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        for value in schema.values():
            if isinstance(value, dict):
                _closed(value)
            elif isinstance(value, list):
                for item in value:
                    _closed(item)
    return schema


def test_kuberay_objects_validate_against_kuberays_crds(renders):
    """RayCluster and RayCronJob objects match KubeRay's CRD schemas (ray.io/v1), unknown fields refused."""
    if not CRDS.is_dir():
        pytest.skip(
            f"KubeRay CRD schemas not found at {CRDS}: put KubeRay's CRDs (its operator chart's crds/ folder) "
            "there, or name their folder in FARM_TEST_KUBERAY_CRDS"
        )
    import jsonschema

    checked = set()
    for label, rendered in renders.items():
        for obj in rendered.objects:
            if obj["kind"] not in KUBERAY_KINDS:
                continue
            assert obj["apiVersion"] == "ray.io/v1"
            validator = jsonschema.Draft7Validator(_crd_schema(obj["kind"]))
            errors = sorted(validator.iter_errors(obj), key=lambda e: list(e.path))
            assert not errors, "\n".join(
                f"{label}: {obj['kind']}/{obj['metadata']['name']} at {'.'.join(map(str, e.path))}: {e.message}"
                for e in errors
            )
            checked.add(obj["kind"])
    assert checked == {"RayCluster", "RayCronJob"}


def test_crd_check_would_catch_a_misspelt_field():
    """The strict CRD check is not vacuous: a misspelt worker group field is an error."""
    if not CRDS.is_dir():
        pytest.skip(
            f"KubeRay CRD schemas not found at {CRDS}: put KubeRay's CRDs (its operator chart's crds/ folder) "
            "there, or name their folder in FARM_TEST_KUBERAY_CRDS"
        )
    import jsonschema

    bad = {
        "apiVersion": "ray.io/v1",
        "kind": "RayCluster",
        "metadata": {"name": "x"},
        "spec": {
            "headGroupSpec": {"rayStartParams": {}, "template": {"spec": {"containers": []}}},
            "workerGroupSpecs": [
                {
                    "groupName": "cpu",
                    "minReplicas": 0,
                    "maxReplicas": 1,
                    "maxReplica": 2,
                    "template": {"spec": {"containers": []}},
                }
            ],
        },
    }
    errors = list(jsonschema.Draft7Validator(_crd_schema("RayCluster")).iter_errors(bad))
    assert any("maxReplica" in e.message for e in errors)
