"""Audio for assembly: a shot's dialogue track built sample-exactly, and loudness normalisation.

Normalisation is ffmpeg's loudnorm in two passes: the first measures (print_format=json), the
second applies one linear gain from the measured values. loudnorm only stays linear when that gain
keeps the true peak under the ceiling; espeak speech has a peak-to-loudness ratio of ~16 dB, more
than the 12.5 dB between -14 LUFS and -1.5 dBTP, and loudnorm would silently fall back to its
dynamic mode (a compressor whose result drifts on short programmes). So when the first measurement
shows the peaks would not fit, a lookahead limiter (alimiter) first brings them down to where the
gain will put them under the ceiling, and the linear passes run on the limited signal.
"""

from __future__ import annotations

import json
import math
import re
import wave
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from workers.api import StageError, run_tool

# Headroom the limiter leaves under the true-peak ceiling: limiting lowers the loudness a little,
# which the linear gain then makes up, and alimiter works on samples, not true peaks.
PEAK_MARGIN_DB = 1.5
# loudnorm's widest loudness-range target: LRA never forces the dynamic mode.
TARGET_LRA = 50.0
# Mono dialogue is delivered as stereo (both channels equal): what phones and platforms expect,
# and what platform loudness meters measure.
UPMIX = "pan=stereo|c0=c0|c1=c0"


def read_pcm(path: Path, sample_rate: int, what: str) -> bytes:
    """The frames of a mono 16-bit WAV at ``sample_rate``; StageError for anything else."""
    try:
        with wave.open(str(path), "rb") as w:
            shape = (w.getnchannels(), w.getsampwidth(), w.getframerate())
            frames = w.readframes(w.getnframes())
    except (OSError, wave.Error, EOFError) as exc:
        raise StageError(f"assembly: {what} is not a readable WAV: {exc}") from exc
    if shape != (1, 2, sample_rate):
        raise StageError(
            f"assembly: {what} is {shape[0]} channel(s), {8 * shape[1]}-bit, {shape[2]} Hz; "
            f"expected mono 16-bit at {sample_rate} Hz"
        )
    return frames


def place_lines(total_samples: int, lines: Sequence[tuple[str, int, bytes]]) -> bytes:
    """Silence of ``total_samples`` with each (name, offset_samples, pcm) line placed at its offset.

    Raises StageError when a line starts before 0, runs past the end or overlaps another.
    """
    track = bytearray(2 * total_samples)
    taken: list[tuple[int, int, str]] = []
    for name, offset, pcm in lines:
        count = len(pcm) // 2
        if offset < 0 or offset + count > total_samples:
            raise StageError(
                f"assembly: line {name!r} ({count} samples at offset {offset}) does not fit in the "
                f"shot's {total_samples} samples"
            )
        for start, end, other in taken:
            if offset < end and start < offset + count:
                raise StageError(f"assembly: lines {other!r} and {name!r} overlap")
        taken.append((offset, offset + count, name))
        track[2 * offset : 2 * (offset + count)] = pcm
    return bytes(track)


def wav_frames(path: Path) -> int:
    with wave.open(str(path), "rb") as w:
        return w.getnframes()


def write_wav(path: Path, pcm: bytes, sample_rate: int) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(pcm)


def _num(value: float) -> str:
    """A number for a filter argument; refuses anything that is not a finite float."""
    if not math.isfinite(value):
        raise StageError(f"assembly: loudness value {value!r} is not finite")
    return f"{value:.4f}"


def _loudnorm(target_i: float, target_tp: float, **measured: float) -> str:
    args = [f"I={_num(target_i)}", f"TP={_num(target_tp)}", f"LRA={_num(TARGET_LRA)}"]
    args += [f"{key}={_num(value)}" for key, value in measured.items()]
    if measured:
        args.append("linear=true")
    args.append("print_format=json")
    return "loudnorm=" + ":".join(args)


def _limiter(ceiling_db: float) -> str:
    limit = min(1.0, max(0.0625, 10 ** (ceiling_db / 20)))  # alimiter's accepted range
    # level=false: no make-up gain; latency=true: no shift, the track keeps its sample count.
    return f"alimiter=limit={_num(limit)}:attack=5:release=50:level=false:latency=true"


def measure(inputs: Sequence[str], chain: Sequence[str], target_i: float, target_tp: float) -> dict[str, float]:
    """Run ``chain`` + loudnorm in analysis mode over the first audio stream; its JSON, as floats."""
    graph = ",".join([*chain, _loudnorm(target_i, target_tp)])
    proc = run_tool(
        [
            "ffmpeg",
            "-nostdin",
            "-hide_banner",
            "-nostats",
            "-v",
            "info",
            *inputs,
            "-map",
            "0:a:0",
            "-af",
            graph,
            "-f",
            "null",
            "-",
        ],
        what="assembly: measure loudness",
    )
    log = proc.stderr.decode("utf-8", "replace")
    found = re.findall(r"\{[^{}]*\"input_i\"[^{}]*\}", log)
    if not found:
        raise StageError("assembly: loudnorm printed no measurement")
    stats: dict[str, Any] = json.loads(found[-1])
    try:
        return {k: float(v) for k, v in stats.items() if k != "normalization_type"}
    except ValueError as exc:
        raise StageError(f"assembly: unexpected loudnorm measurement {stats}") from exc


def normalise_chain(source: Path, target_i: float, target_tp: float) -> tuple[list[str], bool]:
    """The audio filters that bring mono ``source`` to ``target_i`` LUFS under ``target_tp`` dBTP.

    Returns (filters, normalised); normalised is False for silence, which is left as it is.
    """
    inputs = ["-i", str(source)]
    raw = measure(inputs, [UPMIX], target_i, target_tp)
    if not math.isfinite(raw["input_i"]) or raw["input_i"] <= -70:
        return [UPMIX], False
    chain = [UPMIX]
    ceiling = target_tp - (target_i - raw["input_i"]) - PEAK_MARGIN_DB
    if raw["input_tp"] > ceiling:
        chain.append(_limiter(ceiling))
        raw = measure(inputs, chain, target_i, target_tp)
    final = _loudnorm(
        target_i,
        target_tp,
        measured_I=raw["input_i"],
        measured_TP=raw["input_tp"],
        # loudnorm reads an LRA of exactly 0 (one short line) as "not measured" and goes dynamic.
        measured_LRA=max(raw["input_lra"], 0.01),
        measured_thresh=raw["input_thresh"],
        offset=raw["target_offset"],
    )
    return [*chain, final], True


def integrated_loudness(path: Path, target_i: float, target_tp: float) -> float | None:
    """Integrated loudness (LUFS) of the first audio stream of ``path``; None for silence."""
    value = measure(["-i", str(path)], [], target_i, target_tp)["input_i"]
    return round(value, 2) if math.isfinite(value) and value > -70 else None
