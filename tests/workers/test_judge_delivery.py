"""The delivery judge on small real episodes: colour bars and a tone, loudness-normalised by the
assembly's own chain, encoded like the assembly does; each defect is made with ffmpeg."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from workers.api import StageError
from workers.assembly import _audio
from workers.assembly._subtitles import build_cues, srt
from workers.assembly.ffmpeg import AAC_ARGS
from workers.judge.delivery import BACKEND, parse_srt, top_level_boxes

W, H, FPS, SR, SECONDS = 180, 320, 12, 48000, 4
CUES = [
    {"start": 0.25, "end": 2.25, "speaker": "Mei", "text": "The tea is cold tonight, Mei."},
    {"start": 2.6, "end": 3.0, "speaker": "Jun", "text": "Yes."},  # 0.4 s: shown for 5/6 s
]
ZH_CUES = [{"start": 0.2, "end": 3.8, "speaker": "李", "text": "今天晚上的茶特别香，你要不要尝一尝？"}]


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *args], check=True)


def expect(cues=CUES, cjk=False) -> dict:
    return {
        "width": W,
        "height": H,
        "fps": FPS,
        "sample_rate": SR,
        "loudness_lufs": -14.0,
        "true_peak_db": -1.5,
        "language": "zh" if cjk else "en",
        "cjk": cjk,
        "cues": cues,
    }


def write_srt(path: Path, cues) -> Path:
    path.write_text(srt(build_cues(cues, SECONDS * 1000)), encoding="utf-8", newline="\n")
    return path


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> dict[str, Path]:
    """A good episode and its SRT, and each defect of it."""
    root = tmp_path_factory.mktemp("delivery")
    video, tone = root / "video.mp4", root / "tone.wav"
    ffmpeg(
        *("-f", "lavfi", "-i", f"testsrc2=size={W}x{H}:rate={FPS}:duration={SECONDS}"),
        *("-c:v", "libx264", "-profile:v", "high", "-pix_fmt", "yuv420p", str(video)),
    )
    # Tone bursts, a little like speech: 440 Hz, on for 0.5 s of every second.
    ffmpeg(
        *("-f", "lavfi", "-i", f"sine=frequency=440:sample_rate={SR}:duration={SECONDS}"),
        *("-af", "volume='if(lt(mod(t,1),0.5),1,0.05)':eval=frame", "-ac", "1", "-c:a", "pcm_s16le", str(tone)),
    )
    chain, _ = _audio.normalise_chain(tone, -14.0, -1.5)
    out = {"good": root / "good.mp4", "loud": root / "loud.mp4", "short_audio": root / "short.mp4"}
    for name, extra in (("good", []), ("loud", ["volume=6dB"]), ("short_audio", [f"atrim=end={SECONDS - 0.5}"])):
        ffmpeg(
            *("-i", str(video), "-i", str(tone), "-filter_complex", "[1:a]" + ",".join([*chain, *extra]) + "[a]"),
            *("-map", "0:v", "-map", "[a]", "-c:v", "copy", *AAC_ARGS, "-movflags", "+faststart", str(out[name])),
        )
    out["slow_start"] = root / "slow.mp4"
    ffmpeg("-i", str(out["good"]), "-map", "0", "-c", "copy", str(out["slow_start"]))
    out["srt"] = write_srt(root / "good.srt", CUES)
    moved = [CUES[0], dict(CUES[1], start=2.9, end=3.3)]  # the second cue 0.3 s late
    out["moved_srt"] = write_srt(root / "moved.srt", moved)
    out["zh_srt"] = write_srt(root / "zh.srt", ZH_CUES)
    return out


def judge(subject: Path, subtitles: Path, tmp_path: Path, **kw) -> tuple[dict, dict]:
    params = {"target": {"op": "episode", "stage": "assembly", "backend": "ffmpeg", "take": 1}, "thresholds": {}}
    result = BACKEND.run(
        "judge", {"subject": subject, "subtitles": subtitles}, params | {"expect": expect(**kw)}, tmp_path
    )
    assert json.loads(result.files["verdict"].read_text()) == result.meta
    return result.meta, {c["name"]: c for c in result.meta["checks"]}


def failed(meta: dict) -> list[str]:
    return [c["name"] for c in meta["checks"] if not c["passed"]]


@pytest.mark.media
def test_a_good_episode_passes_every_check(made, tmp_path):
    """Loudness-normalised H.264 High + AAC with fast start and a conventional SRT: a pass, score 1."""
    meta, checks = judge(made["good"], made["srt"], tmp_path)
    assert failed(meta) == [] and meta["verdict"] == "pass" and meta["score"] == 1.0
    assert list(checks) == [
        "loudness",
        "true_peak",
        "durations",
        "video_format",
        "audio_format",
        "faststart",
        "cue_timing",
        "line_length",
        "lines_per_cue",
        "cue_duration",
        "reading_speed",
    ]
    assert checks["loudness"]["value"] == pytest.approx(-14.0, abs=1.0)
    assert checks["true_peak"]["value"] <= -1.0
    assert checks["cue_duration"]["value"] == pytest.approx(5 / 6, abs=0.002)  # "Yes." held for 5/6 s


@pytest.mark.media
def test_six_db_too_loud_fails_loudness_with_the_figure(made, tmp_path):
    """+6 dB of gain reads about -8 LUFS: loudness fails, saying by how much."""
    meta, checks = judge(made["loud"], made["srt"], tmp_path)
    assert "loudness" in failed(meta) and meta["verdict"] == "fail"
    assert checks["loudness"]["value"] == pytest.approx(-8.0, abs=1.0)
    assert "LUFS" in checks["loudness"]["detail"] and "LU off" in checks["loudness"]["detail"]
    assert 0 < meta["score"] < 1


@pytest.mark.media
def test_audio_half_a_second_short_fails_durations(made, tmp_path):
    """Audio that stops 0.5 s before the video fails durations with the gap measured."""
    meta, checks = judge(made["short_audio"], made["srt"], tmp_path)
    assert failed(meta) == ["durations"]
    assert checks["durations"]["value"] == pytest.approx(0.5, abs=0.03)
    assert "audio 3.5" in checks["durations"]["detail"]


@pytest.mark.media
def test_no_fast_start_fails_faststart(made, tmp_path):
    """The same file with `mdat` before `moov` fails faststart and nothing else."""
    assert top_level_boxes(made["slow_start"]).index("mdat") < top_level_boxes(made["slow_start"]).index("moov")
    meta, checks = judge(made["slow_start"], made["srt"], tmp_path)
    assert failed(meta) == ["faststart"]
    assert checks["faststart"]["detail"] == "top-level boxes mdat < moov"


@pytest.mark.media
def test_a_cue_moved_by_0_3_s_fails_cue_timing(made, tmp_path):
    """A cue 0.3 s late misses its line's audio by more than a frame: cue_timing fails with 0.3 s."""
    meta, checks = judge(made["good"], made["moved_srt"], tmp_path)
    assert failed(meta) == ["cue_timing"]
    assert checks["cue_timing"]["value"] == pytest.approx(0.3, abs=0.002)
    assert "line 2 starts 2.900 s, audio 2.600 s" in checks["cue_timing"]["detail"]


@pytest.mark.media
def test_a_cjk_episode_is_held_to_16_characters_a_line(made, tmp_path):
    """The writer's CJK cues pass; the same text in one 18-character line fails line_length."""
    meta, checks = judge(made["good"], made["zh_srt"], tmp_path, cues=ZH_CUES, cjk=True)
    assert "line_length" not in failed(meta) and checks["line_length"]["threshold"] == 16
    one_line = tmp_path / "one.srt"
    one_line.write_text("1\n00:00:00,200 --> 00:00:03,800\n" + ZH_CUES[0]["text"] + "\n\n", encoding="utf-8")
    meta, checks = judge(made["good"], one_line, tmp_path, cues=ZH_CUES, cjk=True)
    assert failed(meta) == ["line_length"]
    assert checks["line_length"]["value"] == 18


@pytest.mark.media
def test_three_lines_a_short_cue_and_a_lost_word_fail_their_checks(made, tmp_path):
    """Hand-written SRT breaking the conventions: three lines, a 0.4 s cue, a word dropped."""
    bad = tmp_path / "bad.srt"
    bad.write_text(
        "1\n00:00:00,250 --> 00:00:02,250\nThe tea\nis cold\ntonight, Mei.\n\n2\n00:00:02,600 --> 00:00:03,000\nYe\n\n",
        encoding="utf-8",
    )
    meta, checks = judge(made["good"], bad, tmp_path)
    assert failed(meta) == ["cue_timing", "lines_per_cue", "cue_duration"]
    assert "line 2's text differs" in checks["cue_timing"]["detail"]
    assert checks["lines_per_cue"]["value"] == 3
    assert checks["cue_duration"]["value"] == pytest.approx(0.4)


@pytest.mark.media
def test_an_unreadable_episode_is_a_retryable_error_not_a_verdict(made, tmp_path):
    """A file ffprobe cannot read means the judge could not measure: StageError, retryable."""
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(made["good"].read_bytes()[:2000])
    with pytest.raises(StageError) as caught:
        judge(broken, made["srt"], tmp_path)
    assert caught.value.retryable


def test_parse_srt_reads_cues_and_refuses_a_block_without_timing():
    """The judge's SRT reader gives (start, end, lines) and names a block that is not a cue."""
    assert [(c.start, c.end, c.lines) for c in parse_srt("1\n00:00:01,500 --> 00:00:02,000\na\nb\n\n")] == [
        (1.5, 2.0, ("a", "b"))
    ]
    with pytest.raises(ValueError, match="block 1"):
        parse_srt("hello\nworld\n\n")
