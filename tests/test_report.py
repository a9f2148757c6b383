"""`farm report`: one self-contained HTML file per batch or episode, read from the store alone."""

from __future__ import annotations

import re
import time
import xml.etree.ElementTree as ET
from html.parser import HTMLParser

import pytest

from farm.core.plan import STAGES
from farm.observe._report_html import render
from farm.observe.report import Bar, Failure, ReportData, from_batch, write_report
from farm.settings import Settings
from tests.conftest import wait_until, write_specs

HOSTILE = "<script>alert(\"x\")</script> & 'quotes' </svg>"


class _Strict(HTMLParser):
    """Collects tags; an unbalanced page shows as a leftover stack."""

    VOID = {"meta", "br", "img", "rect", "line", "path", "stop"}

    def __init__(self):
        super().__init__()
        self.stack, self.tags = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_endtag(self, tag):
        if tag not in self.VOID:
            assert self.stack and self.stack[-1] == tag, (tag, self.stack[-5:])
            self.stack.pop()


def check_self_contained(page: str) -> _Strict:
    """Balanced tags, every SVG is well-formed XML, nothing to fetch, no script."""
    parser = _Strict()
    parser.feed(page)
    assert parser.stack == []
    for svg in re.findall(r"<svg.*?</svg>", page, re.S):
        ET.fromstring(svg)
    assert "<script" not in page.lower() and not re.search(r"https?://", page)
    assert not any(k in attrs for _, attrs in parser.tags for k in ("src", "href"))
    return parser


def test_every_user_string_is_escaped():
    """Labels, lanes, reasons and titles with markup come out as text, and the page stays well-formed."""
    bars = [
        Bar(lane=HOSTILE, start=100.0, end=103.0, stage="video", label=HOSTILE, episode=HOSTILE, key="a" * 64),
        Bar(
            lane="n/1 pid 2",
            start=101.0,
            end=101.5,
            stage="dubbing",
            label="line",
            episode="s/ep",
            key="b" * 64,
            ok=False,
            error=HOSTILE,
        ),
    ]
    data = ReportData(
        title=HOSTILE,
        kind="batch",
        facts=[("name", HOSTILE)],
        bars=bars,
        spend={(HOSTILE, "video"): {"cpu_seconds": 3.0, "gpu_seconds": 2.0, "tokens": 10.0, "money": 1.0}},
        failures=[Failure(101.5, HOSTILE, HOSTILE, "dubbing", HOSTILE, 1, HOSTILE)],
        episode_failures=[(HOSTILE, HOSTILE)],
        deadline=102.0,
        submitted=99.0,
    )
    page = render(data)
    check_self_contained(page)
    assert HOSTILE not in page and "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page


def test_long_idle_gaps_are_cut_from_the_timeline():
    """Work two days apart is drawn side by side with the gap marked, not as two dots."""
    bars = [
        Bar("n/1 pid 1", 0.0, 10.0, "image", "sheet ana", "s/ep", "a" * 64),
        Bar("n/1 pid 1", 172_800.0, 172_830.0, "video", "clip s01", "s/ep", "b" * 64),
    ]
    page = render(ReportData(title="t", kind="episode", bars=bars))
    widths = [float(w) for w in re.findall(r'<rect x="[\d.]+" y="\d+" width="([\d.]+)" height="16" fill="#', page)]
    assert len(widths) == 2 and min(widths) > 50
    assert "idle 1 d 23 h" in page


def test_batch_report_from_the_journal(tmp_path):
    """A batch run by the controller (no-op backends; one outline episode the no-op script backend cannot
    write): the report draws every completed attempt on its worker lane, the failure with its reason,
    spend by stage, and, for a second batch of the same episodes, the cache savings."""
    from farm.bench.batch import synthetic_payload, tiny_episode
    from farm.core.spec import Episode
    from farm.runtime.local import InProcessRuntime
    from farm.service.host import ControllerService

    settings = Settings(store=str(tmp_path / "store"), metrics_port=0, **{f"backend_{s}": "noop" for s in STAGES})
    service = ControllerService(
        settings.model_dump(mode="json"), runtime=InProcessRuntime(settings.store_spec(), settings.catalog(), cpus=2)
    )
    try:
        payload = synthetic_payload(2, {s: ["noop", "1"] for s in STAGES}, studio="acme", make=tiny_episode)
        payload = {k: v for k, v in payload.items() if k != "backends"}
        outline = {
            "series": "s.yaml",
            "number": 9,
            "title": "Outline",
            "outline": [{"beat": "b", "lines": [{"speaker": "c0", "text": "Hello."}]}],
        }
        payload["episodes"].append(
            payload["episodes"][0] | {"episode": Episode.model_validate(outline).model_dump(mode="json")}
        )
        first = service.submit(payload | {"deadline": time.time() + 3600, "budget": {"gpu_seconds": 100.0}})
        wait_until(lambda: service.status(first)["status"] != "running", what="the first batch to finish")
        second = service.submit(payload)
        wait_until(lambda: service.status(second)["status"] != "running", what="the second batch to finish")
        completed = [e for e in service.events(first) if e["type"] == "action.completed"]
    finally:
        service.stop()
        service.runtime.shutdown()

    data = from_batch(settings, first)
    ran = [b for b in data.bars if b.ok]
    assert len(ran) == len(completed) > 0 and {b.stage for b in ran} == {"image", "video", "dubbing", "assembly"}
    assert all(re.fullmatch(r".+/[\w.-]+ pid \d+", b.lane) for b in ran)
    assert [f.label for f in data.failures] == ["script ep009"] and "noop cannot write" in data.failures[0].reason
    assert data.episode_failures and data.episode_failures[0][0] == "bench/ep009"
    assert dict(data.facts)["episodes"] == "2 delivered, 1 failed of 3" and data.budget == {"gpu_seconds": (0.0, 100.0)}
    assert from_batch(settings, second).saved["assembly"]["actions"] >= 2  # the second batch reused the first's work

    out = write_report(first, settings, tmp_path / "report.html")
    page = out.read_text(encoding="utf-8")
    check_self_contained(page)
    assert page.count("<svg") >= 10 and "noop cannot write" in page and "Budget used" in page
    assert len(re.findall(r'<rect [^>]*height="16" fill="(?:#[0-9a-f]{6}|url\(#hatch\))"', page)) == len(data.bars)


def test_unknown_batch_is_a_clear_error(tmp_path):
    """A batch the journal does not know: `farm report` says so and exits 1."""
    from farm.cli.app import main

    assert main(["report", "acme-20990101-000000-00000000", "--store", str(tmp_path / "store")]) == 1


@pytest.mark.media
@pytest.mark.e2e
def test_episode_report_after_a_render(tmp_path, capsys):
    """`farm report EPISODE.yaml` after two renders: the first's 15 actions, run, from its journal; the
    second's 15 cache hits as savings."""
    from farm.cli.app import main
    from farm.loader import load_episode
    from farm.observe.report import from_episode
    from farm.runtime.local import InProcessRuntime
    from farm.service.local import render_episode

    episode = write_specs(tmp_path / "specs")
    settings = Settings(store=str(tmp_path / "store"), studio="acme")
    assert main(["report", str(episode), "--store", str(tmp_path / "store"), "--studio", "acme"]) == 2  # not rendered
    for _ in range(2):
        runtime = InProcessRuntime(settings.store_spec(), settings.catalog(), cpus=2)
        try:
            render_episode(load_episode(episode), settings, runtime)
        finally:
            runtime.shutdown()
    data = from_episode(settings, episode)
    assert dict(data.facts)["renders"] == "2" and sum(row["actions"] for row in data.saved.values()) == 15
    out = tmp_path / "reports" / "ep001.html"
    assert (
        main(["report", str(episode), "--store", str(tmp_path / "store"), "--studio", "acme", "--out", str(out)]) == 0
    )
    assert capsys.readouterr().out.strip() == str(out)
    page = out.read_text(encoding="utf-8")
    check_self_contained(page)
    assert "Episode test-series/ep001" in page and "15 of 15 planned are done" in page
    assert len(re.findall(r'<rect [^>]*height="16" fill="#[0-9a-f]{6}"', page)) == 15


def test_webhooks_never_delivered_are_among_the_failures():
    """A report whose only failures are webhooks its controller gave up on says so (not "no failures"):
    the event, the episode, the receiver's host, the attempts and the last error, escaped."""
    from farm.observe.report import NotificationFailure

    data = ReportData(
        title="b",
        kind="batch",
        notification_failures=[
            NotificationFailure(100.0, "episode.delivered", "s/ep001", "hooks.example.com:8443", 5, HOSTILE),
            NotificationFailure(101.0, "batch.finished", None, "hooks.example.com:8443", 5, "HTTP 500"),
        ],
    )
    page = render(data)
    check_self_contained(page)
    assert "no failures" not in page and "Webhooks never delivered" in page and "Failed attempts" not in page
    assert "hooks.example.com:8443" in page and "HTTP 500" in page and "s/ep001" in page and HOSTILE not in page
    assert "no failures" in render(ReportData(title="b", kind="batch"))
