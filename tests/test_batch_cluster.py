"""Batches on a real multi-node Ray (``ray.cluster_utils.Cluster``) with declared GPUs.

The controller runs as the named, detached actor; clips are routed to GPU actor pools by settings.
Losing a worker node or SIGKILLing the controller mid-batch still delivers every episode, and the
journal shows no finished action ran twice.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
import yaml

from farm.loader import load_batch
from farm.service.host import batch_payload
from farm.service.webhooks import verify
from farm.settings import Settings
from farm.store import LocalStore
from farm.store.journal import StoreJournal
from tests.conftest import write_episode_variants, write_specs

pytestmark = [pytest.mark.ray, pytest.mark.media, pytest.mark.e2e]


HOOK_SECRET = "hook-secret-for-tests"
ADMIN = "admin-token-for-tests"


@pytest.fixture
def cluster(monkeypatch):
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    monkeypatch.setenv("FARM_TEST_HOOK_SECRET", HOOK_SECRET)  # inherited by the cluster's processes
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "num_gpus": 0})
    gpu_nodes = [c.add_node(num_cpus=1, num_gpus=1) for _ in range(2)]
    ray.init(address=c.address, namespace="farm", logging_level="WARNING")
    c.wait_for_nodes()
    yield c, gpu_nodes
    ray.shutdown()
    c.shutdown()


def _batch_file(tmp_path, episodes=3, **fields):
    folder = tmp_path / "specs"
    write_specs(folder)
    write_episode_variants(folder, episodes)
    path = tmp_path / "batch.yaml"
    path.write_text(
        yaml.safe_dump(
            {"studio": "acme", "priority": "high", "episodes": ["specs/ep*.yaml"], "budget": {"gpu_seconds": 100000}}
            | fields
        )
    )
    return path


def _start(tmp_path):
    from farm.cli.batch import controller

    settings = Settings(
        store=str(tmp_path / "store"),
        metrics_port=0,
        stage_resources={"video": {"num_gpus": 1}},
        retry={"base_s": 0.2, "max_delay_s": 1.0},
        admin_token=ADMIN,
        webhook_secrets={"acme": "FARM_TEST_HOOK_SECRET"},
    )
    return settings, controller(settings, create=True)


def _wait(handle, batch_id, until, timeout=420):
    import ray

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            status = ray.get(handle.status.remote(batch_id, token=ADMIN), timeout=30)
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            time.sleep(0.5)  # the controller is restarting
            continue
        if until(status):
            return status
        time.sleep(0.3)
    raise AssertionError(f"batch {batch_id} did not get there in {timeout}s: {status}")


def _journal(tmp_path, batch_id):
    return [e for e in StoreJournal(LocalStore(tmp_path / "store")).replay() if e.batch == batch_id or e.batch is None]


def _no_finished_action_ran_twice(events):
    done = Counter(e.key for e in events if e.type in ("action.completed", "action.cached"))
    assert not [k for k, n in done.items() if n > 1]
    finished_at = {}
    for e in events:
        if e.type in ("action.completed", "action.cached"):
            finished_at.setdefault(e.key, e.seq)
        if e.type == "action.dispatched":
            assert e.key not in finished_at, "an action was dispatched again after it finished"


def test_batch_runs_across_nodes_and_survives_losing_one(tmp_path, cluster, receiver):
    """Clips run on the GPU nodes' warm actors; removing a GPU node mid-batch still delivers every
    episode, and the studio's webhook hears of each, signed."""
    import ray

    c, gpu_nodes = cluster
    settings, handle = _start(tmp_path)
    hook = {"url": receiver.url, "secret_env": "FARM_TEST_HOOK_SECRET"}
    batch_id = ray.get(
        handle.submit.remote(
            batch_payload(load_batch(_batch_file(tmp_path, webhook=hook), _now()), settings), token=ADMIN
        )
    )
    _wait(handle, batch_id, lambda s: s["actions"].get("video", {}).get("done", 0) >= 1)
    c.remove_node(gpu_nodes[0])
    status = _wait(handle, batch_id, lambda s: s["status"] != "running")
    assert status["status"] == "finished" and status["episodes"]["delivered"] == 3, status
    events = _journal(tmp_path, batch_id)
    _no_finished_action_ran_twice(events)
    gpu_ids = {n.node_id for n in gpu_nodes}
    clip_nodes = {e.data.worker["node"] for e in events if e.type == "action.completed" and e.data.op == "clip"}
    assert clip_nodes and clip_nodes <= gpu_ids
    for eid in ("ep001", "ep002", "ep003"):
        assert (tmp_path / "store" / "acme" / "episodes" / "test-series" / eid / "episode.mp4").is_file()
    posts = receiver.wait_for(4)
    assert sorted(json.loads(body)["event"] for _, body in posts) == ["batch.finished"] + ["episode.delivered"] * 3
    for headers, body in posts:
        assert verify(body, HOOK_SECRET, headers["X-Farm-Timestamp"], headers["X-Farm-Signature"], now=time.time())


def test_cancel_stops_the_batch_and_leaves_nothing_half_written(tmp_path, cluster):
    """Cancelling mid-batch stops dispatching, and the store holds no partial file."""
    import ray

    settings, handle = _start(tmp_path)
    batch_id = ray.get(
        handle.submit.remote(batch_payload(load_batch(_batch_file(tmp_path), _now()), settings), token=ADMIN)
    )
    _wait(handle, batch_id, lambda s: sum(r.get("done", 0) for r in s["actions"].values()) >= 3)
    status = ray.get(handle.cancel.remote(batch_id, token=ADMIN))
    assert status["status"] == "cancelled"
    time.sleep(3)  # let what was running stop or finish
    events = _journal(tmp_path, batch_id)
    cancelled = next(e.seq for e in events if e.type == "batch.cancelled")
    assert not [e for e in events if e.type == "action.dispatched" and e.seq > cancelled]
    assert not list((tmp_path / "store").rglob(".tmp-*"))
    assert ray.get(handle.status.remote(batch_id, token=ADMIN))["episodes"]["delivered"] < 3


def test_controller_killed_mid_batch_resumes_without_rerunning(tmp_path, cluster):
    """SIGKILL of the controller mid-batch: Ray restarts it, it replays the journal and finishes the batch
    with no finished action run again."""
    import ray

    settings, handle = _start(tmp_path)
    batch_id = ray.get(
        handle.submit.remote(batch_payload(load_batch(_batch_file(tmp_path), _now()), settings), token=ADMIN)
    )
    _wait(handle, batch_id, lambda s: sum(r.get("done", 0) for r in s["actions"].values()) >= 8)
    pid = ray.get(handle.ping.remote(token=ADMIN))["pid"]
    os.kill(pid, signal.SIGKILL)
    status = _wait(handle, batch_id, lambda s: s["status"] != "running")
    assert status["status"] == "finished" and status["episodes"]["delivered"] == 3, status
    assert ray.get(handle.ping.remote(token=ADMIN))["pid"] != pid
    _no_finished_action_ran_twice(_journal(tmp_path, batch_id))


class _Hook(BaseHTTPRequestHandler):
    posts: list = []

    def do_POST(self):
        type(self).posts.append((dict(self.headers), self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def receiver():
    _Hook.posts = []
    server = HTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    class Receiver:
        url = f"http://127.0.0.1:{server.server_port}/farm"

        @staticmethod
        def wait_for(n, timeout=60):
            deadline = time.monotonic() + timeout
            while len(_Hook.posts) < n and time.monotonic() < deadline:
                time.sleep(0.2)
            return list(_Hook.posts)

    yield Receiver
    server.shutdown()


def _now():
    from datetime import datetime, timezone

    return datetime.now(timezone.utc)


def test_queued_gpu_work_is_asked_of_the_autoscaler(tmp_path):
    """With GPU work queued and no GPU node, the runtime asks Ray's autoscaler for the GPUs."""
    import ray

    from farm.runtime.ray_runtime import RayRuntime
    from farm.settings import StoreSpec

    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=1, include_dashboard=False, logging_level="WARNING")
    from ray.autoscaler._private.constants import AUTOSCALER_RESOURCE_REQUEST_CHANNEL
    from ray.experimental.internal_kv import _internal_kv_get

    def requested():
        raw = _internal_kv_get(AUTOSCALER_RESOURCE_REQUEST_CHANNEL)
        return None if raw is None else json.loads(raw)

    def becomes(expected, within=30.0):  # a thread sends requests: the controller's loop never waits
        deadline = time.monotonic() + within
        while requested() != expected and time.monotonic() < deadline:
            time.sleep(0.05)
        return requested()

    try:
        runtime = RayRuntime(StoreSpec(url=str(tmp_path / "store")))
        runtime.request_capacity([(1, 1, "H100"), (1, 1, "H100")])
        want = [{"GPU": 1.0, "CPU": 1.0, "accelerator_type:H100": 0.001}] * 2
        assert becomes(want) == want and runtime.requested() == want
        runtime.request_capacity([])
        assert becomes([]) == []
        runtime.shutdown()
    finally:
        ray.shutdown()
