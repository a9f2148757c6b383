"""Shared fixtures: a real local Ray, a real S3 server, small specs written to disk.

Outside CI a test whose real dependency is absent is skipped with the reason; under CI=true it
fails instead, so a green CI never hides a missing server or tool.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from pathlib import Path

import pytest
import yaml

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def need(reason: str | None) -> None:
    """Skip (or, in CI, fail) when ``reason`` says something is missing."""
    if reason:
        if IN_CI:
            pytest.fail(f"required in CI: {reason}")
        pytest.skip(reason)


def wait_until(done, *, timeout: float = 120.0, every: float = 0.05, what: str = "the condition", ignore=()):
    """Poll ``done()`` until it returns something true and return that; fail after ``timeout`` seconds.
    ``ignore``: exceptions that mean "not yet" (a controller that is restarting)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = done()
        except ignore:
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {timeout:.0f} s")
        time.sleep(every)


def media_missing() -> str | None:
    missing = [t for t in ("ffmpeg", "ffprobe", "espeak-ng") if shutil.which(t) is None]
    return f"not installed: {', '.join(missing)}" if missing else None


@pytest.fixture(autouse=True)
def _require_marked(request):
    if request.node.get_closest_marker("media"):
        need(media_missing())


@pytest.fixture(scope="module")
def ray_local():
    """A real local Ray shared by a module's tests (like Ray's own ray_start_regular_shared).

    Module-scoped so that a module starting a multi-node ``ray.cluster_utils.Cluster`` can have
    the process to itself.
    """
    import ray

    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    from tests.support.s3server import s3_server_available, start_s3_server

    need(s3_server_available())
    with start_s3_server(tmp_path_factory.mktemp("s3")) as server:
        yield server


SMALL_SERIES = {
    "id": "test-series",
    "title": "Test Series",
    "language": "en",
    "style": {"description": "flat colours", "palette": ["#102030", "#405060", "#f0a040"]},
    "resolution": {"width": 180, "height": 320},
    "fps": 12,
    "characters": [
        {
            "id": "ana",
            "name": "Ana",
            "look": {"description": "red coat", "outfit": "#c03030"},
            "voice": {"voice": "en-us+f3", "pitch": 65, "rate": 190},
        },
        {
            "id": "bo",
            "name": "Bo",
            "look": {"description": "blue jacket"},
            "voice": {"voice": "en-us+m3", "pitch": 35, "rate": 170},
        },
    ],
}

SMALL_SCRIPT = {
    "title": "Test Episode",
    "language": "en",
    "scenes": [
        {
            "id": "s01",
            "location": "kitchen",
            "time_of_day": "night",
            "shots": [
                {
                    "id": "s01-01",
                    "description": "A kitchen at night",
                    "characters": ["ana", "bo"],
                    "framing": "wide",
                    "camera": "push_in",
                    "duration": 1.0,
                },
                {
                    "id": "s01-02",
                    "description": "Ana at the window",
                    "characters": ["ana"],
                    "camera": "pan_left",
                    "duration": 0.5,
                    "lines": [{"speaker": "ana", "text": "Is anyone there?"}],
                },
            ],
        },
        {
            "id": "s02",
            "location": "hallway",
            "shots": [
                {
                    "id": "s02-01",
                    "description": "Bo in the hallway",
                    "framing": "close",
                    "camera": "static",
                    "duration": 0.5,
                    "lines": [{"speaker": "bo", "text": "Only me."}, {"speaker": "ana", "text": "Then who rang?"}],
                },
            ],
        },
    ],
}


def write_specs(folder: Path, series: dict | None = None, episode: dict | None = None) -> Path:
    """Write a series and an episode (hand-written script by default) to ``folder``; return the episode path."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "series.yaml").write_text(yaml.safe_dump(series or SMALL_SERIES, allow_unicode=True), encoding="utf-8")
    ep = episode or {
        "series": "series.yaml",
        "number": 1,
        "title": "Test Episode",
        "target_seconds": 30,
        "script": SMALL_SCRIPT,
    }
    path = folder / "ep001.yaml"
    path.write_text(yaml.safe_dump(ep, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


def write_episode_variants(folder: Path, episodes: int) -> None:
    """Beside ``write_specs``' ep001: episodes 2..``episodes``, each with its own second-scene line."""
    for n in range(2, episodes + 1):
        script = yaml.safe_load(yaml.safe_dump(SMALL_SCRIPT))
        script["scenes"][1]["shots"][0]["lines"][0]["text"] = f"Only me, the {n}th time."
        (folder / f"ep{n:03d}.yaml").write_text(
            yaml.safe_dump({"series": "series.yaml", "number": n, "title": f"Episode {n}", "script": script})
        )


def s3_settings(server, endpoint: str | None = None) -> dict:
    """The settings that put a store on ``server`` (through ``endpoint`` when a proxy stands between)."""
    return {
        "s3_endpoint": endpoint or server.endpoint,
        "s3_access_key": server.access_key,
        "s3_secret_key": server.secret_key,
        "s3_secure": server.secure,
        "s3_region": server.region,
    }


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def objects(request, tmp_path):
    """An empty object store: a local folder, and a prefix of its own on the real S3 server."""
    from farm.store import LocalStore

    if request.param == "local":
        return LocalStore(tmp_path / "store")
    from farm.store.s3 import S3Store

    server = request.getfixturevalue("s3_server")
    return S3Store(
        server.endpoint,
        server.access_key,
        server.secret_key,
        "farm-objects",
        f"o-{tmp_path.name}",
        secure=server.secure,
        region=server.region,
    )


@pytest.fixture
def gpu_ray():
    """A local Ray of the test's own with one declared GPU, joined in the farm's namespace."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    ray.init(
        address="local", num_cpus=3, num_gpus=1, namespace="farm", include_dashboard=False, logging_level="WARNING"
    )
    yield ray
    ray.shutdown()


@contextlib.contextmanager
def controller_services(settings, admin: str, cpus: int):
    """A factory of in-process controllers (no Ray) on ``settings``' store, guarded by ``admin``; each
    stopped after: ``start(loop=False)``."""
    from farm.runtime.local import InProcessRuntime
    from farm.service.host import ControllerService

    made = []

    def start(loop: bool = False):
        runtime = InProcessRuntime(settings.store_spec(), settings.catalog(), cpus=cpus)
        service = ControllerService(
            settings.model_dump(mode="json") | {"admin_token": admin}, runtime=runtime, start_loop=loop
        )
        made.append(service)
        return service

    yield start
    for service in made:
        service.stop(token=admin)
        service.runtime.shutdown()
