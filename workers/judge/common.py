"""What every judge shares: checks, the verdict they make, thresholds, and probing media files.

A judge measures; ``verdict`` turns its named checks into the result the farm reads::

    checks = [Check("black_frames", 0.0, 0.02, passed=True, detail="0 of 90 frames black")]
    return verdict(checks, out_dir, evidence={"evidence": strip_png})

The verdict is ``pass`` exactly when every check passed. The score is the mean of the checks' own
scores (a passed check 1, a failed one its ``score`` if it says how close it came, else 0): when
every take of a shot fails, the farm uses the one with the best score.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workers.api import StageError, StageResult, Usage, run_tool

# name -> (default, lowest allowed, highest allowed)
Thresholds = Mapping[str, tuple[float, float, float]]


@dataclass(frozen=True)
class Check:
    """One named measurement: its value, the threshold it is held to, whether it passed."""

    name: str
    value: float | None
    threshold: float | None
    passed: bool
    detail: str = ""
    score: float | None = None  # how close a failed check came, in [0, 1] (None: 0 when failed)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "value": _number(self.value),
            "threshold": _number(self.threshold),
            "passed": self.passed,
            "detail": self.detail,
        }


def _number(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return round(float(value), 6)


def verdict(
    checks: Sequence[Check],
    out_dir: Path,
    evidence: Mapping[str, Path] | None = None,
    usage: Usage | None = None,
) -> StageResult:
    """The judge's result: meta ``{verdict, score, checks}``, the same as ``verdict.json``, and the evidence."""
    if not checks:
        raise StageError("judge: no check was measured", retryable=True)
    own = [1.0 if c.passed else min(1.0, max(0.0, c.score or 0.0)) for c in checks]
    meta = {
        "verdict": "pass" if all(c.passed for c in checks) else "fail",
        "score": round(sum(own) / len(own), 6),
        "checks": [c.to_json() for c in checks],
    }
    path = out_dir / "verdict.json"
    path.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    files = {"verdict": path, **dict(evidence or {})}
    return StageResult(files=files, meta=meta, usage=usage or Usage())


def judged_op(judge: Any, op: str, params: Mapping[str, Any]) -> str:
    """The op of the action ``judge`` is asked to judge (``params["target"]["op"]``); StageError (not
    retryable) when ``op`` is not "judge" or the judge does not judge that op."""
    name = f"judge {judge.name}"
    if op != "judge":
        raise StageError(f"{name}: unknown op {op!r}; it does judge")
    judged = str((params.get("target") or {}).get("op"))
    if judged not in judge.judges:
        raise StageError(f"{name}: it judges {' and '.join(judge.judges)}, not {judged!r}")
    return judged


def thresholds(defaults: Thresholds, params: Mapping[str, Any], judge: str) -> dict[str, float]:
    """The judge's thresholds: its defaults, overridden by the spec's ``params["thresholds"]``.
    The loader refuses unknown names and values out of range before anything runs; a worker given
    one anyway (an old journal) refuses it too, as a failure no retry mends."""
    out = {name: float(d) for name, (d, _, _) in defaults.items()}
    for name, value in dict(params.get("thresholds") or {}).items():
        if name not in defaults:
            raise StageError(f"judge {judge}: unknown threshold {name!r} (known: {', '.join(defaults)})")
        _, lo, hi = defaults[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
            raise StageError(f"judge {judge}: threshold {name} must be a number from {lo:g} to {hi:g}, not {value!r}")
        out[name] = float(value)
    return out


def probe(path: Path, what: str) -> dict[str, Any]:
    """ffprobe's JSON of a media file (streams with packet counts, and the format). A file ffprobe
    refuses raises StageError, not retryable (``run_tool``'s): each judge says whether that is a broken
    take (a failed check) or a failure to measure (re-raised retryable)."""
    proc = run_tool(
        ["ffprobe", "-v", "error", "-count_packets", "-show_streams", "-show_format", "-of", "json", str(path)],
        what=what,
        timeout=120,
    )
    try:
        data = json.loads(proc.stdout)
    except ValueError as exc:
        raise StageError(f"{what}: ffprobe's answer is not JSON: {exc}", retryable=True) from exc
    return data if isinstance(data, dict) else {}


def rate(text: str | None) -> float:
    """A frame rate as ffprobe writes it ("30/1", "30000/1001") as a number (0 if unreadable)."""
    num, _, den = str(text or "0").partition("/")
    try:
        return float(num) / float(den or 1)
    except (ValueError, ZeroDivisionError):
        return 0.0
