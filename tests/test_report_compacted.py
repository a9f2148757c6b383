"""farm report of a batch whose events compaction moved to its archive (issue 15, item 4): the report
is rebuilt from the archive and says what it said before compaction."""

from __future__ import annotations

from farm.bench.batch import synthetic_payload, tiny_episode
from farm.core.plan import STAGES
from farm.observe.report import from_batch
from farm.settings import Settings
from tests.conftest import controller_services, wait_until

ADMIN = "admin-token-for-the-report-test"


def _summary(data):
    return sorted(map(repr, data.bars)), data.facts, data.spend, data.saved, data.episode_failures


def test_a_compacted_batch_reports_as_before(tmp_path):
    settings = Settings(store=str(tmp_path / "store"), metrics_port=0, **{f"backend_{s}": "noop" for s in STAGES})
    with controller_services(settings, ADMIN, cpus=2) as start:
        service = start(loop=True)
        payload = {
            k: v for k, v in synthetic_payload(2, {}, studio="acme", make=tiny_episode).items() if k != "backends"
        }
        batch = service.submit(payload, token=ADMIN)
        wait_until(lambda: service.status(batch, token=ADMIN)["status"] == "finished", timeout=120, what="the batch")
        service.journal.flush()
        before = from_batch(settings, batch)
        with service.lock:
            plan = service.journal.plan_compaction(
                service.controller, service.controller.batches[batch].finished_at + 1, older_than=0.0
            )
        assert plan is not None
        service.journal.compact(plan)
    after = from_batch(settings, batch)
    assert before.bars and _summary(after) == _summary(before)
