"""HTML and inline SVG for farm.observe.report: no JavaScript, no fonts or images to fetch, every string escaped.

``render(data)`` returns the whole page; the only images are the takes' thumbnails, embedded as data URIs.
The Gantt chart maps time to x piecewise: long idle gaps
(an episode whose sheets were drawn days before its clips) are cut out and marked, so the work stays
readable.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from datetime import datetime, timezone
from html import escape

from farm.core.plan import JUDGE

STAGE_COLOURS = {
    "script": "#7b61c9",
    "image": "#1f9e89",
    "video": "#2f74c0",
    "dubbing": "#e0a526",
    "lipsync": "#c2185b",
    "assembly": "#d9653b",
    JUDGE: "#8c8c2e",  # the judges' measurements of takes
}  # every stage, in order: the charts by stage read this
FAILED = "#c62828"
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
LANE_H, LANE_GAP, LABEL_W, CHART_W, AXIS_H, BREAK_W = 16, 4, 240, 860, 28, 26

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Noto Sans",sans-serif;margin:24px auto;
max-width:1160px;color:#1d2330;background:#fff;padding:0 16px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #dde1e8;padding-bottom:4px}
table{border-collapse:collapse;margin:6px 0 10px}td,th{padding:3px 10px 3px 0;text-align:left;vertical-align:top}
th{color:#5b6475;font-weight:600}table.grid td,table.grid th{border-bottom:1px solid #eef0f4;padding:4px 10px 4px 0}
.num{text-align:right;font-variant-numeric:tabular-nums}.muted{color:#6b7385}
.reason{font-family:ui-monospace,monospace;font-size:12px;white-space:pre-wrap;word-break:break-word;max-width:520px}
.charts{display:flex;flex-wrap:wrap;gap:8px 28px}.chart h3{font-size:13px;margin:8px 0 2px;color:#3b4356}
summary{cursor:pointer;color:#6b7385;font-family:system-ui,sans-serif}svg text{font-family:inherit}
.legend span{display:inline-block;margin-right:14px}
.swatch{display:inline-block;width:11px;height:11px;border-radius:2px;margin-right:4px;vertical-align:-1px}
.shot{margin:6px 0 10px;padding:4px 8px;border-left:3px solid #dde1e8}.shot.flagged{border-color:#c62828;background:#fdf3f3}
.flag{color:#c62828}.takes{display:flex;flex-wrap:wrap;gap:8px}.take img{display:block;max-width:240px;max-height:90px}
.take{border:1px solid #dde1e8;border-radius:4px;padding:4px 6px;font-size:12px;max-width:250px;background:#fff}
.take.used{border:2px solid #2e8b57}.pass{color:#2e8b57;font-weight:600}.fail{color:#c62828;font-weight:600}
.small{color:#6b7385}.said{font-style:italic}.take div{word-break:break-word}
"""


def e(value) -> str:
    """``value`` as HTML text: escaped, without terminal colour codes or other control characters."""
    return escape(_CONTROL.sub("", _ANSI.sub("", str(value))), quote=True)


def fmt_seconds(s: float) -> str:
    s = max(0.0, float(s))
    if s < 10:
        return f"{s:.2f} s"
    if s < 120:
        return f"{s:.1f} s"
    m, sec = divmod(int(round(s)), 60)
    h, m = divmod(m, 60)
    if h >= 24:
        return f"{h // 24} d {h % 24} h"
    return f"{h} h {m:02d} min" if h else f"{m} min {sec:02d} s"


def fmt_amount(kind: str, v: float) -> str:
    if kind in ("cpu_seconds", "gpu_seconds"):
        return fmt_seconds(v)
    if kind == "tokens" or kind == "actions":
        return f"{int(round(v)):,}"
    return f"{v:,.2f}"


_EXC_PREFIX = re.compile(r"^(?:[A-Za-z_][\w.]*\.)?[A-Z]\w*(?:Error|Failed|Exception): ")


def reason_html(reason: str) -> str:
    """A failure reason: its last line (the error itself) in view, the whole text (a traceback from
    a worker, say) folded under it."""
    text = _ANSI.sub("", reason).strip()
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) <= 1:
        return f'<div class="reason">{e(text)}</div>'
    head = lines[0].split(": ")[0] if ": " in lines[0] else ""
    short = _EXC_PREFIX.sub("", lines[-1].strip())
    short = short if not head or short.startswith(head) else f"{head}: {short}"
    return f'<div class="reason">{e(short)}<details><summary>details</summary>{e(text)}</details></div>'


def when(ts: float | None) -> str:
    return "—" if ts is None else datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


# -- charts ---------------------------------------------------------------------------------------------
def hbars(rows: list[tuple[str, float, str, str]], width: int = 520, label_w: int = 170) -> str:
    """A horizontal bar chart: rows of (label, value, value text, colour)."""
    if not rows:
        return '<p class="muted">nothing to show</p>'
    top = max((r[1] for r in rows), default=0.0) or 1.0
    span = width - label_w - 100
    out = [f'<svg width="{width}" height="{22 * len(rows) + 6}" role="img">']
    for i, (label, value, text, colour) in enumerate(rows):
        y = 4 + 22 * i
        w = max(1.0 if value > 0 else 0.0, span * value / top)
        short = label if len(label) <= label_w // 7 else label[: label_w // 7 - 1] + "…"
        out.append(
            f'<text x="{label_w - 6}" y="{y + 13}" text-anchor="end" font-size="12">{e(short)}'
            f"<title>{e(label)}</title></text>"
            f'<rect x="{label_w}" y="{y}" width="{w:.1f}" height="16" rx="2" fill="{e(colour)}"/>'
            f'<text x="{label_w + w + 5:.1f}" y="{y + 13}" font-size="12">{e(text)}</text>'
        )
    out.append("</svg>")
    return "".join(out)


class _Axis:
    """Time -> x, with idle gaps longer than ``cut`` seconds cut out of the picture."""

    def __init__(self, bars, start: float | None):
        spans = sorted((b.start, max(b.end, b.start)) for b in bars)
        busy = sum(b - a for a, b in spans) or 1.0
        cut = max(60.0, 0.1 * (spans[-1][1] - spans[0][0]), 0.05 * busy)
        segments: list[list[float]] = []
        first = spans[0][0] if start is None else min(start, spans[0][0])
        for a, b in [(first, first)] + spans:
            if segments and a - segments[-1][1] <= cut:
                segments[-1][1] = max(segments[-1][1], b)
            else:
                segments.append([a, b])
        self.segments = [(a, max(b, a + 1e-3)) for a, b in segments]
        self.t0 = self.segments[0][0]
        total = sum(b - a for a, b in self.segments)
        self.scale = (CHART_W - BREAK_W * (len(self.segments) - 1)) / total
        self.offsets: list[float] = []
        x = float(LABEL_W)
        for a, b in self.segments:
            self.offsets.append(x)
            x += (b - a) * self.scale + BREAK_W

    def x(self, t: float) -> float:
        for (a, b), off in zip(self.segments, self.offsets):
            if t <= b:
                return off + max(0.0, t - a) * self.scale
        a, b = self.segments[-1]
        return self.offsets[-1] + (b - a) * self.scale

    def ticks(self) -> list[tuple[float, str]]:
        step = next(
            (
                s
                for s in (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 43200, 86400)
                if s * self.scale >= 70
            ),
            172800,
        )
        out = []
        for (a, b), off in zip(self.segments, self.offsets):
            t = a - ((a - self.t0) % step) + (step if (a - self.t0) % step else 0)
            while t <= b:
                out.append((off + (t - a) * self.scale, _tick(t - self.t0)))
                t += step
        return out


def _tick(s: float) -> str:
    s = int(round(s))
    if s < 60:
        return f"+{s} s"
    if s < 3600:
        return f"+{s // 60} min" + (f" {s % 60} s" if s % 60 else "")
    if s < 86400:
        return f"+{s // 3600} h" + (f" {s % 3600 // 60:02d}" if s % 3600 else "")
    return f"+{s // 86400} d" + (f" {s % 86400 // 3600} h" if s % 86400 else "")


def gantt(bars, start: float | None = None, deadline: float | None = None) -> str:
    """Every attempt on its worker lane over time, coloured by stage; failed attempts hatched red."""
    if not bars:
        return '<p class="muted">no action ran</p>'
    axis = _Axis(bars, start)
    first_start: dict[str, float] = {}
    for b in bars:
        first_start[b.lane] = min(first_start.get(b.lane, b.start), b.start)
    gpu_lanes = {b.lane for b in bars if b.gpu}
    # GPU lanes first, failed attempts last, the rest in the order they started work
    lanes = sorted(first_start, key=lambda lane: ("failed attempts" in lane, lane not in gpu_lanes, first_start[lane]))
    row = {lane: i for i, lane in enumerate(lanes)}
    height = AXIS_H + len(lanes) * (LANE_H + LANE_GAP) + 8
    width = LABEL_W + CHART_W + 20
    out = [
        f'<svg width="{width}" height="{height}" role="img" aria-label="Gantt chart of actions on worker lanes">',
        '<defs><pattern id="hatch" width="6" height="6" patternUnits="userSpaceOnUse" patternTransform="rotate(45)">'
        f'<rect width="6" height="6" fill="#f6d5d5"/><line x1="0" y1="0" x2="0" y2="6" stroke="{FAILED}" '
        'stroke-width="3"/></pattern></defs>',
    ]
    for i, lane in enumerate(lanes):
        y = AXIS_H + i * (LANE_H + LANE_GAP)
        if i % 2 == 0:
            out.append(f'<rect x="{LABEL_W}" y="{y - 2}" width="{CHART_W}" height="{LANE_H + 4}" fill="#f5f6f9"/>')
        weight = ' font-weight="600"' if lane in gpu_lanes else ""
        out.append(
            f'<text x="{LABEL_W - 8}" y="{y + 12}" text-anchor="end" font-size="11"{weight}>{e(lane[:34])}'
            f"<title>{e(lane)}</title></text>"
        )
    for x, label in axis.ticks():
        out.append(
            f'<line x1="{x:.1f}" y1="{AXIS_H - 6}" x2="{x:.1f}" y2="{height - 6}" stroke="#dfe3ea"/>'
            f'<text x="{x:.1f}" y="{AXIS_H - 10}" text-anchor="middle" font-size="10" fill="#5b6475">{e(label)}</text>'
        )
    for i in range(1, len(axis.segments)):
        idle = axis.segments[i][0] - axis.segments[i - 1][1]
        x = axis.offsets[i] - BREAK_W / 2
        out.append(
            f'<line x1="{x:.1f}" y1="{AXIS_H - 4}" x2="{x:.1f}" y2="{height - 6}" stroke="#9aa3b5" '
            f'stroke-dasharray="3 3"/><text x="{x:.1f}" y="{height - 1}" text-anchor="middle" font-size="9" '
            f'fill="#6b7385">idle {e(fmt_seconds(idle))}</text>'
        )
    for b in sorted(bars, key=lambda b: b.start):
        x0, x1 = axis.x(b.start), axis.x(max(b.end, b.start))
        y = AXIS_H + row[b.lane] * (LANE_H + LANE_GAP)
        fill = STAGE_COLOURS.get(b.stage, "#888") if b.ok else "url(#hatch)"
        stroke = f' stroke="{FAILED}"' if not b.ok else ' stroke="#ffffff" stroke-width="0.6"'  # neighbours apart
        tip = f"{b.label} ({b.episode}) · {b.stage} · {fmt_seconds(b.end - b.start)} · {b.key[:12]}"
        if b.error:
            tip += f"\nfailed: {b.error}"
        out.append(
            f'<rect x="{x0:.1f}" y="{y}" width="{max(1.0, x1 - x0):.1f}" height="{LANE_H}" fill="{fill}"'
            f"{stroke}><title>{e(tip)}</title></rect>"
        )
    if deadline is not None and axis.segments[0][0] <= deadline <= axis.segments[-1][1]:
        x = axis.x(deadline)
        out.append(
            f'<line x1="{x:.1f}" y1="{AXIS_H - 6}" x2="{x:.1f}" y2="{height - 6}" stroke="{FAILED}" '
            f'stroke-width="2"/><text x="{x + 3:.1f}" y="{AXIS_H - 16}" font-size="10" fill="{FAILED}">deadline</text>'
        )
    out.append("</svg>")
    legend = "".join(
        f'<span><i class="swatch" style="background:{c}"></i>{e(s)}</span>' for s, c in STAGE_COLOURS.items()
    )
    legend += f'<span><i class="swatch" style="background:#f6d5d5;outline:2px solid {FAILED}"></i>failed attempt</span>'
    return (
        "".join(out) + f'<p class="legend muted">{legend} · lanes: a GPU (bold) or a worker process, '
        "per host/node; hover a bar for the action</p>"
    )


# -- sections ---------------------------------------------------------------------------------------------
def _table(head: list[str], rows: Sequence[Sequence[str]], numeric: AbstractSet[int] = frozenset()) -> str:
    th = "".join(f'<th class="{"num" if i in numeric else ""}">{e(h)}</th>' for i, h in enumerate(head))
    body = "".join(
        "<tr>" + "".join(f'<td class="{"num" if i in numeric else ""}">{c}</td>' for i, c in enumerate(r)) + "</tr>"
        for r in rows
    )
    return f'<table class="grid"><tr>{th}</tr>{body}</table>'


def _spend(data) -> str:
    charts = []
    titles = {"cpu_seconds": "CPU time", "gpu_seconds": "GPU time", "tokens": "Tokens", "money": "Money"}
    for kind, title in titles.items():
        by_stage = {s: sum(v[kind] for (_, st), v in data.spend.items() if st == s) for s in STAGE_COLOURS}
        rows = [(s, by_stage[s], fmt_amount(kind, by_stage[s]), STAGE_COLOURS[s]) for s in STAGE_COLOURS]
        charts.append(f'<div class="chart"><h3>{e(title)} by stage</h3>{hbars(rows, 460, 90)}</div>')
    studios = sorted({studio for studio, _ in data.spend})
    for kind in ("money", "gpu_seconds"):
        rows = [
            (st, v, fmt_amount(kind, v), "#4a5a7a")
            for st in studios
            for v in [sum(x[kind] for (s, _), x in data.spend.items() if s == st)]
        ]
        charts.append(f'<div class="chart"><h3>{e(titles[kind])} by studio</h3>{hbars(rows, 460, 90)}</div>')
    table = [
        [e(studio), e(stage)] + [e(fmt_amount(k, v[k])) for k in titles]
        for (studio, stage), v in sorted(data.spend.items())
    ]
    return f'<div class="charts">{"".join(charts)}</div>' + _table(
        ["studio", "stage", *titles.values()], table, {2, 3, 4, 5}
    )


def _slowest(data) -> str:
    ran = sorted((b for b in data.bars if b.ok), key=lambda b: b.end - b.start, reverse=True)[:10]
    rows = [
        (f"{b.label} · {b.episode}", b.end - b.start, fmt_seconds(b.end - b.start), STAGE_COLOURS.get(b.stage, "#888"))
        for b in ran
    ]
    table = _table(
        ["action", "episode", "stage", "seconds", "worker lane", "key"],
        [[e(b.label), e(b.episode), e(b.stage), e(f"{b.end - b.start:.2f}"), e(b.lane), e(b.key[:12])] for b in ran],
        {3},
    )
    return hbars(rows, 860, 330) + table


def _failures(data) -> str:
    notes = getattr(data, "notification_failures", [])
    if not data.failures and not data.episode_failures and not notes:
        return '<p class="muted">no failures</p>'
    counts = {s: sum(f.stage == s for f in data.failures) for s in STAGE_COLOURS}
    chart = hbars([(s, n, str(n), FAILED) for s, n in counts.items() if n], 460, 90)
    t0 = min((b.start for b in data.bars), default=0.0)
    rows = [
        [
            e("+" + fmt_seconds(f.at - t0)),
            e(f.episode),
            e(f.label),
            e(f.stage),
            e(f.worker[:12]),
            e(f.attempt),
            reason_html(f.reason),
        ]
        for f in sorted(data.failures, key=lambda f: f.at)
    ]
    eps = [[e(ep), reason_html(reason)] for ep, reason in data.episode_failures]
    hooks = [
        [
            e(when(n.at)),
            e(n.kind),
            e(n.episode or "—"),
            e(n.host or "—"),
            e(n.attempts or "—"),
            reason_html(n.error),
        ]
        for n in sorted(notes, key=lambda n: n.at)
    ]
    return (
        (
            f"<h3>Failed attempts by stage</h3>{chart}"
            + _table(["when", "episode", "action", "stage", "worker", "attempt", "reason"], rows, {5})
            if data.failures
            else ""
        )
        + ("<h3>Failed episodes</h3>" + _table(["episode", "reason"], eps) if eps else "")
        + (
            "<h3>Webhooks never delivered</h3>"
            + _table(["when", "event", "episode", "receiver", "attempts", "last error"], hooks, {4})
            if hooks
            else ""
        )
    )


def _cache(data) -> str:
    if not data.saved:
        return '<p class="muted">no action was served from the cache</p>'
    total = {
        k: sum(v[k] for v in data.saved.values()) for k in ("actions", "cpu_seconds", "gpu_seconds", "tokens", "money")
    }
    line = (
        f"{int(total['actions']):,} actions served from the store instead of running: saved "
        f"{fmt_seconds(total['cpu_seconds'])} CPU, {fmt_seconds(total['gpu_seconds'])} GPU, "
        f"{int(total['tokens']):,} tokens, {total['money']:,.2f} money"
    )
    charts = []
    for kind, title in (
        ("actions", "Cached actions"),
        ("cpu_seconds", "CPU time saved"),
        ("gpu_seconds", "GPU time saved"),
    ):
        rows = [
            (
                s,
                data.saved.get(s, {}).get(kind, 0.0),
                fmt_amount(kind, data.saved.get(s, {}).get(kind, 0.0)),
                STAGE_COLOURS[s],
            )
            for s in STAGE_COLOURS
        ]
        charts.append(f'<div class="chart"><h3>{e(title)} by stage</h3>{hbars(rows, 460, 90)}</div>')
    return f'<p>{e(line)}</p><div class="charts">{"".join(charts)}</div>'


VERDICTS = {"pass": '<span class="pass">pass</span>', "fail": '<span class="fail">FAIL</span>'}
REVIEWED = {"approve": "approved", "reject": "rejected"}


def _failing(checks) -> list[str]:
    return [
        f"{c.get('judge')}: {c.get('name')}: {c.get('detail') or c.get('value')}" for c in checks if not c["passed"]
    ]


def _take(row, takes) -> str:
    """One take's cell: its evidence's thumbnail (or why there is none), verdict, score, whether it is
    used, its failing checks (in full in the tooltip) and what a person said of it."""
    failing = _failing(row.checks)
    verdict = VERDICTS.get(row.verdict or "", '<span class="muted">not judged</span>')
    score = "" if row.score is None else f" {row.score:.2f}"
    pic = f'<div class="small">{e(takes.notes[row.key])}</div>' if row.key in takes.notes else ""
    if row.key in takes.thumbs:
        pic = f'<img src="{e(takes.thumbs[row.key])}" alt="evidence of take {row.take}">'
    short = "; ".join(failing)
    checks = f'<div class="small">{e(short if len(short) <= 240 else short[:239] + "…")}</div>' if failing else ""
    said = f"{REVIEWED.get(row.review, row.review)} by a person" + (f": {row.reason}" if row.reason else "")
    said = f'<div class="said">{e(said)}</div>' if row.review else ""
    tip, used = "\n".join(failing) or f"take {row.take}: {row.verdict or 'not judged'}", " used" if row.used else ""
    return (
        f'<div class="take{used}" title="{e(tip)}">{pic}<div>take {row.take} {verdict}{e(score)}'
        f"{' · <b>used</b>' if used else ''}</div>{checks}{said}</div>"
    )


def _takes(data) -> str:
    """Per shot, each judged action's takes side by side; flagged shots marked with why; a summary."""
    takes = data.takes
    eps = [ep for ep in takes.episodes if ep.shots]
    if not eps:
        return '<p class="muted">nothing was judged</p>'
    rows = [(j.op, r) for ep in eps for s in ep.shots for j in s.judged for r in j.takes]
    made = [r for _, r in rows if r.status == "done"]
    yields: dict[str, list[int]] = {}
    for op, r in rows:
        if r.verdict is not None:
            counts = yields.setdefault(f"{takes.made_by.get(r.key, '?')} {op}", [0, 0])
            counts[0], counts[1] = counts[0] + (r.verdict == "pass"), counts[1] + 1
    held = sum(s.flagged for ep in eps for s in ep.shots)
    rates = ", ".join(f"{b} {p} of {n} passed ({p / n:.0%})" for b, (p, n) in sorted(yields.items())) or "—"
    line = f"{len(made)} takes made, {sum(r.take > 1 for r in made)} retakes, {held} shots held for review"
    line += f"; yield: {rates}"
    if takes.left_out:
        line += f"; {takes.left_out} thumbnails left out to keep the page small"
    out = [f"<p>{e(line)}</p>"]
    for ep in eps:
        failed = _failing(ep.delivery)
        checks = (
            f" · delivery checks: {len(ep.delivery) - len(failed)} of {len(ep.delivery)} passed" if ep.delivery else ""
        )
        out.append(
            f'<h3>{e(ep.episode)} <span class="muted">{e(ep.status)} · from {e(ep.source)}{e(checks)}</span></h3>'
        )
        out += [f'<div class="flag">delivery check failed: {e(f)}</div>' for f in failed]
        for shot in ep.shots:
            flags = "".join(
                f'<div class="flag">held for review: {e(j.flagged)}</div>' for j in shot.judged if j.flagged
            )
            judged = "".join(
                f'<tr><th>{e(j.label)}</th><td><div class="takes">{"".join(_take(r, takes) for r in j.takes)}</div></td></tr>'
                for j in shot.judged
            )
            out.append(
                f'<div class="shot{" flagged" if flags else ""}"><b>shot {e(shot.shot)}</b>{flags}<table>{judged}</table></div>'
            )
    return "".join(out)


def _summary(data) -> str:
    facts = list(data.facts)
    if data.submitted is not None:
        facts.append(("submitted", when(data.submitted)))
    ran = [b for b in data.bars if b.ok]
    if ran:
        facts.append(
            ("ran", f"{len(ran)} actions, {when(min(b.start for b in ran))} → {when(max(b.end for b in ran))}")
        )
    if data.deadline is not None:
        end = max((b.end for b in ran), default=None)
        verdict = (
            ""
            if end is None
            else (
                f" (last action finished {fmt_seconds(data.deadline - end)} before it)"
                if end <= data.deadline
                else f" (missed by {fmt_seconds(end - data.deadline)})"
            )
        )
        facts.append(("deadline", when(data.deadline) + verdict))
    html = "<table>" + "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in facts) + "</table>"
    if data.budget:
        rows = [
            (
                cap,
                min(spent / limit, 1.5) if limit else (1.0 if spent else 0.0),
                f"{fmt_amount(cap, spent)} of {fmt_amount(cap, limit)}",
                FAILED if limit and spent >= 0.9 * limit else "#2e8b57",
            )
            for cap, (spent, limit) in data.budget.items()
        ]
        html += f'<div class="chart"><h3>Budget used</h3>{hbars(rows, 560, 110)}</div>'
    return html


def render(data) -> str:
    """The report page for a farm.observe.report.ReportData."""
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{e(data.title)} · farm report</title>'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head><body>'
        f'<h1>{e(data.title)}</h1><p class="muted">farm report, generated {e(when(_now()))}</p>'
        f"{_summary(data)}<h2>Timeline: actions on worker lanes</h2>{gantt(data.bars, data.submitted, data.deadline)}"
        f"<h2>Spend</h2>{_spend(data)}<h2>Slowest actions</h2>{_slowest(data)}"
        f"<h2>Failures</h2>{_failures(data)}<h2>Takes and judges</h2>{_takes(data)}<h2>Cache savings</h2>{_cache(data)}</body></html>\n"
    )


def _now() -> float:
    return datetime.now(timezone.utc).timestamp()
