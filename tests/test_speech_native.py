"""Speech-native video: a backend whose clips talk (feature ``speech``) gets each shot's lines, and the
episode is made of what it returns: no dubbing (unless it asks for a voice reference), no lip-sync, the
clip's own sound under each shot and subtitle cues where the clip says its lines.

The backend is tests.support.speaking.Speaking, real media through the real contract checks."""

from __future__ import annotations

import copy
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from farm.core.checks import check_result
from farm.core.manifest import Manifest
from farm.core.plan import STAGES, BackendChoice, EpisodeJob, plan_episode, plan_script, sketch
from farm.loader import load_episode
from farm.settings import Settings
from tests.conftest import SMALL_SCRIPT, write_specs
from tests.test_takes import _render

SPEAKING = "tests.support.speaking:Speaking"


def _episode(script=None):
    return {
        "series": "series.yaml",
        "number": 1,
        "title": "Talk",
        "target_seconds": 30,
        "script": script or SMALL_SCRIPT,
    }


def _job(tmp_path, features, script=None):
    loaded = load_episode(write_specs(tmp_path / "specs", episode=_episode(script)))
    backends = {s: BackendChoice("noop", "1") for s in STAGES} | {"video": BackendChoice("talk", "1", features)}
    return EpisodeJob("default", "default", loaded.series, loaded.episode, backends)


def _srt(path: Path) -> list[tuple[float, float, str]]:
    def sec(t: str) -> float:
        h, m, s = t.replace(",", ".").split(":")
        return int(h) * 3600 + int(m) * 60 + float(s)

    cues = []
    for block in path.read_text(encoding="utf-8").strip().split("\n\n"):
        rows = block.splitlines()
        start, end = re.match(r"(\S+) --> (\S+)", rows[1]).groups()
        cues.append((sec(start), sec(end), " ".join(rows[2:])))
    return cues


@pytest.mark.media
@pytest.mark.parametrize("reference", [False, True])
def test_a_speech_native_backend_makes_the_episode_its_sound_and_its_cue_times(tmp_path, reference):
    """Without a voice reference nothing is dubbed; with one, the dubbed lines go to the clip (and not
    to the mux): either way no mouth is re-animated, the clip talks."""
    settings = Settings(
        store=str(tmp_path / "store"),
        backends={"talk": {"kind": SPEAKING, "stage": "video", "shift_s": 0.2, "reference": reference}},
        backend_video="talk",
    )
    result = _render(write_specs(tmp_path / "specs", episode=_episode()), settings)
    ops = [m.op for m in result.ran]
    assert ops.count("line") == (3 if reference else 0) and "lipsync" not in ops
    clips = sorted((m for m in result.ran if m.op == "clip" and m.meta.get("lines")), key=lambda m: m.label)
    assert [m.label for m in clips] == ["clip s01-02", "clip s02-01"]

    # the cues are where the clips say their lines, shifted from the plan by the backend's own 0.2 s
    frames = {m.label.split()[1]: m.meta.get("frames") for m in result.ran if m.op == "mux"}
    assert None not in frames.values()
    fps, starts, at = 12, {}, 0.0
    for shot in ("s01-01", "s01-02", "s02-01"):
        starts[shot] = at
        at += frames[shot] / fps
    expected = []
    for m in clips:
        shot = m.label.split()[1]
        expected += [(starts[shot] + t["start"], starts[shot] + t["end"]) for t in m.meta["lines"]]
    cues = _srt(result.subtitles)
    assert len(cues) == len(expected) == 3
    for (start, end, _text), (want_start, want_end) in zip(cues, expected):
        assert abs(start - want_start) <= 0.002, (cues, expected)
        # a cue shorter than the conventions' 834 ms is held that long (workers/assembly/_subtitles.py)
        assert abs(end - max(want_end, want_start + 0.834)) <= 0.002, (cues, expected)
    assert cues[0][0] >= starts["s01-02"] + 0.25 + 0.2 - 0.002  # the plan's lead-in, then the backend's shift

    # the episode's sound is the clips' own: their pilot tone is in it, under the first line
    pcm = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(result.video), "-map", "0:a:0", "-ac", "1", "-ar", "48000"]
        + ["-f", "s16le", "-"],
        capture_output=True,
        check=True,
    ).stdout
    audio = np.frombuffer(pcm, "<i2").astype(float)
    a, b = round(cues[0][0] * 48000), round(cues[0][1] * 48000)
    spectrum = np.abs(np.fft.rfft(audio[a:b] * np.hanning(b - a)))
    freqs = np.fft.rfftfreq(b - a, 1 / 48000)
    pilot = spectrum[np.abs(freqs - 1000).argmin()]
    near = spectrum[(np.abs(freqs - 1000) > 30) & (np.abs(freqs - 1000) < 150)]
    assert pilot > 8 * np.median(near), (pilot, np.median(near))


def test_without_a_voice_reference_nothing_is_dubbed_and_shots_are_sized_by_their_text(tmp_path):
    job = _job(tmp_path, ("speech",))
    script, samples, fixed = sketch(job, keyed=False)
    assert samples == {} and not any(a.op == "line" for a in fixed.actions)
    plan = plan_episode(job, None, {}, plan_script(job, None))
    by = {a.label: a for a in plan.actions}
    assert "lipsync s01-02" not in by and "line s01-02#0" not in by
    clip = by["clip s01-02"]
    (line,) = clip.params["lines"]
    assert line["text"] == "Is anyone there?" and line["name"] == "Ana" and line["voice"]["voice"] == "en-us+f3"
    assert "input" not in line and set(clip.inputs) == {"keyframe"}
    assert clip.params["frames"] > 6  # longer than its 0.5 s: sized to say the line
    assert plan.final_key is None  # the cues wait for where the clips say their lines


def test_with_a_voice_reference_lines_are_dubbed_and_given_to_the_clip_and_the_mux_keeps_its_sound(tmp_path):
    job = _job(tmp_path, ("speech", "voice_reference"))
    fixed = plan_script(job, None)
    lines = [a for a in fixed.actions if a.op == "line"]
    assert len(lines) == 3
    samples = {a.key: 24000 for a in lines}
    clip_of = {}
    plan = plan_episode(job, None, samples, fixed, keyed=False)
    for a in plan.actions:
        if a.op == "clip":
            clip_of[a.label] = a
    clip = clip_of["clip s01-02"]
    assert clip.params["lines"][0]["input"] == "line0" and clip.inputs["line0"].key == lines[0].key
    mux = next(a for a in plan.actions if a.label == "mux s01-02")
    assert {n: (r.key, r.output) for n, r in mux.inputs.items()} == {
        "clip": (clip.key, "clip"),
        "audio": (clip.key, "audio"),
    }
    assert mux.params["lines"] == [{"input": "audio", "offset_samples": 0}]
    assert not any(a.op == "lipsync" for a in plan.actions)


def test_an_edited_line_makes_again_only_its_shot_clip_mux_and_the_episode(tmp_path):
    settings = Settings(
        store=str(tmp_path / "store"),
        backends={"talk": {"kind": SPEAKING, "stage": "video"}},
        backend_video="talk",
        judges={},
    )
    script = copy.deepcopy(SMALL_SCRIPT)
    for scene in script["scenes"]:
        for shot in scene["shots"]:
            shot["duration"] = 4.0
    _render(write_specs(tmp_path / "a", episode=_episode(script)), settings)
    script["scenes"][0]["shots"][1]["lines"][0]["text"] = "Is somebody there?"
    again = _render(write_specs(tmp_path / "b", episode=_episode(script)), settings)
    # a speech-native clip says the line: it is made again, its keyframe is not
    assert sorted(m.label for m in again.ran) == ["clip s01-02", "episode ep001", "mux s01-02"]


def _manifest(action, outputs, meta):
    from farm.core.manifest import Blob

    return Manifest(
        key=action.key,
        stage=action.stage,
        op=action.op,
        backend="talk",
        version="1",
        label=action.label,
        outputs={n: Blob(digest="0" * 64, size=10, name=n) for n in outputs},
        meta=meta,
        started_at=0.0,
        finished_at=1.0,
    )


@pytest.mark.parametrize(
    ("outputs", "meta", "says"),
    [
        (("clip",), {"lines": [{"start": 0.3, "end": 1.0}]}, "no sound of its own"),
        (("clip", "audio"), {}, "gave no line times for 1 lines"),
        (("clip", "audio"), {"lines": [{"start": 0.3, "end": 99.0}]}, "inside the"),
        (("clip", "audio"), {"lines": [{"start": "0", "end": 1.0}]}, "not {start, end}"),
    ],
)
def test_a_speech_clip_without_its_sound_or_with_bad_line_times_is_not_a_fact(tmp_path, outputs, meta, says):
    job = _job(tmp_path, ("speech",))
    plan = plan_episode(job, None, {}, plan_script(job, None))
    clip = next(a for a in plan.actions if a.label == "clip s01-02")
    result, problem = check_result(clip, _manifest(clip, outputs, meta), None, [job.series])
    assert result is None and says in problem, problem
    fine = _manifest(clip, ("clip", "audio"), {"lines": [{"start": 0.3, "end": 1.0}]})
    assert check_result(clip, fine, None, [job.series])[1] == ""


@pytest.mark.media
def test_a_speech_clip_of_the_wrong_length_fails_with_its_figures(tmp_path):
    from PIL import Image

    from tests.support.speaking import Speaking
    from workers.api import StageError

    key = tmp_path / "kf.png"
    Image.new("RGB", (64, 112), (90, 120, 150)).save(key)
    backend = Speaking("talk", {"frames_off": 2})
    params = {"width": 64, "height": 112, "fps": 12, "frames": 24, "camera": "static", "sample_rate": 48000}
    params["lines"] = [
        {"text": "Hello there.", "speaker": "ana", "name": "Ana", "voice": {"voice": "en-us"}, "offset_samples": 0}
    ]
    with pytest.raises(StageError) as err:
        backend.run("clip", {"keyframe": key}, params, tmp_path / "out")
    assert "with 26 frames" in str(err.value) and "with 24 frames was asked for" in str(err.value)
    assert not err.value.retryable
