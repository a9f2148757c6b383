"""`farm report`: one self-contained HTML file per batch or episode, read from the store alone."""

from __future__ import annotations

import base64
import io
import json
import re
import time
import xml.etree.ElementTree as ET
from html.parser import HTMLParser

import pytest

from farm.core.plan import STAGES
from farm.observe._report_html import render
from farm.observe.report import Bar, Failure, ReportData, from_batch, write_report
from farm.settings import Settings
from tests.conftest import SMALL_SERIES, wait_until, write_specs
from workers.api import Estimate, Resources

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
    assert not any("href" in attrs for _, attrs in parser.tags)
    sources = [attrs["src"] for _, attrs in parser.tags if "src" in attrs]
    assert all(tag == "img" for tag, attrs in parser.tags if "src" in attrs)
    assert all(re.fullmatch(r"data:image/png;base64,[A-Za-z0-9+/]+=*", src) for src in sources)  # embedded
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
    stages = {b.stage for b in ran}
    assert len(ran) == len(completed) > 0 and stages == {"image", "video", "dubbing", "lipsync", "assembly"}
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
    """`farm report EPISODE.yaml` after two renders: the first's actions (15 of media, and the default
    judges' measurements of them), run, from its journal; the second's cache hits as savings; every
    judged take with its real evidence (frame strips, keyframe thumbnails, waveforms) embedded."""
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
    ran = [b for b in data.bars if b.ok]
    judges = {b.label.split()[1] for b in ran if b.stage == "judge"}
    assert sum(b.stage != "judge" for b in ran) >= 15 and judges == {"frames", "audio", "delivery", "sync"}
    assert dict(data.facts)["renders"] == "2" and sum(row["actions"] for row in data.saved.values()) == len(ran)
    takes = [t for s in data.takes.episodes[0].shots for j in s.judged for t in j.takes]
    assert {t.verdict for t in takes} <= {"pass", "fail"}
    assert sum(t.used for t in takes) == 3 + 3 + 3 + 2  # clip, keyframe, line, lip-sync
    assert sorted(data.takes.thumbs) == sorted(t.key for t in takes) and not data.takes.notes  # real evidence
    out = tmp_path / "reports" / "ep001.html"
    assert (
        main(["report", str(episode), "--store", str(tmp_path / "store"), "--studio", "acme", "--out", str(out)]) == 0
    )
    assert capsys.readouterr().out.strip() == str(out)
    page = out.read_text(encoding="utf-8")
    check_self_contained(page)
    assert "Episode test-series/ep001" in page and f"{len(ran)} of {len(ran)} planned are done" in page
    assert len(re.findall(r'<rect [^>]*height="16" fill="#[0-9a-f]{6}"', page)) == len(ran)
    retakes = sum(t.take > 1 for t in takes)
    assert page.count("<img ") == len(takes) and f"{len(takes)} takes made, {retakes} retakes," in page


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


# -- takes and judges ---------------------------------------------------------------------------------
class EvidenceJudge:
    """A studio's own judge (settings' ``backends``): fails clip takes before ``pass_from_take`` and keeps
    a real PNG strip of frames as evidence; its check's detail carries markup."""

    stage, version, ops, judges = "judge", "1", ("judge",), ("clip",)
    thresholds = {"pass_from_take": (1.0, 1.0, 10.0)}
    resources = Resources(num_cpus=0.25)
    tools: tuple[str, ...] = ()

    def __init__(self, name, config):
        self.name = name

    def estimate(self, op, params):
        return Estimate(seconds=0.01)

    def run(self, op, inputs, params, out_dir):
        from PIL import Image, ImageDraw

        from workers.judge.common import Check, thresholds, verdict

        limit = thresholds(self.thresholds, params, self.name)["pass_from_take"]
        take = int(params["target"]["take"])
        strip = Image.new("RGB", (5 * 90, 160), "black")
        draw = ImageDraw.Draw(strip)
        for i in range(5):  # five "frames" side by side, each its own colour
            draw.rectangle((i * 90 + 4, 4, i * 90 + 85, 155), fill=(40 * i, 60 * take, 200 - 30 * i))
        draw.point((0, 0), fill=tuple(time.time_ns().to_bytes(8, "big")[-3:]))  # each take's strip its own blob
        strip.save(out_dir / "strip.png")
        check = Check("take", take, limit, take >= limit, f"take {take} <b>bold</b> & co", take / 10)
        return verdict([check], out_dir, evidence={"evidence": out_dir / "strip.png"})


def _render(path, settings):
    from tests.test_takes import _render as render_in_process

    return render_in_process(path, settings)


def test_the_report_shows_each_shots_takes_with_thumbnails_verdicts_and_reviews(tmp_path, monkeypatch, capsys):
    """Clips judged by a judge with evidence fail take 1 and pass take 2; a person rejects shot s01-02
    (a reason with markup) and the next render makes its take 3. The report lists every take with its
    verdict and score, marks the one used, embeds each clip take's evidence as a small PNG, shows the
    reviewer's reason escaped; an evidence blob gone from the store is said in its cell."""
    from farm.cli import main
    from farm.observe.report import from_episode

    backends = {"myjudge": {"kind": "tests.test_report:EvidenceJudge", "stage": "judge"}}
    noop = {f"backend_{s}": "noop" for s in ("image", "video", "dubbing", "assembly")}
    settings = Settings(store=str(tmp_path / "store"), backends=backends, **noop)
    judges = {"clip": [{"name": "myjudge", "thresholds": {"pass_from_take": 2}}], "line": ["noop"]}
    path = write_specs(tmp_path / "specs", series=dict(SMALL_SERIES, judges=judges))
    _render(path, settings)
    monkeypatch.setenv("FARM_STORE", settings.store)
    monkeypatch.setenv("FARM_BACKENDS", json.dumps(backends))
    for name, value in noop.items():
        monkeypatch.setenv(f"FARM_{name.upper()}", value)
    assert main(["review", "reject", str(path), "s01-02", "--reason", HOSTILE]) == 0
    capsys.readouterr()
    _render(path, settings)

    data = from_episode(settings, path)
    (review,) = data.takes.episodes
    clips = {s.shot: next(j for j in s.judged if j.op == "clip") for s in review.shots}
    assert sorted(clips) == ["s01-01", "s01-02", "s02-01"]
    assert [(t.take, t.verdict, t.used, t.review) for t in clips["s01-02"].takes] == [
        (1, "fail", False, None),
        (2, "pass", False, "reject"),
        (3, "pass", True, None),
    ]
    assert [(t.take, t.verdict, t.used) for t in clips["s01-01"].takes] == [(1, "fail", False), (2, "pass", True)]
    clip_keys = [t.key for j in clips.values() for t in j.takes]
    assert sorted(data.takes.thumbs) == sorted(clip_keys) and not data.takes.notes  # the noop line judge keeps none
    thumb = data.takes.thumbs[clips["s01-02"].takes[2].key]
    raw = base64.b64decode(thumb.removeprefix("data:image/png;base64,"))
    from PIL import Image

    with Image.open(io.BytesIO(raw)) as img:
        assert img.format == "PNG" and img.width <= 240 and img.height <= 80 and img.width >= 2 * img.height
    assert len(raw) <= 20_000

    page = write_report(str(path), settings, tmp_path / "report.html").read_text(encoding="utf-8")
    check_self_contained(page)
    section = page.split("<h2>Takes and judges</h2>", 1)[1].split("<h2>", 1)[0]
    cells = re.findall(
        r'<div class="take( used)?" title="[^"]*">(<img [^>]*>)?.*?<div>take (\d) <span class="(\w+)"', section
    )
    lines = [t for s in review.shots for j in s.judged if j.op == "line" for t in j.takes]
    assert len(cells) == len(clip_keys) + len(lines) == 7 + 3
    assert sum(bool(used) for used, _, _, _ in cells) == 3 + 3  # one used take per clip and per line
    assert sum(bool(img) for _, img, _, _ in cells) == 7 and thumb in section
    assert [(n, v) for _, img, n, v in cells if img] == [("1", "fail"), ("2", "pass")] + [
        ("1", "fail"),
        ("2", "pass"),
        ("3", "pass"),
    ] + [("1", "fail"), ("2", "pass")]
    assert HOSTILE not in page and "rejected by a person: &lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert "<b>bold</b>" not in page and "take 1 &lt;b&gt;bold&lt;/b&gt; &amp; co" in section
    assert "10 takes made, 4 retakes, 0 shots held for review" in section
    assert "yield: noop clip 4 of 7 passed (57%), noop line 3 of 3 passed (100%)" in section  # by the take's maker

    gone = next(b for b in (tmp_path / "store").rglob("*") if b.is_file() and b.read_bytes()[:4] == b"\x89PNG")
    gone.unlink()  # an evidence blob lost from the store: its cell says so, the report is still written
    page = write_report(str(path), settings, tmp_path / "again.html").read_text(encoding="utf-8")
    check_self_contained(page)
    assert page.count("<img ") == 6 and "evidence unreadable:" in page and "is not in" in page


def test_flagged_shots_are_marked_with_why_and_thumbnails_are_bounded(tmp_path, monkeypatch):
    """Every clip take fails (2 of 2): each shot is held for review, marked with the reason; past the
    report's thumbnail limit the page says how many it left out."""
    from farm.observe import report

    backends = {"myjudge": {"kind": "tests.test_report:EvidenceJudge", "stage": "judge"}}
    noop = {f"backend_{s}": "noop" for s in ("image", "video", "dubbing", "assembly")}
    settings = Settings(store=str(tmp_path / "store"), backends=backends, **noop)
    judges = {"clip": [{"name": "myjudge", "thresholds": {"pass_from_take": 5}}]}
    path = write_specs(tmp_path / "specs", series=dict(SMALL_SERIES, judges=judges, takes={"max": 2}))
    _render(path, settings)
    monkeypatch.setattr(report, "MAX_THUMBS", 4)
    page = write_report(str(path), settings, tmp_path / "report.html").read_text(encoding="utf-8")
    check_self_contained(page)
    section = page.split("<h2>Takes and judges</h2>", 1)[1].split("<h2>", 1)[0]
    assert section.count('<div class="shot flagged">') == 3 and section.count("<img ") == 4
    assert "held for review: clip s01-01: every take failed (2 of 2); take 2 is used" in section
    assert "6 takes made, 3 retakes, 3 shots held for review; yield: noop clip 0 of 6 passed (0%)" in section
    assert "; 2 thumbnails left out to keep the page small" in section
    assert section.count("evidence not embedded (a report embeds 4 thumbnails)") == 2


def test_a_batch_report_shows_the_takes_of_every_episode(tmp_path):
    """A batch of two episodes run by the controller: the report shows each episode's shots with their
    clip takes (take 1 failed, take 2 used), each with its evidence embedded, and the judges' spend."""
    from datetime import datetime, timezone

    import yaml

    from farm.loader import load_batch
    from farm.service.host import batch_payload
    from tests.conftest import controller_services, write_episode_variants

    backends = {"myjudge": {"kind": "tests.test_report:EvidenceJudge", "stage": "judge"}}
    noop = {f"backend_{s}": "noop" for s in ("image", "video", "dubbing", "assembly")}
    settings = Settings(store=str(tmp_path / "store"), metrics_port=0, backends=backends, **noop)
    folder = tmp_path / "specs"
    judges = {"clip": [{"name": "myjudge", "thresholds": {"pass_from_take": 2}}]}
    write_specs(folder, series=dict(SMALL_SERIES, judges=judges))
    write_episode_variants(folder, 2)
    (folder / "batch.yaml").write_text(yaml.safe_dump({"studio": "default", "episodes": ["ep001.yaml", "ep002.yaml"]}))
    loaded = load_batch(folder / "batch.yaml", datetime.now(timezone.utc))
    admin = "admin-token-for-the-report-0123456789"
    with controller_services(settings, admin, cpus=2) as start:
        service = start(loop=True)
        batch = service.submit(batch_payload(loaded, settings), token=admin)
        wait_until(lambda: service.status(batch, token=admin)["status"] != "running", timeout=60)
    data = from_batch(settings, batch)
    assert [ep.episode for ep in data.takes.episodes] == ["test-series/ep001", "test-series/ep002"]
    for ep in data.takes.episodes:
        clips = [j for s in ep.shots for j in s.judged if j.op == "clip"]
        assert len(clips) == 3 and all(
            [(t.verdict, t.used) for t in j.takes] == [("fail", False), ("pass", True)] for j in clips
        )
        assert all(t.key in data.takes.thumbs for j in clips for t in j.takes)
    page = write_report(batch, settings, tmp_path / "batch.html").read_text(encoding="utf-8")
    check_self_contained(page)
    assert page.count("<img ") == 12 and "12 takes made, 6 retakes, 0 shots held for review" in page
    assert any(stage == "judge" for _, stage in data.spend) and ">judge<title>judge</title></text>" in page  # charted
