"""Rendering the Helm chart offline: the Helm SDK from PyPI (helm-python-sdk), no cluster, no helm binary.

The chart reads Grafana dashboards and alert rules through ``helm/farm/dashboards``, a link to the
repository's ``dashboards/``. Tests render a copy of the chart whose ``dashboards/`` holds either the
repository's files as they are (``chart``) or a tiny placeholder dashboard and rule file
(``placeholder_chart``), so they run whether or not ``dashboards/`` exists yet.
"""

from __future__ import annotations

import copy
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import need

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "farm"
DASHBOARDS = ROOT / "dashboards"
# KubeRay's CRDs (from its operator chart) are reference data kept beside the checkout, not in it
CRDS = Path(os.environ.get("FARM_TEST_KUBERAY_CRDS") or ROOT.parent / "shared" / "kuberay-crds")
RELEASE, NAMESPACE = "farm", "studio"

PLACEHOLDER_DASHBOARD = '{"title": "Placeholder", "uid": "placeholder", "panels": []}\n'
PLACEHOLDER_ALERTS = """\
groups:
  - name: placeholder
    rules:
      - alert: PlaceholderControllerDown
        expr: absent(farm_controller_up == 1)
        for: 5m
        labels: {severity: critical}
        annotations:
          summary: "controller down on {{ $labels.instance }}"
"""


def helm_sdk():
    """The Helm SDK module, or skip (fail under CI) with how to install it."""
    try:
        import helm_python
    except ImportError:
        need("helm-python-sdk is not installed (pip install -e '.[test]')")
    return helm_python


def copy_chart(dest: Path, dashboards: dict[str, str] | None) -> Path:
    """Copy the chart to ``dest``; its dashboards/ gets ``dashboards`` (name -> text), or the repository's files."""
    chart = dest / "farm"
    shutil.copytree(CHART, chart, ignore=shutil.ignore_patterns("dashboards"))
    (chart / "dashboards").mkdir()
    if dashboards is None:
        for path in sorted(DASHBOARDS.glob("*")) if DASHBOARDS.is_dir() else []:
            if path.is_file():
                shutil.copy(path, chart / "dashboards" / path.name)
    else:
        for name, text in dashboards.items():
            (chart / "dashboards" / name).write_text(text, encoding="utf-8")
    return chart


class Rendered:
    """The objects one render produced, by kind and name."""

    def __init__(self, manifests: dict[str, str]):
        self.manifests = manifests
        self.objects: list[dict[str, Any]] = []
        for template, text in sorted(manifests.items()):
            if template.endswith("NOTES.txt"):
                continue
            for doc in yaml.safe_load_all(text):
                if doc:
                    self.objects.append(doc)

    @property
    def notes(self) -> str:
        return next((t for k, t in self.manifests.items() if k.endswith("NOTES.txt")), "")

    def kinds(self) -> set[str]:
        return {o["kind"] for o in self.objects}

    def all(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]

    def one(self, kind: str, name: str | None = None) -> dict[str, Any]:
        found = [o for o in self.all(kind) if name is None or o["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind} {name or ''}, found {[o['metadata']['name'] for o in found]}"
        return found[0]


@pytest.fixture(scope="session")
def helm():
    return helm_sdk()


def _renderer(helm, chart: Path) -> Callable[..., Rendered]:
    loaded = helm.Chart.load(chart)

    def render(values: dict[str, Any] | None = None, *, name: str = RELEASE) -> Rendered:
        return Rendered(loaded.render(values, name=name, namespace=NAMESPACE, is_install=True))

    render.chart = loaded  # type: ignore[attr-defined]
    render.path = chart  # type: ignore[attr-defined]
    return render


@pytest.fixture(scope="session")
def chart(helm, tmp_path_factory):
    """Render the chart with the repository's dashboards/ (whatever it holds, possibly nothing)."""
    return _renderer(helm, copy_chart(tmp_path_factory.mktemp("chart"), None))


@pytest.fixture(scope="session")
def placeholder_chart(helm, tmp_path_factory):
    """Render the chart with one placeholder dashboard and rule file (made here, never in dashboards/)."""
    files = {
        "placeholder.json": PLACEHOLDER_DASHBOARD,
        "alerts.yaml": PLACEHOLDER_ALERTS,
        "README.md": "# not a dashboard\n",
    }
    return _renderer(helm, copy_chart(tmp_path_factory.mktemp("placeholder"), files))


def merged(base: dict, **overrides) -> dict:
    """``base`` with nested ``overrides`` given as dotted paths: merged(v, **{"ray.auth.mode": "disabled"})."""
    out = copy.deepcopy(base)
    for path, value in overrides.items():
        node = out
        *parents, leaf = path.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return out


def values_file(name: str) -> dict[str, Any]:
    return yaml.safe_load((CHART / "ci" / name).read_text(encoding="utf-8"))


@pytest.fixture(scope="session")
def gpu_values() -> dict[str, Any]:
    return values_file("gpu-values.yaml")
