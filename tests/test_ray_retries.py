"""Ray retries nothing behind the farm's back: a worker killed mid-action is the farm's failed attempt,
journaled, counted and retried under the farm's own policy (issue 15, item 6)."""

from __future__ import annotations

import os
import signal

import pytest

from farm.core.plan import STAGES
from farm.core.spec import Episode, Series
from farm.settings import Settings
from farm.store import LocalStore
from farm.store.journal import StoreJournal
from tests.conftest import SMALL_SCRIPT, SMALL_SERIES, wait_until

pytestmark = [pytest.mark.ray]


def test_a_killed_task_worker_is_a_journaled_counted_attempt_and_the_farm_retries_it(tmp_path, ray_local):
    """SIGKILL of the process running a clip (a Ray task): the journal shows one retryable failure of
    that clip (not an interruption), then a retry that completes; the metrics count the failed attempt."""
    from farm.service.host import ControllerService

    pids = tmp_path / "pids"
    pids.mkdir()
    settings = Settings(
        store=str(tmp_path / "store"),
        studio="acme",
        metrics_port=0,
        retry={"base_s": 0.1, "max_delay_s": 0.2},
        backends={"sleepy": {"kind": "tests.support.fake_backends:Sleepy", "seconds": 1.5, "pids": str(pids)}},
        **{f"backend_{s}": "noop" for s in STAGES if s != "video"},
        backend_video="sleepy",
    )
    episode = {"series": "series.yaml", "number": 1, "title": "Test Episode", "script": SMALL_SCRIPT}
    item = {
        "series": Series.model_validate(SMALL_SERIES).model_dump(mode="json"),
        "episode": Episode.model_validate(episode).model_dump(mode="json"),
    }
    service = ControllerService(settings.model_dump(mode="json"))
    try:
        batch = service.submit({"studio": "acme", "namespace": "acme", "episodes": [item]})
        first = wait_until(lambda: sorted(pids.iterdir()), timeout=60, what="a clip to start")[0]
        killed = int(first.name)
        os.kill(killed, signal.SIGKILL)
        status = wait_until(
            lambda: (s := service.status(batch))["status"] != "running" and s, timeout=90, what="the batch to finish"
        )
        failed = service.metrics.registry.get_sample_value(
            "farm_actions_total", {"studio": "acme", "stage": "video", "outcome": "failed"}
        )
        retried = service.metrics.registry.get_sample_value(
            "farm_actions_total", {"studio": "acme", "stage": "video", "outcome": "retried"}
        )
    finally:
        service.stop()
        service.runtime.shutdown()
    assert status["status"] == "finished" and status["episodes"]["delivered"] == 1, status
    events = [e for e in StoreJournal(LocalStore(tmp_path / "store")).replay() if e.batch in (batch, None)]
    failures = [e for e in events if e.type == "action.failed"]
    assert len(failures) == 1, [(e.key, e.data) for e in failures]
    (failure,) = failures
    assert failure.data.retryable and not failure.data.interrupted and failure.data.attempt == 1
    assert "worker was lost" in failure.data.error
    after = [e.type for e in events if e.key == failure.key and e.seq > failure.seq]
    assert after[:3] == ["action.retry", "action.dispatched", "action.completed"], after
    completed = next(e for e in events if e.key == failure.key and e.type == "action.completed")
    assert completed.data.worker["pid"] != str(killed)
    assert failed == 1 and retried == 1
    # every other action ran once
    dispatched = [e.key for e in events if e.type == "action.dispatched" and e.key != failure.key]
    assert len(dispatched) == len(set(dispatched))
