"""The batch controller as the named actor on a real local Ray: one studio's bad backend answer fails its
own episode, never the controller, and a SIGKILLed controller replays that journal cleanly."""

from __future__ import annotations

import os
import signal

import pytest

from farm.core.plan import STAGES
from farm.core.spec import Episode, Series
from farm.settings import Settings
from tests.conftest import SMALL_SERIES, wait_until

pytestmark = [pytest.mark.ray]


def _payload(studio: str, titles: list[str]) -> dict:
    series = Series.model_validate(SMALL_SERIES).model_dump(mode="json")
    episodes = []
    for n, title in enumerate(titles, start=1):
        outline = [
            {
                "beat": f"{title} begins",
                "location": "kitchen",
                "lines": [
                    {"speaker": "ana", "text": f"{title}: who is there?"},
                    {"speaker": "bo", "text": f"{title}: only me."},
                ],
            }
        ]
        episodes.append(
            {
                "series": series,
                "episode": Episode.model_validate(
                    {"series": "series.yaml", "number": n, "title": title, "outline": outline}
                ).model_dump(mode="json"),
            }
        )
    return {"studio": studio, "namespace": studio, "priority": "normal", "budget": {}, "episodes": episodes}


ADMIN = "admin-token-for-tests"


def test_a_script_naming_an_unknown_speaker_fails_only_its_episode_and_replays_cleanly(tmp_path, ray_local):
    """A studio's own script backend (``package.module:Class``) answers one episode with a speaker the
    series lacks: that episode fails with the reason, its sister episode and a second batch in the same
    controller are delivered; after a SIGKILL, Ray's restart of the controller replays the journal
    without an error and reports the same."""
    import ray

    from farm.cli.batch import controller
    from farm.runtime.cluster import kill

    settings = Settings(
        store=str(tmp_path / "store"),
        metrics_port=0,
        admin_token=ADMIN,
        backend_script="scripted",
        backends={"scripted": {"kind": "tests.support.fake_backends:Scripted", "rogue_speaker": "zed"}},
        **{f"backend_{s}": "noop" for s in STAGES if s != "script"},
    )
    handle = controller(settings, create=True)
    try:
        first = ray.get(handle.submit.remote(_payload("acme", ["Rogue", "Calm"]), token=ADMIN))
        second = ray.get(handle.submit.remote(_payload("other", ["Quiet"]), token=ADMIN))
        restarting = (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError)
        for batch in (first, second):
            wait_until(
                lambda b=batch: ray.get(handle.status.remote(b, token=ADMIN), timeout=30)["status"] != "running",
                timeout=180,
                what=f"batch {batch} to finish",
                ignore=restarting,
            )
        before = {b: ray.get(handle.status.remote(b, token=ADMIN)) for b in (first, second)}
        assert before[first]["status"] == "finished" and before[first]["episodes"]["delivered"] == 1
        (failure,) = before[first]["failures"]
        assert (
            failure["episode"] == "test-series/ep001" and "'zed' is not a character of the series" in failure["reason"]
        )
        assert before[second]["episodes"] == {"total": 1, "delivered": 1, "failed": 0, "running": 0}

        ping = ray.get(handle.ping.remote(token=ADMIN))
        os.kill(ping["pid"], signal.SIGKILL)
        again = wait_until(
            lambda: (p := ray.get(handle.ping.remote(token=ADMIN), timeout=30))["pid"] != ping["pid"] and p,
            timeout=180,
            what="the controller to restart",
            ignore=restarting,
        )
        assert again["errors"] == [] and again["batches"] == 2 and again["last_seq"] >= ping["last_seq"]
        after = {b: ray.get(handle.status.remote(b, token=ADMIN)) for b in (first, second)}
        for b in (first, second):
            assert {k: after[b][k] for k in ("status", "episodes", "failures")} == {
                k: before[b][k] for k in ("status", "episodes", "failures")
            }
        assert not [e for e in ray.get(handle.events.remote(first, token=ADMIN)) if e["type"] == "batch.failed"]
    finally:
        try:
            ray.get(handle.stop.remote(token=ADMIN), timeout=30)
        finally:
            kill(handle)
