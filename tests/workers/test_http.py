"""workers._http.call on real loopback servers: a redirect never carries the key to another origin."""

from __future__ import annotations

import http.server
import threading

import pytest

from workers._http import call, status_of
from workers.api import StageError


class _Server:
    def __init__(self, answer):
        seen = self.seen = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                seen.append((self.path, self.headers.get("Authorization")))
                status, headers, body = answer(self.path)
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def servers():
    other = _Server(lambda path: (200, {}, b"elsewhere"))

    def home_answer(path):
        if path == "/away":
            return 302, {"Location": other.url + "/landed"}, b""
        if path == "/here":
            return 302, {"Location": "/landed"}, b""
        if path == "/file":
            return 302, {"Location": "file:///etc/passwd"}, b""
        if path == "/missing":
            return 404, {}, b"no such thing"
        return 200, {}, b"home"

    home = _Server(home_answer)
    yield home, other
    home.close()
    other.close()


def test_a_redirect_to_another_origin_drops_the_key_and_one_at_home_keeps_it(servers):
    home, other = servers
    auth = {"Authorization": "Bearer sk-secret"}
    assert call("GET", home.url + "/away", what="t", headers=auth).body == b"elsewhere"
    assert other.seen == [("/landed", None)]
    assert call("GET", home.url + "/here", what="t", headers=auth).body == b"home"
    assert home.seen[-1] == ("/landed", "Bearer sk-secret")


def test_a_redirect_off_http_is_refused_and_an_answer_carries_its_status(servers):
    home, _ = servers
    with pytest.raises(StageError, match="not allowed|not an http"):
        call("GET", home.url + "/file", what="t")
    with pytest.raises(StageError) as err:
        call("GET", home.url + "/missing", what="t")
    assert status_of(err.value) == 404 and not err.value.retryable
