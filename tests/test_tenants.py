"""Studios are apart on the controller: every call carries a token, a studio sees and acts on its own
batches only (another's is answered as an unknown one), submits only as itself, and only the admin
manages studios and stops the controller. Tokens are kept hashed in the store."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from farm.bench.batch import synthetic_payload, tiny_episode
from farm.core.plan import STAGES
from farm.errors import FarmError, UsageError
from farm.service.tenants import NotAllowed
from farm.settings import Settings
from farm.store import LocalStore
from farm.store.journal import StoreJournal
from tests.conftest import controller_services

ADMIN = "farm_admin_token_for_these_tests"


@pytest.fixture
def farm(tmp_path):
    """A factory of controllers (in-process runtime, no loop) on one store, guarded by ADMIN; stopped after."""
    settings = Settings(
        store=str(tmp_path / "store"), metrics_port=0, admin_token=ADMIN, **{f"backend_{s}": "noop" for s in STAGES}
    )
    with controller_services(settings, ADMIN, cpus=1) as start:
        yield start


def _payload(studio: str) -> dict:
    payload = synthetic_payload(1, {}, studio=studio, make=tiny_episode)
    return {k: v for k, v in payload.items() if k != "backends"}


def _unknown(call, batch_id: str) -> str:
    with pytest.raises(KeyError) as caught:
        call(batch_id)
    return str(caught.value.args[0]).replace(batch_id, "<id>")


def test_tokens_are_kept_hashed_and_a_studio_is_named_by_its_token(farm, tmp_path):
    """``studio add`` returns a token once; the store holds its SHA-256 under _farm/, never the token."""
    service = farm()
    acme = service.studio("add", "acme", token=ADMIN)
    assert acme.startswith("farm_") and len(acme) > 40
    stored = list((tmp_path / "store").rglob("*"))
    assert not [p for p in stored if p.is_file() and acme.encode() in p.read_bytes()]
    record = json.loads((tmp_path / "store" / "_farm" / "studios" / "acme.json").read_text())
    assert record["studio"] == "acme" and len(record["sha256"]) == 64
    assert service.studio("list", token=ADMIN) == [
        {"studio": "acme", "created_at": record["created_at"], "revoked_at": None, "active": True}
    ]
    with pytest.raises(UsageError, match="has a token already"):
        service.studio("add", "acme", token=ADMIN)
    with pytest.raises(UsageError, match="not a slug"):
        service.studio("add", "_farm", token=ADMIN)
    batch = service.submit(_payload("acme"), token=acme)
    assert service.status(batch, token=acme)["studio"] == "acme"


def test_every_call_needs_a_token_the_controller_knows(farm):
    """No token, a made-up one and a revoked one are each refused, on every call, with the fix."""
    service = farm()
    batch = service.submit(_payload("acme"), token=ADMIN)
    gone = service.studio("add", "gone", token=ADMIN)
    assert service.studio("revoke", "gone", token=ADMIN) is True
    calls = {
        "submit": lambda t: service.submit(_payload("acme"), token=t),
        "list": lambda t: service.list(token=t),
        "status": lambda t: service.status(batch, token=t),
        "cancel": lambda t: service.cancel(batch, token=t),
        "events": lambda t: service.events(batch, token=t),
        "ping": lambda t: service.ping(token=t),
        "studio": lambda t: service.studio("list", token=t),
        "stop": lambda t: service.stop(token=t),
    }
    for call in calls.values():
        for token, said in ((None, "needs a token"), ("farm_made_up", "does not know this token"), (gone, "revoked")):
            with pytest.raises(NotAllowed, match=said):
                call(token)
    assert service.status(batch, token=ADMIN)["status"] == "running"  # cancel was refused each time


def test_a_studio_sees_and_acts_on_its_own_batches_only(farm):
    """Studio B's token lists none of A's batches; status, cancel and events of A's batch answer exactly
    as for a batch that does not exist; A's batch runs on, uncancelled."""
    service = farm()
    a, b = (service.studio("add", s, token=ADMIN) for s in ("acme", "bolt"))
    mine = service.submit(_payload("acme"), token=a)
    theirs = service.submit(_payload("bolt"), token=b)
    assert [r["batch"] for r in service.list(token=a)] == [mine]
    assert [r["batch"] for r in service.list(token=b)] == [theirs]
    assert sorted(r["batch"] for r in service.list(token=ADMIN)) == sorted([mine, theirs])
    for method in (service.status, service.cancel, service.events):
        call = lambda batch_id, m=method: m(batch_id, token=b)  # noqa: E731
        assert _unknown(call, mine) == _unknown(call, "acme-20990101-000000-deadbeef")
    assert service.status(mine, token=a)["status"] == "running"
    assert service.ping(token=b) == {
        "started_at": service.started_at,
        "batches": 1,
        "store": service.objects.describe(),
    }
    assert "errors" in service.ping(token=ADMIN)


def test_a_studio_submits_only_as_itself(farm, tmp_path):
    """A payload naming another studio than the token's is refused with the fix, and nothing is journaled."""
    service = farm()
    a = service.studio("add", "acme", token=ADMIN)
    with pytest.raises(NotAllowed, match=r"this token is studio 'acme''s.*set studio: acme in the batch file"):
        service.submit(_payload("bolt"), token=a)
    assert not [e for e in StoreJournal(LocalStore(tmp_path / "store")).replay() if e.type == "batch.submitted"]
    assert service.list(token=ADMIN) == []


def test_only_the_admin_manages_studios_and_stops_the_controller_and_revocation_outlives_a_restart(farm):
    """A studio's token cannot add, list or revoke studios nor stop the controller; a revoked token stays
    refused by a controller restarted on the same store, and the others keep working."""
    service = farm()
    a, b = (service.studio("add", s, token=ADMIN) for s in ("acme", "bolt"))
    for action, name in (("add", "evil"), ("list", ""), ("revoke", "bolt")):
        with pytest.raises(NotAllowed, match="needs the admin credential"):
            service.studio(action, name, token=a)
    with pytest.raises(NotAllowed, match="needs the admin credential"):
        service.stop(token=a)
    assert service.studio("revoke", "acme", token=ADMIN) is True
    with pytest.raises(NotAllowed, match="revoked"):
        service.list(token=a)
    again = farm()
    with pytest.raises(NotAllowed, match="revoked"):
        again.list(token=a)
    assert again.list(token=b) == []
    assert [s["active"] for s in again.studio("list", token=ADMIN)] == [False, True]


def _farm_cli(env: dict, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "farm.cli", *args],
        env=env,
        cwd=Path(env["FARM_STATE_DIR"]).parent,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.ray
def test_the_commands_carry_the_credentials_through_ray(tmp_path):
    """On a real local Ray started by ``farm controller start``: the admin credential is made in the state
    dir (mode 0600) and used by the commands run there (a retried submit with the same key gets the same
    batch); ``farm studio add`` prints a token with which the
    studio lists only its batches, cannot read the admin's batch of another studio (exit 1, as an unknown
    one) nor submit as it (exit 2, with the fix), nor stop the controller."""
    from tests.conftest import write_specs

    write_specs(tmp_path / "specs")
    (tmp_path / "batch.yaml").write_text("studio: bolt\nepisodes: [specs/ep001.yaml]\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FARM_", "RAY_"))}
    env |= {
        "HOME": str(tmp_path / "home"),
        "FARM_STATE_DIR": str(tmp_path / "state"),
        "FARM_STORE": str(tmp_path / "store"),
        "FARM_METRICS_PORT": "0",
        "FARM_NUM_CPUS": "1",
        **{f"FARM_BACKEND_{s.upper()}": "noop" for s in STAGES if s != "script"},
    }
    started = _farm_cli(env, "controller", "start")
    try:
        assert started.returncode == 0, started.stderr
        admin_file = tmp_path / "state" / "admin_token"
        assert stat.S_IMODE(admin_file.stat().st_mode) == 0o600
        made = _farm_cli(env, "studio", "add", "acme")
        assert made.returncode == 0, made.stderr
        acme = made.stdout.strip()
        assert "shown this once" in made.stderr and acme != admin_file.read_text().strip()
        theirs = _farm_cli(env, "batch", "submit", "batch.yaml", "--idempotency-key", "nightly:1")  # bolt's
        assert theirs.returncode == 0, theirs.stderr
        batch = theirs.stdout.strip()
        retried = _farm_cli(env, "batch", "submit", "batch.yaml", "--idempotency-key", "nightly:1")
        assert retried.returncode == 0 and retried.stdout.strip() == batch, retried.stderr
        as_acme = env | {"FARM_TOKEN": acme}
        listed = _farm_cli(as_acme, "batch", "list", "--json")
        assert listed.returncode == 0 and json.loads(listed.stdout) == [], listed.stderr
        status = _farm_cli(as_acme, "batch", "status", batch)
        unknown = _farm_cli(as_acme, "batch", "status", "bolt-20990101-000000-deadbeef")
        assert status.returncode == unknown.returncode == 1
        assert status.stderr.replace(batch, "<id>") == unknown.stderr.replace("bolt-20990101-000000-deadbeef", "<id>")
        forged = _farm_cli(as_acme, "batch", "submit", "batch.yaml")
        assert forged.returncode == 2 and "set studio: acme in the batch file" in forged.stderr
        assert acme not in forged.stderr + status.stderr
        stop = _farm_cli(as_acme, "controller", "stop")
        assert stop.returncode == 2 and "needs the admin credential" in stop.stderr
    finally:
        stopped = _farm_cli(env, "controller", "stop", "--ray")
    assert stopped.returncode == 0, stopped.stderr


def test_a_controller_on_a_cluster_is_never_started_unguarded():
    """``controller_actor`` refuses settings without an admin credential (before touching Ray)."""
    from farm.runtime.cluster import _secrets

    with pytest.raises(FarmError, match="FARM_ADMIN_TOKEN"):
        _secrets(Settings())
    assert _secrets(Settings(admin_token="x" * 20))["admin_token"] == "x" * 20


def test_the_mask_of_a_dumped_secret_is_never_the_admin_credential(tmp_path):
    """Settings dumped as JSON show a secret as '**********': a controller given that has no admin token
    (an in-process one, as ``farm bench`` builds), rather than one anybody could send."""
    from farm.service.tenants import Tenants

    dumped = Settings(admin_token="farm_admin_real").model_dump(mode="json")["admin_token"]
    assert not Tenants(LocalStore(tmp_path), dumped).guarded
    assert Tenants(LocalStore(tmp_path), "farm_admin_real").guarded
