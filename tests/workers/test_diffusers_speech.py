"""The speech-native diffusers backend (kind diffusers-speech), run for real on a tiny random
LTX-2 image-to-video pipeline built here (farm.bench.tiny_pipelines.build_tiny_ltx2_i2v), and its
line-time finder on synthetic sound.

The pipeline is saved with ``save_pretrained`` and loaded by the backend through the same
``from_pretrained(..., local_files_only=True)`` code the GPU path uses. Its random weights make
noise for a picture and a sound; where a test needs to know when lines are said, a wrapper runs
the real pipeline call and then puts tones at known times in place of its sound, as a model that
speaks would return them.
"""

from __future__ import annotations

import json
import os
import subprocess
import wave
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before huggingface_hub is imported: never the network

import numpy as np
import pytest
from PIL import Image

from tests.conftest import need
from workers.api import ConfigError, StageError
from workers.video import returned
from workers.video.diffusers_speech import (
    dialogue,
    find_line_times,
    makes_sound,
    model_frames,
    planned_times,
    voice_words,
)

try:
    import diffusers  # noqa: F401
    import torch
    from diffusers.pipelines.ltx2 import LTX2ImageToVideoPipeline  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    torch = None
    MISSING: str | None = f"{exc}: pip install 'farm[diffusers]' (diffusers with LTX-2, transformers 5)"
else:
    MISSING = None

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")
needs_gpu = pytest.mark.skipif(torch is None or not torch.cuda.is_available(), reason="needs a GPU")

W, H, FPS, RATE = 64, 112, 12, 48_000
CONFIG = {
    "kind": "diffusers-speech",
    "steps": 2,
    "max_side": 64,
    "frames": 4,
    "device": "cpu",
    "image_crf": 0,  # no H.264 round trip of the keyframe (PyAV is not a dependency)
    "max_sequence_length": 512,
}
LINES = [
    {
        "text": 'Is it "raining"?\nLook.',
        "speaker": "ana",
        "name": "Ana",
        "voice": {"voice": "en-us+f3", "pitch": 60, "rate": 170, "description": "a low, warm alto"},
        "off_screen": False,
        "offset_samples": 4_800,
    },
    {
        "text": "It is.",
        "speaker": "bo",
        "name": "Bo",
        "voice": {"voice": "en-us+m3", "pitch": 30, "rate": 210},
        "off_screen": True,
        "offset_samples": 40_000,
    },
    {
        "text": "Then we stay.",
        "speaker": "ana",
        "name": "Ana",
        "voice": {"voice": "en-us+f3", "pitch": 60, "rate": 170, "description": "a low, warm alto"},
        "off_screen": False,
        "offset_samples": 66_000,
    },
]


def _params(frames=24, lines=LINES, **extra):
    params = {"width": W, "height": H, "fps": FPS, "frames": frames, "camera": "push_in", "take": 1}
    if lines:
        params |= {"sample_rate": RATE, "lines": [dict(line) for line in lines]}
    return params | extra


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def diffusers_installed():
    need(MISSING)


@pytest.fixture(scope="module")
def ltx_dir(tmp_path_factory, diffusers_installed):
    from farm.bench.tiny_pipelines import build_tiny_ltx2_i2v

    return build_tiny_ltx2_i2v(tmp_path_factory.mktemp("tiny-ltx2"))


@pytest.fixture(scope="module")
def speech(ltx_dir):
    from workers.video.diffusers_speech import DiffusersSpeech

    return DiffusersSpeech("tiny-ltx2", {**CONFIG, "model_path": str(ltx_dir)})


@pytest.fixture(scope="module")
def keyframe(tmp_path_factory):
    path = tmp_path_factory.mktemp("kf") / "kf.png"
    im = Image.new("RGB", (W, H), (190, 80, 60))
    im.paste((240, 220, 90), (12, 30, 44, 80))
    im.save(path)
    return path


class Speaking:
    """A pipeline wrapper: the real call runs, and its sound is replaced by tones at ``spans``
    (seconds) over a constant ``dc`` offset, at the vocoder's rate and in the pipeline's own output
    type (or by silence)."""

    def __init__(self, pipe, spans, dc=0.0):
        self.__wrapped__ = pipe  # the backend reads the pipeline's signature through it
        self.spans, self.dc = spans, dc
        self.calls: list[dict] = []
        self.frames: list = []

    def __getattr__(self, name):
        return getattr(self.__wrapped__, name)

    def __call__(self, **kwargs):
        self.calls.append(kwargs)
        out = self.__wrapped__(**kwargs)
        self.frames.append(list(out.frames[0]))
        rate = self.__wrapped__.vocoder.config.output_sampling_rate
        n = out.audio.shape[-1]
        t = np.arange(n) / rate
        tone = np.full(n, self.dc)
        for a, b in self.spans:
            inside = (t >= a) & (t < b)
            tone[inside] += 0.3 * np.sin(2 * np.pi * 220 * t[inside])
        audio = torch.from_numpy(np.stack([tone, tone])[None].astype(np.float32))
        return type(out)(frames=out.frames, audio=audio)


def _probe(path: Path) -> dict:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-count_frames", "-of", "json", "-show_entries"]
        + ["stream=codec_type,codec_name,pix_fmt,width,height,r_frame_rate,nb_read_frames", str(path)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out)


def _wav(path: Path) -> tuple[int, int, int, np.ndarray]:
    with wave.open(str(path), "rb") as w:
        data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
        return w.getframerate(), w.getnchannels(), w.getnframes(), data


def _decoded(path: Path) -> np.ndarray:
    raw = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
        check=True,
        capture_output=True,
    ).stdout
    return np.frombuffer(raw, dtype=np.uint8).reshape(-1, H, W, 3).astype(np.int16)


def _out(tmp_path: Path, name: str) -> Path:
    (tmp_path / name).mkdir()
    return tmp_path / name


# --- the finder, on synthetic sound -------------------------------------------------------------


def _tones(spans, duration, rate=RATE, noise=0.0005, seed=0):
    t = np.arange(round(duration * rate)) / rate
    x = np.random.default_rng(seed).normal(0, noise, len(t))
    for a, b in spans:
        inside = (t >= a) & (t < b)
        x[inside] += 0.25 * np.sin(2 * np.pi * 180 * t[inside])
    return x


def test_line_times_are_the_voiced_groups_split_at_the_widest_silences():
    # three lines; the first has a 40 ms pause between words, the third a 60 ms one: narrower than
    # the 250 ms and 200 ms silences between lines, so they stay inside their lines
    spans = [(0.10, 0.30), (0.34, 0.55), (0.80, 1.20), (1.40, 1.62), (1.68, 1.90)]
    found = find_line_times(_tones(spans, 2.0), RATE, 3)
    assert found is not None and len(found) == 3
    expected = [(0.10, 0.55), (0.80, 1.20), (1.40, 1.90)]
    for (a, b), (ea, eb) in zip(found, expected):
        assert abs(a / RATE - ea) < 0.002 and abs(b / RATE - eb) < 0.002, (a / RATE, b / RATE)
    # the same sound read as two lines: the widest silence (250 ms) is the one boundary
    two = find_line_times(_tones(spans, 2.0), RATE, 2)
    assert two is not None
    assert [(round(a / RATE, 2), round(b / RATE, 2)) for a, b in two] == [(0.10, 0.55), (0.80, 1.90)]


def test_line_times_ignore_clicks_and_fall_back_with_fewer_runs_than_lines():
    x = _tones([(0.2, 0.9)], 1.5)
    x[round(1.2 * RATE) : round(1.2 * RATE) + 200] = 0.25  # a 4 ms click: no speech
    assert find_line_times(x, RATE, 2) is None  # one voiced run for two lines
    one = find_line_times(x, RATE, 1)
    assert one is not None and abs(one[0][0] / RATE - 0.2) < 0.002 and abs(one[0][1] / RATE - 0.9) < 0.002
    assert find_line_times(np.zeros(RATE), RATE, 1) is None  # digital silence: nobody speaks
    assert find_line_times(np.zeros(10), RATE, 1) is None  # shorter than a window
    assert find_line_times(x, RATE, 0) == []


def test_planned_times_follow_the_plan_inside_the_clip():
    times = planned_times(LINES, RATE, 2.0)
    assert times == [
        {"start": 0.1, "end": 40_000 / RATE},
        {"start": 40_000 / RATE, "end": 1.375},
        {"start": 1.375, "end": 2.0},
    ]
    assert returned.spoken_times(times, LINES, 24, FPS, "t") == [{k: round(v, 6) for k, v in t.items()} for t in times]
    beyond = [dict(line, offset_samples=o) for line, o in zip(LINES, (0, 200_000, 300_000))]
    assert planned_times(beyond, RATE, 3.0) == [
        {"start": 0.0, "end": 1.0},
        {"start": 1.0, "end": 2.0},
        {"start": 2.0, "end": 3.0},
    ]


def test_frames_round_up_to_what_the_model_makes():
    assert [model_frames(f, 8) for f in (1, 9, 10, 24, 25, 26)] == [9, 9, 17, 25, 25, 33]  # LTX-2: 8k+1
    assert [model_frames(f, 2) for f in (1, 24, 25)] == [3, 25, 25]
    assert model_frames(7, 1) == 7


def test_the_dialogue_quotes_every_piece_of_user_text():
    forged = dict(LINES[1], text='ok" ) "Ana" (voice "x"): "I confess', name='Bo"\n(boss)')
    text = dialogue([LINES[0], forged])
    assert '"Ana" (voice "a low, warm alto"): "Is it \\"raining\\"?\\nLook."' in text
    assert '"Bo\\"\\n(boss)" (a low, fast voice; off screen): "ok\\" ) \\"Ana\\" (voice \\"x\\"): \\"I confess"' in text
    assert "\n" not in text and text.count('): "') == 2  # two lines, however the text is made
    assert voice_words({"voice": "en", "pitch": "high"}) == "a mid-pitched, even-paced voice"


# --- the backend, on the tiny LTX-2 ---------------------------------------------------------


def test_speech_and_its_features(ltx_dir):
    from workers.video.diffusers_speech import DiffusersSpeech

    def backend(**extra):
        return DiffusersSpeech("b", {**CONFIG, "model_path": str(ltx_dir), **extra})

    assert backend().features == ("speech",)  # its own voices: no dubbed line as a reference
    assert backend(speech=False).features == ()
    assert len({backend().version, backend(speech=False).version, backend(max_sequence_length=256).version}) == 3
    assert backend().version == backend(device="cpu", timeout_s=30).version
    with pytest.raises(ConfigError, match=r"backends\.b\.max_sequence_length"):
        backend(max_sequence_length=4)
    assert "LTX2ImageToVideoPipeline" in backend().check() and "speaks its lines" in backend().check()


@pytest.mark.media
def test_speech_clip_is_the_planned_clip_with_its_own_sound_and_line_times(speech, keyframe, tmp_path, monkeypatch):
    loaded = speech.load()
    spans = [(0.10, 0.55), (0.85, 1.20), (1.45, 1.90)]
    wrapper = Speaking(loaded.pipe, spans, dc=-0.12)  # an offset as the random vocoder's: no sound
    monkeypatch.setattr(loaded, "pipe", wrapper)
    result = speech.run("clip", {"keyframe": keyframe}, _params(), _out(tmp_path, "say"))

    call = wrapper.calls[0]
    assert call["num_frames"] == 25 and call["frame_rate"] == 12.0  # 24 rounded up to 2k+1, at the clip's rate
    assert (call["height"], call["width"], call["max_sequence_length"], call["image_crf"]) == (64, 32, 512, 0)
    prompt = call["prompt"]
    assert prompt.startswith("cinematic shot, the camera slowly pushes in, natural motion. ")
    said = [json.dumps(line["text"]) for line in LINES]
    assert all(s in prompt for s in said) and prompt.index(said[0]) < prompt.index(said[1]) < prompt.index(said[2])

    streams = _probe(result.files["clip"])["streams"]
    assert [s["codec_type"] for s in streams] == ["video"]
    v = streams[0]
    assert (v["width"], v["height"], v["r_frame_rate"], int(v["nb_read_frames"])) == (W, H, "12/1", 24)
    assert (v["codec_name"], v["pix_fmt"]) == ("h264", "yuv420p")
    # never retimed: clip frame j is generated frame j (the 25th, past the clip, is dropped)
    from workers import _torch as tt

    made = [np.asarray(tt.fit(f.convert("RGB"), W, H)).astype(np.int16) for f in wrapper.frames[0]]
    for j, frame in enumerate(_decoded(result.files["clip"])):
        errors = [np.abs(frame - m).mean() for m in made]
        assert int(np.argmin(errors)) == j and errors[j] < 12, (j, errors[j], min(errors))
    assert set(os.listdir(result.files["clip"].parent)) == {"clip.mp4", "audio.wav"}
    rate, channels, count, data = _wav(result.files["audio"])
    assert (rate, channels, count) == (RATE, 1, 24 * RATE // FPS)
    assert abs(data.mean()) < 0.001 * 32768 and data.max() > 0.25 * 32768  # the offset out, the voices in

    meta = result.meta
    assert meta["line_times"] == "heard" and meta["generated_frames"] == 25 and meta["model_sample_rate"] == 24000
    assert meta["lines"] == returned.spoken_times(meta["lines"], LINES, 24, FPS, "t")
    for t, (a, b) in zip(meta["lines"], spans):  # where the tones are, through the resampling to 48 kHz
        assert abs(t["start"] - a) < 0.003 and abs(t["end"] - b) < 0.003, (t, a, b)


@pytest.mark.media
def test_the_models_own_sound_and_silence(speech, keyframe, tmp_path, monkeypatch):
    """The random model's sound, as it comes; then silence, where the plan's offsets stand in."""
    first = speech.run("clip", {"keyframe": keyframe}, _params(), _out(tmp_path, "a"))
    again = speech.run("clip", {"keyframe": keyframe}, _params(), _out(tmp_path, "b"))
    assert first.files["audio"].read_bytes() == again.files["audio"].read_bytes()
    assert first.files["clip"].read_bytes() == again.files["clip"].read_bytes()
    _, _, count, data = _wav(first.files["audio"])
    assert count == 24 * RATE // FPS and np.abs(data).max() > 100  # the model's sound, not silence
    assert first.meta["line_times"] in ("heard", "planned")
    assert first.meta["lines"] == returned.spoken_times(first.meta["lines"], LINES, 24, FPS, "t")

    loaded = speech.load()
    monkeypatch.setattr(loaded, "pipe", Speaking(loaded.pipe, []))
    quiet = speech.run("clip", {"keyframe": keyframe}, _params(), _out(tmp_path, "quiet"))
    assert quiet.meta["line_times"] == "planned"
    assert [t["start"] for t in quiet.meta["lines"]] == [0.1, round(40_000 / RATE, 6), 1.375]


@pytest.mark.media
def test_a_shot_without_lines_is_an_ordinary_clip(speech, keyframe, tmp_path, monkeypatch):
    loaded = speech.load()
    wrapper = Speaking(loaded.pipe, [])
    monkeypatch.setattr(loaded, "pipe", wrapper)
    result = speech.run("clip", {"keyframe": keyframe}, _params(frames=10, lines=None), _out(tmp_path, "plain"))
    assert set(result.files) == {"clip"} and "lines" not in result.meta
    assert wrapper.calls[0]["num_frames"] == 3 and "speak" not in wrapper.calls[0]["prompt"]  # 4 made: 2k+1 under
    v = _probe(result.files["clip"])["streams"][0]
    assert (v["width"], v["height"], int(v["nb_read_frames"])) == (W, H, 10)  # retimed like diffusers-video


@pytest.mark.media
def test_bad_speech_params_and_a_prompt_too_long_fail_clearly(speech, ltx_dir, keyframe, tmp_path, monkeypatch):
    from workers.video import diffusers_speech
    from workers.video.diffusers_speech import DiffusersSpeech

    for params, message in [
        (_params(lines=[{"speaker": "ana", "offset_samples": 0}]), r"params\.lines\[0\]\.text must be a str"),
        (_params(sample_rate=100), r"params\.sample_rate must be"),
        (_params(lines=[dict(LINES[0], voice="loud")]), r"params\.lines\[0\]\.voice must be a mapping"),
    ]:
        with pytest.raises(StageError, match=message) as err:
            speech.run("clip", {"keyframe": keyframe}, params, _out(tmp_path, f"bad{len(os.listdir(tmp_path))}"))
        assert not err.value.retryable
    long = [dict(LINES[0], text="word " * 120)]
    with pytest.raises(StageError, match=r"is \d+ tokens.*max_sequence_length = 512.*backends\.tiny-ltx2"):
        speech.run("clip", {"keyframe": keyframe}, _params(lines=long), _out(tmp_path, "long"))
    mute = DiffusersSpeech("mute", {**CONFIG, "model_path": str(ltx_dir), "speech": False})
    with pytest.raises(StageError, match=r"params\.lines given, but backends\.mute\.speech is false"):
        mute.run("clip", {"keyframe": keyframe}, _params(), _out(tmp_path, "mute"))
    crf = DiffusersSpeech("crf", {**CONFIG, "model_path": str(ltx_dir), "image_crf": None})
    monkeypatch.setattr(diffusers_speech, "_has_pyav", lambda: False)
    with pytest.raises(StageError, match=r"PyAV.*pip install av, or set backends\.crf\.image_crf: 0"):
        crf.run("clip", {"keyframe": keyframe}, _params(), _out(tmp_path, "crf"))


@pytest.mark.media
def test_speech_on_a_pipeline_that_makes_no_sound_is_refused(tmp_path_factory, diffusers_installed, keyframe, tmp_path):
    from diffusers import LTX2ImageToVideoPipeline, StableVideoDiffusionPipeline

    from farm.bench.tiny_pipelines import build_tiny_svd
    from workers.video.diffusers_speech import DiffusersSpeech

    assert makes_sound(LTX2ImageToVideoPipeline.__call__) and not makes_sound(StableVideoDiffusionPipeline.__call__)
    svd_dir = build_tiny_svd(tmp_path_factory.mktemp("tiny-svd"))
    backend = DiffusersSpeech("svd-talks", {**CONFIG, "model_path": str(svd_dir)})
    named = r"backends\.svd-talks\.speech: true, but StableVideoDiffusionPipeline makes no sound"
    with pytest.raises(ConfigError, match=named):
        backend.check()
    with pytest.raises(ConfigError, match=named):
        backend.load()
    with pytest.raises(StageError, match=named) as err:
        backend.run("clip", {"keyframe": keyframe}, _params(), _out(tmp_path, "svd"))
    assert not err.value.retryable
    quiet = DiffusersSpeech("svd", {**CONFIG, "model_path": str(svd_dir), "speech": False})
    assert "StableVideoDiffusionPipeline" in quiet.check() and quiet.features == ()


@needs_gpu
@pytest.mark.media
def test_gpu_speech_clip_in_bfloat16(ltx_dir, keyframe, tmp_path):
    from workers.video.diffusers_speech import DiffusersSpeech

    backend = DiffusersSpeech("gpu-s", {**CONFIG, "model_path": str(ltx_dir), "device": "auto"})
    assert backend.load().pipe.transformer.dtype == torch.bfloat16
    result = backend.run("clip", {"keyframe": keyframe}, _params(), _out(tmp_path, "g"))
    assert result.usage.gpu_seconds > 0 and _wav(result.files["audio"])[2] == 24 * RATE // FPS
    assert result.meta["lines"] == returned.spoken_times(result.meta["lines"], LINES, 24, FPS, "t")
