"""Model residency on real Ray: two video models on two declared GPUs, their clips alternating in the
queue. The controller (the named actor) places every clip with the residency policy and the Ray pools
carry it out: each GPU loads one model and keeps it, so the farm loads each model once, as the policy
decided, not once per clip (or once per switch, as load-on-demand would)."""

from __future__ import annotations

import copy
import time

import pytest
import yaml

from farm.loader import load_batch
from farm.service.host import batch_payload
from farm.settings import Settings
from farm.store import LocalStore
from farm.store.journal import StoreJournal
from tests.conftest import SMALL_SERIES, write_episode_variants, write_specs

pytestmark = [pytest.mark.ray, pytest.mark.e2e]

ADMIN = "admin-token-for-tests"
LOADER = "tests.support.fake_backends:Loader"


@pytest.fixture
def two_gpus():
    import ray

    if ray.is_initialized():
        ray.shutdown()
    ray.init(
        address="local", num_cpus=4, num_gpus=2, namespace="farm", include_dashboard=False, logging_level="WARNING"
    )
    yield
    ray.shutdown()


def _series(folder, video: str, sid: str):
    series = copy.deepcopy(SMALL_SERIES) | {"id": sid, "backends": {"video": video}}
    write_specs(folder, series=series)
    write_episode_variants(folder, 3)


def test_each_gpu_keeps_its_model_and_the_farm_loads_what_the_policy_decided(tmp_path, two_gpus):
    import ray

    from farm.cli.batch import controller

    loads = {m: tmp_path / f"loads-{m}" for m in ("a", "b")}
    for folder in loads.values():
        folder.mkdir()
    noop = {f"backend_{s}": "noop" for s in ("script", "image", "dubbing", "lipsync", "assembly")}
    settings = Settings(
        store=str(tmp_path / "store"),
        metrics_port=0,
        admin_token=ADMIN,
        judges={},
        backends={
            f"video-{m}": {"kind": LOADER, "loads": str(folder), "load_s": 2.0, "seconds": 0.3}
            for m, folder in loads.items()
        },
        stage_resources={"video": {"num_gpus": 1}},
        **noop,
    )
    _series(tmp_path / "a", "video-a", "series-a")
    _series(tmp_path / "b", "video-b", "series-b")
    batch_file = tmp_path / "batch.yaml"
    batch_file.write_text(yaml.safe_dump({"studio": "acme", "episodes": ["a/ep*.yaml", "b/ep*.yaml"]}))
    handle = controller(settings, create=True)
    batch_id = ray.get(handle.submit.remote(batch_payload(load_batch(batch_file, time.time()), settings), token=ADMIN))
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        status = ray.get(handle.status.remote(batch_id, token=ADMIN), timeout=30)
        if status["status"] != "running":
            break
        time.sleep(0.5)
    assert status["status"] == "finished" and status["episodes"]["delivered"] == 6, status
    clips = {m: len(list((folder / "clips").iterdir())) for m, folder in loads.items()}
    made = {m: len(list(folder.glob("load-*"))) for m, folder in loads.items()}
    assert clips["a"] >= 4 and clips["b"] >= 4  # the episodes' shots that differ, once each (the rest shared)
    assert made == {"a": 1, "b": 1}, made  # one GPU each, kept: not a load per clip, nor per switch
    events = [e for e in StoreJournal(LocalStore(tmp_path / "store")).replay() if e.batch == batch_id]
    reported = [e.data.usage.load_seconds for e in events if e.type == "action.completed" and e.data.op == "clip"]
    assert sorted(x > 0 for x in reported).count(True) == 2  # the two loads, as the workers reported them
