"""A store outage mid-batch (issue 15, item 1): the S3 endpoint goes away for 30 s, then for 90 s,
while a batch runs on a real Ray against a real S3 server. Nothing is lost and nothing runs twice:
results that came back while the journal could not be written are kept until it can; the controller
says the store is down (ping, farm_store_up) and carries on by itself when it is back."""

from __future__ import annotations

import collections
import time
from datetime import datetime, timezone

import pytest
import yaml

from farm.settings import Settings
from tests.conftest import s3_settings, wait_until, write_episode_variants, write_specs
from tests.support.tcp_gate import TcpGate

pytestmark = [pytest.mark.ray, pytest.mark.s3]


def _payload(tmp_path, settings, episodes: int):
    from farm.loader import load_batch
    from farm.service.host import batch_payload

    folder = tmp_path / "specs"
    write_specs(folder)
    write_episode_variants(folder, episodes)
    path = tmp_path / "batch.yaml"
    path.write_text(yaml.safe_dump({"studio": "acme", "episodes": ["specs/ep*.yaml"]}))
    return batch_payload(load_batch(path, now=datetime.now(timezone.utc)), settings)


def _settings(s3_server, gate, prefix):
    return Settings(
        store=f"s3://farm-outage/{prefix}",
        **s3_settings(s3_server, gate.endpoint),
        studio="acme",
        metrics_port=0,
        retry={"base_s": 0.5, "max_delay_s": 4.0},
        backend_video="sleepy",
        backends={"sleepy": {"kind": "tests.support.fake_backends:Sleepy", "stage": "video", "seconds": 1.5}},
        **{f"backend_{s}": "noop" for s in ("image", "dubbing", "assembly")},
    )


@pytest.mark.parametrize("outage_s", [30, 90])
def test_a_batch_rides_out_an_s3_outage(tmp_path, ray_local, s3_server, outage_s):
    from farm.service.host import ControllerService
    from farm.store.journal import StoreJournal

    host, port = s3_server.endpoint.rsplit(":", 1)
    with TcpGate(host, int(port)) as gate:
        settings = _settings(s3_server, gate, f"run{outage_s}")
        payload = _payload(tmp_path, settings, episodes=4)
        secrets = {k: getattr(settings, k).get_secret_value() for k in ("s3_access_key", "s3_secret_key")}
        service = ControllerService(settings.model_dump(mode="json") | secrets)
        try:
            batch = service.submit(payload)
            # the outage starts once the first clips are done and others run
            wait_until(
                lambda: (
                    sum(
                        1
                        for s in service.controller.actions.values()
                        if s.status == "done" and s.action.stage == "video"
                    )
                    >= 2
                ),
                timeout=120,
                what="the first clips",
            )
            gate.close()
            import sys

            for _ in range(20):
                time.sleep(1)
                print(
                    service.ping()["store_health"],
                    service.runtime.running,
                    len(service.engine.held),
                    len(service.engine.backlog),
                    service.lock._is_owned() if hasattr(service.lock, "_is_owned") else "",
                    file=sys.stderr,
                )
            down = wait_until(
                lambda: not (h := service.ping()["store_health"])["up"] and h,
                timeout=outage_s,
                what="the controller to see the store down",
            )
            assert "Error" in down["error"] or "error" in down["error"].lower()
            assert service.metrics.store_up._value.get() == 0
            time.sleep(max(0.0, outage_s - (time.time() - down["down_since"])))
            assert service.status(batch)["status"] == "running"  # waiting, not failed
            gate.open()
            status = wait_until(
                lambda: (s := service.status(batch))["status"] != "running" and s,
                timeout=240,
                what="the batch to finish",
            )
            assert service.ping()["store_health"]["up"] is True
            assert service.metrics.store_up._value.get() == 1
            assert service.metrics.store_errors._value.get() >= 1
        finally:
            service.stop()
            service.runtime.shutdown()
        assert status["status"] == "finished", status
        assert status["episodes"]["delivered"] == 4, status

        events = list(StoreJournal(service.objects).replay())
    completed = collections.Counter(e.key for e in events if e.type == "action.completed")
    dispatched = collections.Counter(e.key for e in events if e.type == "action.dispatched")
    failed = collections.Counter(e.key for e in events if e.type == "action.failed")
    assert completed and max(completed.values()) == 1, [k for k, n in completed.items() if n > 1]
    # an action ran again only after an attempt that failed (the store was gone while it ran),
    # never because its result was lost
    assert {k: n for k, n in dispatched.items() if n != failed[k] + 1} == {}
    gave_up = [e for e in events if e.type in ("episode.failed", "batch.failed")]
    assert gave_up == []
