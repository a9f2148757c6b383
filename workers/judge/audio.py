"""The embedded line judge ``audio``: is a dubbed line's WAV plausible speech of its text?

Checks, in this order::

    format     mono 16-bit PCM at ``expect.sample_rate`` (what every dubbing backend writes)
    present    the line is not empty and not silent: its RMS level reaches min_rms_dbfs
    clipped    the share of samples at full scale stays under max_clipped_share (peak in the detail)
    duration   the speech's length (leading and trailing silence trimmed) over the length the text
               should take: inside [min_length_ratio, max_length_ratio]
    silence    the longest silence inside the speech stays under max_silence_s

Silence is measured in 10 ms frames: a frame is silent when its RMS is under silence_floor_dbfs.
The speech runs from the first loud frame to the last.

The expected length: the text's units (words; for a CJK language, CJK characters plus any Latin
words) at ``expect.units_per_second``, scaled by the voice's rate (``expect.rate``, words per
minute; the unit rate describes 175, espeak-ng's default), plus PAUSE_SECONDS (also scaled) for each
break inside the line (a comma, full stop or ellipsis followed by more words). espeak-ng speaks
Mandarin far slower than natural speech (about 2.5 characters a second at rate 175, where the
language's rate is 4.5): its pace is ENGINE_PACE of the unit rate, keyed by the judged backend.

Measured on espeak-ng (every line of the shipped examples, midnight-tea ep001+ep002 in en-us+f3,
en-us+m3, en-gb+f4 and west-lake ep001 in cmn+f3, cmn+m3, each line in every voice of its language):

- at the examples' own rates (140-165): length ratio 0.53-0.98 (en 0.53-0.98, zh 0.85-0.98); the
  lowest is "You brought it?" (three short words). At rates 80, 120, 175, 250, 350 and 450:
  0.47-1.04 (zh 0.83-1.00). So the band [0.35, 1.75]: a line cut to 30 % has a ratio of at most
  0.31, one padded to 4x with its own speech at least 1.88, and a natural-pace engine (ratio about
  1) sits well inside.
- longest silence inside a line: 0.48 s at rates 140-165 (a full stop at rate 140); 0.97 s at
  rate 80. max_silence_s 1.2 s passes every rate and fails a 2 s dropout.
- RMS -23.9 to -17.6 dBFS (min_rms_dbfs -40), peak -5.8 to -0.7 dBFS, no sample at full scale.

Cost: numpy over the samples and one small PNG: about 16 ms (median; 40 ms worst of 20) for a 3.2 s line.
"""

from __future__ import annotations

import re
import wave
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from workers.api import Estimate, Resources, StageError, StageResult
from workers.judge.common import Check, judged_op, thresholds, verdict

THRESHOLDS = {
    "min_rms_dbfs": (-40.0, -90.0, 0.0),
    "max_clipped_share": (0.001, 0.0, 1.0),
    "min_length_ratio": (0.35, 0.0, 1.0),
    "max_length_ratio": (1.75, 1.0, 20.0),
    "max_silence_s": (1.2, 0.05, 30.0),
    "silence_floor_dbfs": (-45.0, -90.0, -10.0),
}

FRAME_SECONDS = 0.01
DEFAULT_RATE = 175  # espeak-ng's words per minute, the pace units_per_second describes
PAUSE_SECONDS = 0.25  # a break inside the line, at DEFAULT_RATE
# A speech engine's pace against the language's unit rate, where measured far from 1:
# (backend, cjk) -> factor. espeak-ng's Mandarin: 0.55 (see the module's docstring).
ENGINE_PACE = {("espeak-ng", True): 0.55}
EVIDENCE_SIZE = (600, 120)

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
_CJK_CHAR = re.compile(f"[{_CJK}]")
_LATIN_WORD = re.compile(f"[^\\W{_CJK}]+")
# A break: CJK punctuation (or an ellipsis) before more words, or Latin punctuation then a space.
_BREAK = re.compile(r"[，。；：！？、…]+(?=\s*\w)|[.,;:!?]+(?=\s+\w)")


@dataclass(frozen=True)
class Audio:
    """A WAV's samples as mono floats in [-1, 1], with what its header said."""

    samples: np.ndarray
    sample_rate: int
    channels: int
    width: int
    full_scale: int  # how many samples sat at the format's full scale (either sign)


def read_wav(path: Path) -> Audio:
    """Read a PCM WAV (8, 16, 24 or 32-bit, any channels; mixed down to mono). A file that is not a
    readable PCM WAV raises StageError (retryable: the judge could not measure it)."""
    try:
        with wave.open(str(path), "rb") as w:
            channels, width, sample_rate = w.getnchannels(), w.getsampwidth(), w.getframerate()
            raw = w.readframes(w.getnframes())
    except (wave.Error, EOFError, OSError) as exc:
        raise StageError(f"judge audio: {path.name} is not a readable PCM WAV: {exc}", retryable=True) from exc
    if width not in (1, 2, 3, 4) or channels < 1:
        raise StageError(
            f"judge audio: {path.name} has {width}-byte samples; PCM of 1 to 4 bytes expected", retryable=True
        )
    raw = raw[: len(raw) - len(raw) % (width * channels)]
    if width == 1:
        ints = np.frombuffer(raw, np.uint8).astype(np.int64) - 128
    elif width == 3:
        b = np.frombuffer(raw, np.uint8).reshape(-1, 3).astype(np.int64)
        ints = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        ints = np.where(ints >= 1 << 23, ints - (1 << 24), ints)
    else:
        ints = np.frombuffer(raw, f"<i{width}").astype(np.int64)
    top = 1 << (8 * width - 1)
    full = int(np.count_nonzero((ints >= top - 1) | (ints <= -top)))
    frames = ints.reshape(-1, channels).astype(np.float64) / top
    return Audio(frames.mean(axis=1), sample_rate, channels, width, full)


def frame_levels(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    """Each FRAME_SECONDS frame's RMS level in dBFS (a partial last frame counts)."""
    n = max(1, round(FRAME_SECONDS * sample_rate))
    padded = np.zeros(-(-len(samples) // n) * n)
    padded[: len(samples)] = samples
    rms = np.sqrt((padded.reshape(-1, n) ** 2).mean(axis=1))
    return 20 * np.log10(np.maximum(rms, 1e-10))


def longest_run(flags: np.ndarray) -> tuple[int, int]:
    """The longest run of True in ``flags``: (start index, length); (0, 0) when there is none."""
    if not flags.any():
        return 0, 0
    edges = np.diff(np.concatenate(([0], flags.astype(np.int8), [0])))
    starts, ends = np.nonzero(edges == 1)[0], np.nonzero(edges == -1)[0]
    i = int(np.argmax(ends - starts))
    return int(starts[i]), int(ends[i] - starts[i])


def text_units(text: str, cjk: bool) -> int:
    """The units a speaking rate counts: words, or for a CJK language its CJK characters plus any
    Latin words in it. Punctuation alone is no unit."""
    if cjk:
        return len(_CJK_CHAR.findall(text)) + len(_LATIN_WORD.findall(text))
    return sum(1 for word in text.split() if re.search(r"\w", word))


def expected_seconds(text: str, cjk: bool, units_per_second: float, rate: float, backend: str = "") -> float:
    """How long the text's speech should last at the voice's rate (words per minute), pauses at
    breaks inside the line included."""
    scale = rate / DEFAULT_RATE
    pace = units_per_second * scale * ENGINE_PACE.get((backend, cjk), 1.0)
    return text_units(text, cjk) / pace + len(_BREAK.findall(text)) * PAUSE_SECONDS / scale


def _dbfs(value: float) -> float:
    return 20 * float(np.log10(value)) if value > 0 else float("-inf")


def _expect(params: Mapping[str, Any]) -> tuple[str, bool, float, float, int]:
    expect = params.get("expect")
    if not isinstance(expect, Mapping):
        raise StageError("judge audio: params.expect must be an object with text, units_per_second, rate")
    text = expect.get("text")
    if not isinstance(text, str):
        raise StageError("judge audio: expect.text must be the line's text")
    numbers: list[float] = []
    for name, value in (
        ("units_per_second", expect.get("units_per_second")),
        ("rate", expect.get("rate") or DEFAULT_RATE),
        ("sample_rate", expect.get("sample_rate", 48000)),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise StageError(f"judge audio: expect.{name} must be a positive number, not {value!r}")
        numbers.append(float(value))
    ups, rate, sample_rate = numbers
    return text, bool(expect.get("cjk")), ups, rate, int(sample_rate)


def _ratio_score(ratio: float, lo: float, hi: float) -> float:
    if ratio < lo:
        return ratio / lo if lo > 0 else 0.0
    return hi / ratio if ratio > hi else 1.0


def waveform_png(audio: Audio, quiet: np.ndarray, gap: tuple[int, int], path: Path) -> Path:
    """A EVIDENCE_SIZE waveform: silent frames shaded grey, the longest inner silence red when too long
    (``gap`` in frames; length 0 for none), the samples' min/max per column in blue."""
    width, height = EVIDENCE_SIZE
    image = Image.new("RGB", EVIDENCE_SIZE, (255, 255, 255))
    draw = ImageDraw.Draw(image)
    frames = max(1, len(quiet))
    if len(quiet):
        for col in np.nonzero(quiet[(np.arange(width) * len(quiet)) // width])[0].tolist():
            draw.line([col, 0, col, height], fill=(225, 225, 225))
    if gap[1]:
        x0, x1 = int(gap[0] * width / frames), int((gap[0] + gap[1]) * width / frames)
        draw.rectangle([x0, 0, x1, height], fill=(250, 190, 190))
    mid = height // 2
    draw.line([0, mid, width, mid], fill=(170, 170, 170))
    s = audio.samples
    if len(s):
        cols = min(width, len(s))
        starts = (np.arange(cols) * len(s)) // cols
        tops, bottoms = np.maximum.reduceat(s, starts), np.minimum.reduceat(s, starts)
        for x in range(cols):
            y0, y1 = round(mid - float(tops[x]) * (mid - 2)), round(mid - float(bottoms[x]) * (mid - 2))
            draw.line([x, y0, x, y1], fill=(30, 60, 160))
    image.save(path, optimize=False)
    return path


class AudioJudge:
    """Judges a dubbed line (op "line"): its WAV against the text it should say.

    params: ``{"target": {...}, "thresholds": {overrides}, "expect": {"text", "cjk",
    "units_per_second", "rate", "sample_rate"}}``; inputs ``{"subject": line.wav}``. Returns the
    verdict (meta and ``verdict.json``) and ``evidence``, a waveform PNG.

    Raises StageError (retryable) when the subject is not a readable PCM WAV; StageError (not
    retryable) for an unknown or out-of-range threshold or a malformed expect.

    Example::

        BACKEND.run("judge", {"subject": wav}, {"target": {"op": "line", "backend": "espeak-ng"},
                    "thresholds": {}, "expect": {"text": "Hello.", "cjk": False,
                    "units_per_second": 2.6, "rate": 175, "sample_rate": 48000}}, out_dir).meta["verdict"]
    """

    stage, name, version = "judge", "audio", "1"
    ops = ("judge",)
    judges = ("line",)
    thresholds = THRESHOLDS
    resources = Resources(num_cpus=1)
    tools: tuple[str, ...] = ()

    def estimate(self, op: str, params: Mapping[str, Any]) -> Estimate:
        return Estimate(seconds=0.05)

    def run(self, op: str, inputs: Mapping[str, Path], params: Mapping[str, Any], out_dir: Path) -> StageResult:
        judged_op(self, op, params)
        limits = thresholds(THRESHOLDS, params, self.name)
        text, cjk, ups, rate, want_rate = _expect(params)
        if "subject" not in inputs:
            raise StageError("judge audio: the input 'subject' (the line's WAV) is missing")
        target = params.get("target")
        backend = str(target.get("backend", "")) if isinstance(target, Mapping) else ""
        audio = read_wav(Path(inputs["subject"]))
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)

        s, sr = audio.samples, audio.sample_rate
        seconds = len(s) / sr if sr else 0.0
        levels = frame_levels(s, sr) if len(s) and sr else np.zeros(0)
        quiet = levels <= limits["silence_floor_dbfs"]
        loud = np.nonzero(~quiet)[0]
        checks = [
            Check(
                "format",
                float(sr),
                float(want_rate),
                sr == want_rate and audio.channels == 1 and audio.width == 2,
                f"{sr} Hz, {audio.channels} channel(s), {8 * audio.width}-bit PCM; want {want_rate} Hz mono 16-bit",
            )
        ]
        rms = _dbfs(float(np.sqrt((s**2).mean()))) if len(s) else float("-inf")
        peak = _dbfs(float(np.abs(s).max())) if len(s) else float("-inf")
        checks.append(
            Check(
                "present",
                rms,
                limits["min_rms_dbfs"],
                rms >= limits["min_rms_dbfs"],
                "the WAV has no samples"
                if not len(s)
                else f"every sample is zero over {seconds:.2f} s"
                if peak == float("-inf")
                else f"RMS {rms:.1f} dBFS, peak {peak:.1f} dBFS over {seconds:.2f} s",
            )
        )
        clipped = audio.full_scale / (len(s) * audio.channels) if len(s) else 0.0
        checks.append(
            Check(
                "clipped",
                clipped,
                limits["max_clipped_share"],
                clipped <= limits["max_clipped_share"],
                f"{audio.full_scale} of {len(s) * audio.channels} samples at full scale, peak {peak:.1f} dBFS",
                score=limits["max_clipped_share"] / clipped if clipped else None,
            )
        )
        want = expected_seconds(text, cjk, ups, rate, backend)
        speech = float(loud[-1] - loud[0] + 1) * FRAME_SECONDS if len(loud) else 0.0
        lo, hi = limits["min_length_ratio"], limits["max_length_ratio"]
        if want > 0:
            ratio = speech / want
            checks.append(
                Check(
                    "duration",
                    ratio,
                    lo if ratio < lo else hi,
                    lo <= ratio <= hi,
                    f"{speech:.2f} s of speech for {text_units(text, cjk)} {'characters' if cjk else 'words'}"
                    f" expected in {want:.2f} s at rate {rate:g} (x{ratio:.2f}; pass {lo:g}-{hi:g})",
                    score=_ratio_score(ratio, lo, hi),
                )
            )
        else:
            checks.append(Check("duration", None, None, True, "the text has no words to time"))
        if len(loud):
            start, run = longest_run(quiet[loud[0] : loud[-1] + 1])
            gap = (int(loud[0]) + start, run)
            where = f"at {gap[0] * FRAME_SECONDS:.2f} s" if run else "none"
        else:
            gap, where = (0, len(quiet)), "no speech: all of it"
        silent = float(gap[1]) * FRAME_SECONDS if len(loud) else seconds
        checks.append(
            Check(
                "silence",
                silent,
                limits["max_silence_s"],
                silent <= limits["max_silence_s"],
                f"longest silence inside the speech {silent:.2f} s ({where});"
                f" silent: under {limits['silence_floor_dbfs']:g} dBFS",
                score=limits["max_silence_s"] / silent if silent else None,
            )
        )
        shown = gap if silent > limits["max_silence_s"] else (0, 0)
        evidence = waveform_png(audio, quiet, shown, out_dir / "waveform.png")
        return verdict(checks, out_dir, evidence={"evidence": evidence})


BACKEND = AudioJudge()
