"""Work outlives the controller (issue 15, item 3; DESIGN.md, invariant 11).

The controller runs as the farm's detached actor on a real local Ray with one declared GPU. A script
stage calls an OpenAI-compatible server (a real local one that holds the request a few seconds) and
a GPU stage runs on a pool whose backend "loads a model" on its first clip. SIGKILL of the controller
while both run: Ray restarts it, it adopts the workers that outlived it, the batch finishes, the chat
request reached the server once and the model loaded once; afterwards no worker is left behind.
"""

from __future__ import annotations

import json
import os
import signal

import pytest

from farm.core.plan import STAGES, BackendChoice, EpisodeJob, script_params
from farm.core.spec import Episode, Series
from farm.settings import Settings
from farm.store import ArtifactStore, LocalStore
from farm.store.journal import StoreJournal
from tests.conftest import SMALL_SCRIPT, SMALL_SERIES, wait_until
from tests.support.fake_backends import chat_and_loader
from tests.support.openai_server import Answer, openai_server
from workers.script.outline import write_script

pytestmark = [pytest.mark.ray]

KEY = "sk-test-0123456789abcdef"
ADMIN = "admin-token-for-tests"
OUTLINE = [
    {
        "beat": "Ana hears a knock",
        "location": "kitchen",
        "lines": [{"speaker": "ana", "text": "Who's there?"}, {"speaker": "bo", "text": "It's me."}],
    },
]


def _workers(ray) -> list[str]:
    return [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith("farm-worker-")]


def test_controller_killed_while_a_paid_call_and_a_gpu_pool_run_pays_once_and_loads_once(tmp_path, gpu_ray):
    """SIGKILL of the controller while the script's chat request waits at the server and a clip runs
    on the GPU pool: the batch is delivered, the server saw one request, the model loaded once, no
    attempt was journaled as failed or interrupted, and no worker actor is left after the stop."""
    ray = gpu_ray
    from farm.cli.batch import controller
    from farm.runtime.cluster import kill

    loads = tmp_path / "loads"
    loads.mkdir()
    series = Series.model_validate(SMALL_SERIES)
    written = Episode.model_validate({"series": "s.yaml", "number": 1, "title": "Written", "script": SMALL_SCRIPT})
    outlined = Episode.model_validate({"series": "s.yaml", "number": 2, "title": "The Knock", "outline": OUTLINE})
    job = EpisodeJob("acme", "acme", series, outlined, {"script": BackendChoice("llm", "1")})
    answer = json.dumps(write_script(script_params(job)).model_dump(mode="json"))
    with openai_server(api_key=KEY) as server:
        server.plan(Answer(content=answer, delay=8.0))  # held: the controller dies while the call is paid for
        settings = Settings(
            store=str(tmp_path / "store"),
            studio="acme",
            metrics_port=0,
            admin_token=ADMIN,
            retry={"base_s": 0.2, "max_delay_s": 1.0},
            **chat_and_loader(server.base_url, KEY, loads, STAGES),
        )
        handle = controller(settings, create=True)
        try:
            payload = {
                "studio": "acme",
                "namespace": "acme",
                "episodes": [
                    {"series": series.model_dump(mode="json"), "episode": e.model_dump(mode="json")}
                    for e in (written, outlined)
                ],
            }
            batch = ray.get(handle.submit.remote(payload, token=ADMIN))
            wait_until(
                lambda: server.requests and list(loads.glob("load-*")), timeout=60, what="the chat call and the load"
            )
            pid = ray.get(handle.ping.remote(token=ADMIN))["pid"]
            os.kill(pid, signal.SIGKILL)
            restarting = (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError)
            status = wait_until(
                lambda: (
                    (s := ray.get(handle.status.remote(batch, token=ADMIN), timeout=30))["status"] != "running" and s
                ),
                timeout=90,
                what="the batch to finish",
                ignore=restarting,
            )
            assert ray.get(handle.ping.remote(token=ADMIN))["pid"] != pid
        finally:
            try:
                ray.get(handle.stop.remote(token=ADMIN))
            finally:
                kill(handle)
    assert status["status"] == "finished" and status["episodes"]["delivered"] == 2, status
    chats = [r for r in server.requests if r.path == "/v1/chat/completions"]
    assert len(chats) == 1, [r.path for r in server.requests]
    assert len(list(loads.glob("load-*"))) == 1
    events = [e for e in StoreJournal(LocalStore(tmp_path / "store")).replay() if e.batch in (batch, None)]
    artifacts = ArtifactStore(LocalStore(tmp_path / "store"), "acme")
    made = [m for m in map(artifacts.get_manifest, artifacts.done_keys()) if m is not None and m.op == "clip"]
    assert len(list((loads / "clips").iterdir())) == len(made) >= 4  # each clip ran once
    assert not [e.data for e in events if e.type == "action.failed"]
    dispatched = [e.key for e in events if e.type == "action.dispatched"]
    assert len(dispatched) == len(set(dispatched))
    # the workers outlived the controller; once it is stopped for good, they end themselves
    wait_until(lambda: not _workers(ray), timeout=30, what="the workers to end")
