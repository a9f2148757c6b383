"""Webhooks: signed with HMAC-SHA256 over timestamp and body, retried with backoff, to a real HTTP server."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from farm.service.webhooks import Notification, deliver, event_id, send, sign, verify


class _Receiver(BaseHTTPRequestHandler):
    statuses: list[int] = []
    received: list[tuple[dict, bytes]] = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append((dict(self.headers), body))
        status = type(self).statuses.pop(0) if type(self).statuses else 200
        self.send_response(status)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def receiver():
    _Receiver.statuses, _Receiver.received = [], []
    server = HTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/hook", _Receiver
    server.shutdown()


def _quick_service(settings, **kw):
    """A controller on the in-process runtime whose webhooks give up after two quick tries."""
    from farm.runtime.local import InProcessRuntime
    from farm.service.host import ControllerService

    runtime = InProcessRuntime(settings.store_spec(), settings.catalog(), cpus=2)
    return ControllerService(
        settings.model_dump(mode="json"), runtime=runtime, webhook_attempts=2, webhook_backoff_s=0.01, **kw
    )


def test_signature_verifies_and_rejects_tampering():
    """A receiver accepts the signed body and rejects a changed body, a wrong secret or a stale timestamp."""
    body = b'{"event":"batch.finished"}'
    sig = sign(body, "s3cret", 1000)
    assert verify(body, "s3cret", "1000", sig, now=1010)
    assert not verify(body + b" ", "s3cret", "1000", sig, now=1010)
    assert not verify(body, "other", "1000", sig, now=1010)
    assert not verify(body, "s3cret", "1000", sig, now=5000)


def test_delivery_is_signed(receiver):
    """The POST carries the JSON payload, the event, a timestamp and a signature the receiver can check."""
    url, rec = receiver
    ok, _ = deliver(
        Notification(
            "b:episode.delivered:s/ep001", url, "s3cret", "episode.delivered", {"batch": "b", "episode": "s/ep001"}
        ),
        sleep=lambda s: None,
    )
    assert ok
    [(headers, body)] = rec.received
    assert json.loads(body) == {
        "event": "episode.delivered",
        "event_id": event_id("b:episode.delivered:s/ep001"),
        "batch": "b",
        "episode": "s/ep001",
    }
    assert headers["X-Farm-Event"] == "episode.delivered"
    assert verify(
        body, "s3cret", headers["X-Farm-Timestamp"], headers["X-Farm-Signature"], now=int(headers["X-Farm-Timestamp"])
    )


def test_server_errors_are_retried_with_backoff(receiver):
    """5xx and 429 answers are retried with doubling delays until one succeeds."""
    url, rec = receiver
    rec.statuses = [503, 429, 200]
    delays = []
    ok, detail = deliver(
        Notification("n", url, None, "batch.finished", {"batch": "b"}), sleep=delays.append, base_delay_s=0.5
    )
    assert ok and len(rec.received) == 3 and delays == [0.5, 1.0]


def test_client_errors_are_not_retried(receiver):
    """A 4xx answer (other than 429) is final."""
    url, rec = receiver
    rec.statuses = [410]
    ok, detail = deliver(Notification("n", url, None, "batch.finished", {"batch": "b"}), sleep=lambda s: None)
    assert not ok and detail == "HTTP 410" and len(rec.received) == 1


def test_what_is_journaled_names_the_receivers_host_alone(receiver):
    """A delivery that finally fails says how many attempts it made and the last error, and names the
    receiver by host[:port]: never the URL's userinfo, path or query, nor the secret."""
    from farm.service.webhooks import host_of, send

    url, rec = receiver
    rec.statuses = [500] * 3
    port = url.split(":")[2].split("/")[0]
    note = Notification("n", url + "?token=t0k", "hush", "batch.finished", {})
    outcome = send(note, attempts=3, sleep=lambda s: None)
    assert (outcome.ok, outcome.detail, outcome.attempts, outcome.host) == (False, "HTTP 500", 3, f"127.0.0.1:{port}")
    assert (
        host_of("https://a:b@hooks.example.com/x?y=z") == "hooks.example.com"
        and host_of("http://[::1]:81/") == "[::1]:81"
    )
    refused = send(
        Notification("n", "http://127.0.0.1:1/p?token=t0k", "hush", "k", {}), attempts=2, sleep=lambda s: None
    )
    assert not refused.ok and refused.attempts == 2 and refused.host == "127.0.0.1:1" and "t0k" not in refused.detail
    odd = send(Notification("n", "hooks.example.com/t0k", "hush", "k", {}), sleep=lambda s: None)  # final, not raised
    assert not odd.ok and odd.attempts == 1 and odd.detail.startswith("ValueError") and "t0k" not in odd.detail


def test_a_controller_counts_webhooks_that_finally_fail(receiver, tmp_path, monkeypatch):
    """The batch controller (no-op backends, in-process runtime) notifies a receiver that answers 500:
    after its retries each delivery is a journaled ``webhook.failed``; ``farm batch status`` and the
    report show them, and a restarted controller (replaying the journal) shows the same."""
    from farm.bench.batch import synthetic_payload, tiny_episode
    from farm.cli.batch import format_status
    from farm.core.plan import STAGES
    from farm.observe.report import from_batch
    from farm.settings import Settings
    from tests.conftest import wait_until

    url, rec = receiver
    rec.statuses = [500] * 100
    monkeypatch.setenv("FARM_TEST_HOOK_SECRET", "hush-hush")
    settings = Settings(
        store=str(tmp_path / "store"),
        metrics_port=0,
        webhook_secrets={"acme": "FARM_TEST_HOOK_SECRET"},
        **{f"backend_{s}": "noop" for s in STAGES},
    )

    def service(**kw):
        return _quick_service(settings, **kw)

    first = service()
    try:
        payload = synthetic_payload(1, {s: ["noop", "1"] for s in STAGES}, studio="acme", make=tiny_episode)
        payload = {k: v for k, v in payload.items() if k != "backends"}
        hook = {"url": url + "?token=t0ken", "secret_env": "FARM_TEST_HOOK_SECRET"}
        batch = first.submit(payload | {"webhook": hook})
        status = wait_until(
            lambda: (s := first.status(batch))["status"] != "running" and s["notifications"]["failed"] == 2 and s,
            what="both notifications to fail",
        )
        events = first.events(batch)
    finally:
        first.stop()
        first.runtime.shutdown()
    assert status["episodes"]["delivered"] == 1 and len(rec.received) == 4  # two notifications, two attempts each
    host = url.split("/")[2]
    assert status["notifications"] == {
        "sent": 0,
        "failed": 2,
        "last_error": f"batch.finished to {host}: HTTP 500 after 2 attempts",
    }
    assert "webhooks  2 FAILED, 0 sent; last: batch.finished to" in format_status(status)
    failed = [e for e in events if e["type"] == "webhook.failed"]
    assert sorted(e["data"]["kind"] for e in failed) == ["batch.finished", "episode.delivered"]
    assert all(e["data"]["host"] == host and e["data"]["attempts"] == 2 for e in failed)
    assert not any(word in str(failed) for word in ("t0ken", "hush-hush", "/hook"))

    again = service(start_loop=False)  # a restarted controller replays the journal
    try:
        assert again.status(batch)["notifications"] == status["notifications"]
    finally:
        again.stop()
        again.runtime.shutdown()
    report = from_batch(settings, batch)
    assert sorted((n.kind, n.host, n.attempts, n.error) for n in report.notification_failures) == [
        ("batch.finished", host, 2, "HTTP 500"),
        ("episode.delivered", host, 2, "HTTP 500"),
    ]
    assert ("webhooks", "0 delivered, 2 failed") in report.facts


class _Redirector(BaseHTTPRequestHandler):
    target = ""

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(307)  # 307 keeps the method and body: a follower would re-POST the signed event
        self.send_header("Location", type(self).target)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_a_redirect_is_not_followed(receiver):
    """A receiver answering 307 elsewhere: the signed event goes nowhere else, and it is a final failure."""
    url, rec = receiver
    _Redirector.target = url
    server = HTTPServer(("127.0.0.1", 0), _Redirector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        note = Notification("b:batch.finished:", f"http://127.0.0.1:{server.server_port}/h", "s", "batch.finished", {})
        outcome = send(note, attempts=3, sleep=lambda s: None)
    finally:
        server.shutdown()
    assert not outcome.ok and outcome.attempts == 1 and "redirects are not followed" in outcome.detail
    assert rec.received == []


@pytest.mark.parametrize("url", ["http://169.254.169.254/latest/meta-data/", "http://[fe80::1]:8080/h"])
def test_link_local_and_metadata_receivers_are_refused(url):
    """The cloud's metadata service and other link-local addresses are never sent to, unless allowed."""
    note = Notification("b:batch.finished:", url, "s", "batch.finished", {})
    outcome = send(note, attempts=3, sleep=lambda s: None, timeout_s=0.5)
    assert not outcome.ok and outcome.attempts == 1 and outcome.detail.startswith("refused: ")
    assert "FARM_WEBHOOK_ALLOW_LINK_LOCAL" in outcome.detail
    allowed = send(note, attempts=1, sleep=lambda s: None, timeout_s=0.5, allow_link_local=True)
    assert not allowed.detail.startswith("refused")  # tried (and failed to connect, here)


def _acme_payload() -> dict:
    from farm.bench.batch import synthetic_payload, tiny_episode

    payload = synthetic_payload(1, {}, studio="acme", make=tiny_episode)
    return {k: v for k, v in payload.items() if k != "backends"}


def _noop_settings(tmp_path, **fields):
    from farm.core.plan import STAGES
    from farm.settings import Settings

    return Settings(store=str(tmp_path / "store"), metrics_port=0, **fields, **{f"backend_{s}": "noop" for s in STAGES})


def test_a_batch_cannot_name_another_variable_as_its_webhook_secret(tmp_path, monkeypatch):
    """``webhook.secret_env`` naming any variable but the one bound to its studio (FARM_WEBHOOK_SECRETS) is
    refused in the same words whether the variable exists on the controller or not; the studio's own
    name, or none, is accepted."""
    from farm.errors import UsageError
    from farm.service.host import submission

    monkeypatch.setenv("RAY_AUTH_TOKEN", "the-clusters-token")
    monkeypatch.setenv("BOLT_HOOK_SECRET", "bolts-secret")
    monkeypatch.delenv("NO_SUCH_VARIABLE", raising=False)
    settings = _noop_settings(tmp_path, webhook_secrets={"acme": "ACME_HOOK_SECRET", "bolt": "BOLT_HOOK_SECRET"})
    hook = {"url": "https://hooks.example.com/farm"}
    said = set()
    for name in ("RAY_AUTH_TOKEN", "BOLT_HOOK_SECRET", "NO_SUCH_VARIABLE"):
        with pytest.raises(UsageError) as caught:
            submission(_acme_payload() | {"webhook": hook | {"secret_env": name}}, settings, settings.catalog())
        said.add(str(caught.value).replace(name, "<name>"))
    (message,) = said
    assert "webhook.secret_env" in message and message.endswith("drop webhook.secret_env")
    assert "<name>" not in message  # nor does it echo the name asked for
    for own in ({"secret_env": "ACME_HOOK_SECRET"}, {}):
        submission(_acme_payload() | {"webhook": hook | own}, settings, settings.catalog())


def test_webhooks_are_signed_with_the_studios_secret_with_an_event_id_stable_across_retries_and_restarts(
    receiver, tmp_path, monkeypatch
):
    """A batch naming no secret gets its studio's (bound on the controller). Each notification carries one
    event id, in ``X-Farm-Event-Id`` and in the body: the same on every retry and when a restarted
    controller sends it again, and different for different events."""
    from tests.conftest import wait_until

    url, rec = receiver
    rec.statuses = [500] * 4  # the first controller's two notifications fail, twice each
    monkeypatch.setenv("ACME_HOOK_SECRET", "acmes-own-secret")
    monkeypatch.setenv("FARM_TEST_HOOK_SECRET", "not-acmes")
    settings = _noop_settings(tmp_path, webhook_secrets={"acme": "ACME_HOOK_SECRET"})

    def service(**kw):
        return _quick_service(settings, **kw)

    first = service()
    try:
        batch = first.submit(_acme_payload() | {"webhook": {"url": url}})
        wait_until(lambda: first.status(batch)["notifications"]["failed"] == 2, what="both notifications to fail")
    finally:
        first.stop()
        first.runtime.shutdown()
    again = service()  # replays the journal and sends the failed notifications again (the receiver now says 200)
    try:
        wait_until(lambda: again.status(batch)["notifications"]["sent"] == 2, what="both notifications to be sent")
    finally:
        again.stop()
        again.runtime.shutdown()
    assert len(rec.received) == 6
    ids: dict[str, set[str]] = {}
    for headers, body in rec.received:
        assert verify(body, "acmes-own-secret", headers["X-Farm-Timestamp"], headers["X-Farm-Signature"], now=1e18) or (
            headers["X-Farm-Signature"] == sign(body, "acmes-own-secret", int(headers["X-Farm-Timestamp"]))
        )
        assert json.loads(body)["event_id"] == headers["X-Farm-Event-Id"]
        ids.setdefault(json.loads(body)["event"], set()).add(headers["X-Farm-Event-Id"])
    assert sorted(ids) == ["batch.finished", "episode.delivered"]
    assert all(len(v) == 1 for v in ids.values()) and ids["batch.finished"] != ids["episode.delivered"]
