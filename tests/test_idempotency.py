"""A submission retried with the same idempotency key (a CronJob's Job that ran again) returns the
batch submitted the first time: nothing is journaled again, across a controller restart too, so its
episodes are rendered, notified and counted once."""

from __future__ import annotations

import shlex

import pytest

from farm.bench.batch import synthetic_payload, tiny_episode
from farm.core.plan import STAGES
from farm.errors import UsageError
from farm.settings import Settings
from farm.store import LocalStore
from farm.store.journal import StoreJournal
from tests.conftest import controller_services, wait_until

ADMIN = "farm_admin_token_for_these_tests"


@pytest.fixture
def farm(tmp_path):
    """A factory of controllers (in-process runtime) on one store, guarded by ADMIN; stopped after."""
    settings = Settings(store=str(tmp_path / "store"), metrics_port=0, **{f"backend_{s}": "noop" for s in STAGES})
    with controller_services(settings, ADMIN, cpus=2) as start:
        yield start


def _payload(studio: str, episodes: int = 1) -> dict:
    payload = synthetic_payload(episodes, {}, studio=studio, make=tiny_episode)
    return {k: v for k, v in payload.items() if k != "backends"}


def _submitted(tmp_path) -> list[str]:
    return [e.batch for e in StoreJournal(LocalStore(tmp_path / "store")).replay() if e.type == "batch.submitted"]


def test_the_same_key_returns_the_first_batch_and_journals_nothing(farm, tmp_path):
    """Same studio, same key: the first batch's id, one journaled submission; another key, or the same
    key from another studio, is a new batch; no key at all is a new batch every time."""
    service = farm()
    acme = service.studio("add", "acme", token=ADMIN)
    bolt = service.studio("add", "bolt", token=ADMIN)
    first = service.submit(_payload("acme"), "nightly:nightly.yaml:farm-nightly-29420160", token=acme)
    again = service.submit(_payload("acme", 2), "nightly:nightly.yaml:farm-nightly-29420160", token=acme)
    assert again == first and _submitted(tmp_path) == [first]
    other_key = service.submit(_payload("acme"), "nightly:nightly.yaml:farm-nightly-29421600", token=acme)
    other_studio = service.submit(_payload("bolt"), "nightly:nightly.yaml:farm-nightly-29420160", token=bolt)
    assert len({first, other_key, other_studio}) == 3
    assert [r["batch"] for r in service.list(token=bolt)] == [other_studio]
    unkeyed = [service.submit(_payload("acme"), token=acme) for _ in range(2)]
    assert len(set(unkeyed)) == 2 and len(_submitted(tmp_path)) == 5
    journaled = {e.batch: e.data.idempotency_key for e in StoreJournal(LocalStore(tmp_path / "store")).replay()}
    assert journaled[first] == "nightly:nightly.yaml:farm-nightly-29420160" and journaled[unkeyed[0]] is None


def test_a_restarted_controller_still_knows_the_key(farm, tmp_path):
    """The key is journaled with the submission: a controller started again on the store (replaying the
    journal) answers the retry with the same batch and journals nothing."""
    first = farm().submit(_payload("acme"), "k-1", token=ADMIN)
    again = farm()
    assert again.submit(_payload("acme"), "k-1", token=ADMIN) == first
    assert _submitted(tmp_path) == [first]
    assert again.status(first, token=ADMIN)["studio"] == "acme"


@pytest.mark.parametrize("key", ["", "has space", "x" * 201, "tab\there", "naïve"])
def test_a_key_that_is_not_printable_ascii_is_refused(farm, key):
    """An empty, spaced, over-long or non-ASCII key is refused with what a key may be, before anything."""
    with pytest.raises(UsageError, match="--idempotency-key must be 1 to 200 printable characters"):
        farm().submit(_payload("acme"), key, token=ADMIN)


def test_a_retried_submission_counts_its_episodes_once(farm, tmp_path):
    """A batch submitted, then submitted again with its key while it runs, is rendered once: the real
    metrics registry counts its episodes once, and the controller holds one batch."""
    service = farm(loop=True)
    first = service.submit(_payload("acme", 2), "nightly:2026-12-01", token=ADMIN)
    assert service.submit(_payload("acme", 2), "nightly:2026-12-01", token=ADMIN) == first
    wait_until(lambda: service.status(first, token=ADMIN)["status"] != "running", what="the batch to finish")
    assert service.submit(_payload("acme", 2), "nightly:2026-12-01", token=ADMIN) == first  # after it ended too
    delivered = service.metrics.registry.get_sample_value(
        "farm_episodes_total", {"studio": "acme", "outcome": "delivered"}
    )
    assert delivered == 2
    status = service.status(first, token=ADMIN)
    assert status["episodes"] == {"total": 2, "delivered": 2, "failed": 0, "running": 0}
    assert [r["batch"] for r in service.list(token=ADMIN)] == [first]


def test_the_nightly_cronjob_submits_with_a_key_from_its_file_and_scheduled_time(tmp_path):
    """The chart's CronJob runs ``farm batch submit`` with --idempotency-key built from the batch file and
    the Job's name (which holds its scheduled time, and is the same on every retry of that Job); the
    command, with Kubernetes' $(VAR) expansion done, is one the farm parses. Off: no key."""
    from tests.deploy.conftest import CHART, NAMESPACE, RELEASE, Rendered, helm_sdk

    chart = helm_sdk().Chart.load(CHART)
    values = {"nightly": {"enabled": True, "files": {"nightly.yaml": "studio: acme\nepisodes: [a.yaml]\n"}}}
    rendered = Rendered(chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True))
    (cron,) = rendered.all("CronJob")
    (container,) = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["FARM_NIGHTLY_JOB"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.labels['job-name']"
    assert "FARM_ADMIN_TOKEN" in env  # no studio token given: the admin credential
    job = f"{RELEASE}-farm-nightly-29420160"  # what the CronJob controller names the Job of one run
    argv = [a.replace("$(FARM_NIGHTLY_JOB)", job) for a in container["command"] + container["args"]]
    assert argv[:3] == ["farm", "batch", "submit"]
    from farm.cli.app import build_parser

    args = build_parser().parse_args(argv[1:])
    assert args.idempotency_key == f"nightly:nightly.yaml:{job}", shlex.join(argv)
    off = Rendered(
        chart.render(
            {"nightly": dict(values["nightly"], idempotent=False, tokenSecret={"name": "acme-token", "key": "token"})},
            name=RELEASE,
            namespace=NAMESPACE,
            is_install=True,
        )
    )
    (container,) = off.one("CronJob")["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    assert "args" not in container and "--idempotency-key" not in container["command"]
    env = {e["name"]: e for e in container["env"]}
    assert env["FARM_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "acme-token", "key": "token"}
    assert "FARM_ADMIN_TOKEN" not in env
