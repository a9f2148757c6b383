"""Webhooks: signed with HMAC-SHA256 over timestamp and body, retried with backoff, to a real HTTP server."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from farm.service.webhooks import Notification, deliver, sign, verify


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
    assert json.loads(body) == {"event": "episode.delivered", "batch": "b", "episode": "s/ep001"}
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
