"""The line judge ``audio``: real espeak-ng lines pass; silent, clipped, cut, padded and broken ones fail."""

from __future__ import annotations

import json
import wave
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from farm.core.spec import LANGUAGES
from workers.api import StageError
from workers.dubbing.espeak import BACKEND as SPEAK
from workers.judge.audio import BACKEND, EVIDENCE_SIZE, expected_seconds, text_units

EXAMPLES = Path(__file__).resolve().parents[2] / "farm" / "examples"
MEI = {"voice": "en-us+f3", "pitch": 62, "rate": 165}
XIAOYU = {"voice": "cmn+f3", "pitch": 60, "rate": 160}
EN_LINE = "The pickup was here. A stall that sells umbrellas."
ZH_LINE = "寄信人的名字，已经看不清了。"


def example_lines() -> list:
    """Every line of the shipped examples: (language, text, its speaker's voice), as test params."""
    out = []
    for series in sorted(p for p in EXAMPLES.iterdir() if (p / "series.yaml").exists()):
        spec = yaml.safe_load((series / "series.yaml").read_text(encoding="utf-8"))
        voices = {c["id"]: c["voice"] for c in spec["characters"]}
        for episode in sorted(series.glob("ep*.yaml")):
            lines = [
                line
                for beat in yaml.safe_load(episode.read_text(encoding="utf-8"))["outline"]
                for line in beat["lines"]
            ]
            out += [
                pytest.param(
                    spec["language"], line["text"], voices[line["speaker"]], id=f"{series.name}-{episode.stem}-{n}"
                )
                for n, line in enumerate(lines, 1)
            ]
    return out


def params(text: str, language: str = "en", rate: int = 165, **overrides: float) -> dict:
    lang = LANGUAGES[language]
    return {
        "target": {"op": "line", "stage": "dubbing", "backend": "espeak-ng", "take": 1},
        "thresholds": overrides,
        "expect": {
            "text": text,
            "language": language,
            "cjk": lang.cjk,
            "units_per_second": lang.units_per_second,
            "rate": rate,
            "sample_rate": 48000,
        },
    }


def speak(tmp_path: Path, text: str, voice: dict) -> np.ndarray:
    wav = SPEAK.run("line", {}, {"text": text, "voice": voice, "sample_rate": 48000}, tmp_path / "speak")
    with wave.open(str(wav.files["audio"]), "rb") as w:
        return np.frombuffer(w.readframes(w.getnframes()), "<i2").copy()


def write(path: Path, samples: np.ndarray, rate: int = 48000, channels: int = 1) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.clip(samples, -32768, 32767).astype("<i2").tobytes())
    return path


def judge(tmp_path: Path, subject: Path, p: dict):
    return BACKEND.run("judge", {"subject": subject}, p, tmp_path / "judge")


def checks(result) -> dict[str, dict]:
    return {c["name"]: c for c in result.meta["checks"]}


def failed(result) -> set[str]:
    return {c["name"] for c in result.meta["checks"] if not c["passed"]}


@pytest.mark.media
@pytest.mark.parametrize(("language", "text", "voice"), example_lines())
def test_every_line_of_the_shipped_examples_passes(tmp_path, language, text, voice):
    """Each example line, spoken by espeak-ng in its speaker's voice, passes every check."""
    wav = write(tmp_path / "line.wav", speak(tmp_path, text, voice))
    result = judge(tmp_path, wav, params(text, language, voice["rate"]))
    assert result.meta["verdict"] == "pass", result.meta
    assert result.meta["score"] == 1.0
    assert [c["name"] for c in result.meta["checks"]] == ["format", "present", "clipped", "duration", "silence"]


@pytest.mark.media
def test_verdict_file_and_waveform_evidence(tmp_path):
    """verdict.json holds exactly the meta; the evidence is a waveform PNG of EVIDENCE_SIZE."""
    wav = write(tmp_path / "line.wav", speak(tmp_path, EN_LINE, MEI))
    result = judge(tmp_path, wav, params(EN_LINE))
    assert json.loads(result.files["verdict"].read_text()) == result.meta
    with Image.open(result.files["evidence"]) as image:
        assert image.format == "PNG" and image.size == EVIDENCE_SIZE
        assert len(image.convert("RGB").getcolors(maxcolors=1 << 16) or []) >= 3  # background, shade, wave


def test_silent_wav_fails_present(tmp_path):
    """Two seconds of digital silence fail "present" (and there is no speech to time)."""
    wav = write(tmp_path / "line.wav", np.zeros(96000))
    result = judge(tmp_path, wav, params("Who leaves a letter at midnight?"))
    assert result.meta["verdict"] == "fail"
    assert {"present", "duration"} <= failed(result)
    assert checks(result)["present"]["value"] is None  # -inf dBFS is written as null


def test_wav_without_samples_is_a_failed_take_not_an_error(tmp_path):
    """A WAV with a header and no samples is a fail verdict on "present"."""
    wav = write(tmp_path / "line.wav", np.zeros(0))
    result = judge(tmp_path, wav, params("You brought it?"))
    assert "present" in failed(result)
    assert checks(result)["present"]["detail"] == "the WAV has no samples"


@pytest.mark.media
def test_clipped_line_fails_clipped(tmp_path):
    """The same line scaled x8 and clamped to 16 bits fails "clipped", and only that."""
    samples = speak(tmp_path, EN_LINE, MEI).astype(np.int64) * 8
    result = judge(tmp_path, write(tmp_path / "line.wav", samples), params(EN_LINE))
    assert failed(result) == {"clipped"}
    assert checks(result)["clipped"]["value"] > 0.01
    assert 0 < result.meta["score"] < 1


@pytest.mark.media
@pytest.mark.parametrize(
    ("language", "text", "voice"), [("en", EN_LINE, MEI), ("zh", ZH_LINE, XIAOYU)], ids=["en", "zh"]
)
def test_line_cut_to_30_percent_fails_duration(tmp_path, language, text, voice):
    """The first 30 % of a good line is too short for its text, in English and in Mandarin."""
    samples = speak(tmp_path, text, voice)
    assert (
        judge(tmp_path / "whole", write(tmp_path / "a.wav", samples), params(text, language, voice["rate"])).meta[
            "verdict"
        ]
        == "pass"
    )
    cut = samples[: int(0.3 * len(samples))]
    result = judge(tmp_path, write(tmp_path / "b.wav", cut), params(text, language, voice["rate"]))
    assert failed(result) == {"duration"}
    assert checks(result)["duration"]["value"] < 0.35


@pytest.mark.media
@pytest.mark.parametrize(
    ("language", "text", "voice"), [("en", "You brought it?", MEI), ("zh", ZH_LINE, XIAOYU)], ids=["en", "zh"]
)
def test_line_padded_to_four_times_with_speech_fails_duration(tmp_path, language, text, voice):
    """A line said four times over (the shortest example line included) is too long for its text."""
    samples = np.tile(speak(tmp_path, text, voice), 4)
    result = judge(tmp_path, write(tmp_path / "line.wav", samples), params(text, language, voice["rate"]))
    assert failed(result) == {"duration"}
    assert checks(result)["duration"]["value"] > 1.75


@pytest.mark.media
def test_two_second_dropout_inside_the_line_fails_silence(tmp_path):
    """Two seconds of silence inserted mid-line fail "silence"; the evidence marks it red."""
    samples = speak(tmp_path, EN_LINE, MEI)
    middle = len(samples) // 2
    gapped = np.concatenate([samples[:middle], np.zeros(96000, np.int16), samples[middle:]])
    result = judge(tmp_path, write(tmp_path / "line.wav", gapped), params(EN_LINE))
    assert "silence" in failed(result)
    assert checks(result)["silence"]["value"] > 1.9  # frames at the gap's edges hold some speech
    with Image.open(result.files["evidence"]) as image:
        assert (250, 190, 190) in {rgb for _, rgb in image.convert("RGB").getcolors(maxcolors=1 << 16) or []}


@pytest.mark.media
def test_wrong_sample_rate_and_stereo_fail_format(tmp_path):
    """A stereo WAV at 44.1 kHz is measured (mixed to mono) but fails "format"."""
    mono = speak(tmp_path, EN_LINE, MEI)
    stereo = np.repeat(mono[::2], 2)  # about half the samples at 24 kHz, as two equal channels
    wav = write(tmp_path / "line.wav", stereo, rate=24000, channels=2)
    result = judge(tmp_path, wav, params(EN_LINE))
    assert failed(result) == {"format"}
    assert checks(result)["format"]["value"] == 24000


@pytest.mark.media
def test_threshold_override_is_merged_over_the_defaults(tmp_path):
    """A spec's tighter max_silence_s fails the full stop's pause that the default lets pass."""
    wav = write(tmp_path / "line.wav", speak(tmp_path, EN_LINE, MEI))
    result = judge(tmp_path, wav, params(EN_LINE, max_silence_s=0.1))
    assert failed(result) == {"silence"}
    assert checks(result)["silence"]["threshold"] == 0.1


@pytest.mark.parametrize("body", [b"", b"ID3\x04\x00 not a wav at all", b"RIFF\x24\x00\x00\x00WAVEfmt "])
def test_file_that_is_not_a_wav_cannot_be_measured(tmp_path, body):
    """Empty, MP3-like or truncated-header files raise a retryable StageError, never a verdict."""
    (tmp_path / "line.wav").write_bytes(body)
    with pytest.raises(StageError, match="not a readable PCM WAV") as caught:
        judge(tmp_path, tmp_path / "line.wav", params("Hello."))
    assert caught.value.retryable
    assert not (tmp_path / "judge" / "verdict.json").exists()


@pytest.mark.parametrize(("name", "value"), [("max_silence_s", 0.0), ("min_length_ratio", 3.0), ("loudness", 1.0)])
def test_bad_threshold_override_is_refused(tmp_path, name, value):
    """An out-of-range or unknown threshold is refused as a failure no retry mends."""
    wav = write(tmp_path / "line.wav", np.zeros(4800))
    with pytest.raises(StageError, match=name) as caught:
        judge(tmp_path, wav, params("Hello.", **{name: value}))
    assert not caught.value.retryable


def test_expected_length_counts_words_cjk_characters_rate_and_breaks():
    """Words or CJK characters at the unit rate, scaled by the voice's rate, plus a pause per inner break."""
    assert text_units("Don't open that. Please.", cjk=False) == 4
    assert text_units("这封信……是写给我的？", cjk=True) == 8
    assert text_units("我的 OK 卡", cjk=True) == 4
    assert expected_seconds("one two", False, 2.0, 175) == pytest.approx(1.0)
    assert expected_seconds("one two", False, 2.0, 350) == pytest.approx(0.5)
    assert expected_seconds("one. two", False, 2.0, 175) == pytest.approx(1.25)
    assert expected_seconds("3.5 two", False, 2.0, 175) == pytest.approx(1.0)  # a decimal point is no break
    assert expected_seconds("你好", True, 4.5, 175, "espeak-ng") > expected_seconds("你好", True, 4.5, 175, "other")
