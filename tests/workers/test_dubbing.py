"""The espeak-ng dubbing backend: real espeak-ng and ffmpeg, short lines."""

from __future__ import annotations

import array
import wave
from pathlib import Path

import pytest

from workers.api import StageError
from workers.dubbing.espeak import BACKEND, EDGE_PAD_SECONDS, SILENCE_THRESHOLD, SILENT_LINE_SECONDS

F3 = {"voice": "en-us+f3", "pitch": 70, "rate": 190}
M3 = {"voice": "en-us+m3", "pitch": 35, "rate": 160}


def speak(tmp_path: Path, text: str, voice: dict = F3, name: str = "out", sample_rate: int = 48000):
    return BACKEND.run("line", {}, {"text": text, "voice": voice, "sample_rate": sample_rate}, tmp_path / name)


def read(path: Path) -> tuple[tuple[int, int, int], array.array]:
    with wave.open(str(path), "rb") as w:
        shape = (w.getnchannels(), w.getsampwidth(), w.getframerate())
        samples = array.array("h", w.readframes(w.getnframes()))
    return shape, samples


@pytest.mark.media
def test_english_line_is_mono_16bit_speech_at_the_sample_rate(tmp_path):
    """An English line becomes a mono 16-bit WAV at 48 kHz longer than 0.3 s."""
    result = speak(tmp_path, "Where were you last night?")
    shape, samples = read(result.files["audio"])
    assert result.files["audio"] == tmp_path / "out" / "line.wav"
    assert shape == (1, 2, 48000)
    assert len(samples) / 48000 > 0.3
    assert max(abs(s) for s in samples) > 1000


@pytest.mark.media
def test_mandarin_line_is_speech(tmp_path):
    """A Mandarin line with the cmn voice becomes speech longer than 0.3 s at 48 kHz."""
    result = speak(tmp_path, "你好，今天天气很好。", {"voice": "cmn", "pitch": 50, "rate": 170})
    shape, samples = read(result.files["audio"])
    assert shape == (1, 2, 48000)
    assert len(samples) / 48000 > 0.3
    assert result.usage.model == "espeak-ng"
    assert result.usage.cpu_seconds > 0


@pytest.mark.media
def test_two_voices_sound_different(tmp_path):
    """The same text in two voices (variant, pitch, rate) gives measurably different audio."""
    a = read(speak(tmp_path, "It does not matter now.", F3, "f3").files["audio"])[1]
    b = read(speak(tmp_path, "It does not matter now.", M3, "m3").files["audio"])[1]
    assert len(a) != len(b)
    assert a[: min(len(a), len(b))] != b[: min(len(a), len(b))]


@pytest.mark.media
def test_silence_is_trimmed_to_the_pad(tmp_path):
    """Audio starts and ends within the documented pad of the first and last audible sample."""
    samples = read(speak(tmp_path, "Only me.").files["audio"])[1]
    loud = [i for i, s in enumerate(samples) if abs(s) >= SILENCE_THRESHOLD]
    pad = EDGE_PAD_SECONDS * 48000
    assert loud[0] <= pad + 48 and len(samples) - 1 - loud[-1] <= pad + 48


@pytest.mark.media
@pytest.mark.parametrize(
    "text",
    [
        "-v --help",
        'He said "no": 100% {\\an8} C:\\path\\n',
        "first line\nsecond line",
        "<speak><prosody rate='x-slow'>markup</prosody></speak>",
        "😀🎉",
        "مرحبا",
        "שלום",
        "nul\x00and escape\x1b[31m",
    ],
)
def test_hostile_text_is_spoken_not_obeyed(tmp_path, text):
    """Option-like, quoted, markup, emoji, RTL and control-character texts still give a valid WAV."""
    result = speak(tmp_path, text)
    shape, samples = read(result.files["audio"])
    assert shape == (1, 2, 48000)
    assert len(samples) > 0.2 * 48000


@pytest.mark.media
@pytest.mark.parametrize("text", ["", "   \n  "])
def test_text_without_speech_gives_short_silence(tmp_path, text):
    """A text with nothing to say becomes exactly SILENT_LINE_SECONDS of digital silence."""
    result = speak(tmp_path, text)
    samples = read(result.files["audio"])[1]
    assert len(samples) == round(SILENT_LINE_SECONDS * 48000)
    assert not any(samples)
    assert result.meta["duration"] == pytest.approx(SILENT_LINE_SECONDS)


@pytest.mark.media
def test_meta_matches_the_wav_exactly(tmp_path):
    """meta samples, sample_rate and duration are the WAV's frame count, rate and their ratio."""
    result = speak(tmp_path, "Then who rang?", sample_rate=44100)
    with wave.open(str(result.files["audio"]), "rb") as w:
        frames, rate = w.getnframes(), w.getframerate()
    assert result.meta == {"samples": frames, "sample_rate": 44100, "duration": frames / rate}
    assert rate == 44100


@pytest.mark.media
def test_same_input_gives_identical_bytes(tmp_path):
    """Speaking the same line twice produces byte-identical files."""
    a = speak(tmp_path, "Is anyone there?", name="a").files["audio"].read_bytes()
    b = speak(tmp_path, "Is anyone there?", name="b").files["audio"].read_bytes()
    assert a == b


@pytest.mark.parametrize(
    "voice",
    [
        {"voice": "-x", "pitch": 50, "rate": 170},
        {"voice": "en us", "pitch": 50, "rate": 170},
        {"voice": "en-us", "pitch": 120, "rate": 170},
        {"voice": "en-us", "pitch": 50, "rate": 20},
    ],
)
def test_invalid_voice_is_refused_before_running(tmp_path, voice):
    """An option-like or malformed voice name, or pitch/rate out of range, raises StageError."""
    with pytest.raises(StageError):
        speak(tmp_path, "hello", voice)


def test_estimate_grows_with_text():
    """The estimate is about 0.2 s plus 0.01 s per character."""
    assert BACKEND.estimate("line", {"text": "x" * 100}).seconds == pytest.approx(1.2)
