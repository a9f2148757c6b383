"""The openai-vision and openai-transcribe judges against a real local server speaking OpenAI's chat
(with images and a JSON schema) and transcription (multipart/form-data) APIs."""

from __future__ import annotations

import email.parser
import email.policy
import io
import json

import pytest
from PIL import Image, ImageChops, ImageStat

from tests.support.openai_server import Answer, openai_server, tone_wav
from workers.api import ConfigError, StageError
from workers.image.pillow import BACKEND as IMAGES
from workers.judge.openai_transcribe import OpenAITranscribeJudge, cer, normalise
from workers.judge.openai_vision import OpenAIVisionJudge, pick
from workers.video.motion import BACKEND as VIDEO

KEY = "sk-test-0123456789abcdef"
STYLE = {"description": "flat", "palette": ["#102030", "#405060", "#f0a040"]}
CAST = [
    {"id": "ana", "name": "Ana", "look": {"description": "red coat", "outfit": "#c03030", "hair": None, "skin": None}},
    {"id": "bo", "name": "Bo", "look": {"description": "blue jacket", "outfit": "#3040c0", "hair": None, "skin": None}},
]
W, H, FPS, FRAMES = 180, 320, 12, 12


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    """Two sheet figures and a keyframe with both characters, from the embedded image backend."""
    root = tmp_path_factory.mktemp("pictures")
    inputs = {}
    for character in CAST:
        out = root / character["id"]
        out.mkdir()
        result = IMAGES.run("sheet", {}, {"style": STYLE, "character": character, "seed": 1}, out)
        inputs[f"sheet:{character['id']}"] = result.files["figure"]
    params = {
        "style": STYLE,
        "width": W,
        "height": H,
        "seed": [1, "s01-01"],
        "location": "kitchen",
        "time_of_day": "day",
        "description": "Ana and Bo at the table.",
        "framing": "wide",
        "characters": ["ana", "bo"],
    }
    (root / "kf").mkdir()
    inputs["subject"] = IMAGES.run("keyframe", inputs, params, root / "kf").files["keyframe"]
    return inputs


@pytest.fixture(scope="module")
def clip(pictures, tmp_path_factory):
    """A 12-frame push_in clip of the keyframe, from the embedded video backend."""
    out = tmp_path_factory.mktemp("clip")
    params = {"width": W, "height": H, "fps": FPS, "frames": FRAMES, "camera": "push_in"}
    return VIDEO.run("clip", {"keyframe": pictures["subject"]}, params, out).files["clip"]


@pytest.fixture
def server():
    with openai_server(api_key=KEY, models=("test-vl", "test-whisper")) as s:
        yield s


def vision(server, **config) -> OpenAIVisionJudge:
    return OpenAIVisionJudge(
        "vl", {"kind": "openai-vision", "base_url": server.base_url, "model": "test-vl", "api_key": KEY, **config}
    )


def judge_params(op: str, thresholds: dict | None = None) -> dict:
    expect = {"width": W, "height": H, "characters": ["ana", "bo"]}
    if op == "clip":
        expect |= {"fps": FPS, "frames": FRAMES, "camera": "push_in"}
    target = {"op": op, "stage": "image" if op == "keyframe" else "video", "backend": "x", "take": 1}
    return {"target": target, "thresholds": thresholds or {}, "expect": expect}


def scores(ana=0.9, bo=0.9, no_artifacts=0.9, motion_ok=None) -> str:
    data: dict = {"same_look": {"ana": ana, "bo": bo}, "no_artifacts": no_artifacts}
    if motion_ok is not None:
        data["motion_ok"] = motion_ok
    return json.dumps(data)


def decoded(png: bytes) -> Image.Image:
    return Image.open(io.BytesIO(png)).convert("RGB")


def test_keyframe_passes_and_the_request_carries_the_pictures_and_schema(server, pictures, tmp_path):
    """Sheets and keyframe travel as PNG data URLs, scaled to max_side; the answer schema rides along."""
    server.plan(Answer(content=scores(), usage=(1500, 40), model="test-vl-2025"))
    result = vision(server, max_side=128).run("judge", pictures, judge_params("keyframe"), tmp_path)

    meta = result.meta
    assert (meta["verdict"], meta["score"]) == ("pass", 1.0)
    assert [c["name"] for c in meta["checks"]] == ["same_look:ana", "same_look:bo", "no_artifacts"]
    assert meta["checks"][0] == {
        "name": "same_look:ana",
        "value": 0.9,
        "threshold": 0.5,
        "passed": True,
        "detail": "the model scored 'ana looks like the sheet' 0.90 (at least 0.50 needed)",
    }
    assert json.loads(result.files["verdict"].read_text()) == meta
    assert Image.open(result.files["evidence"]).height == 160
    u = result.usage
    assert (u.tokens_in, u.tokens_out, u.model, u.provider_job_id) == (1500, 40, "test-vl-2025", "chatcmpl-1")

    [req] = server.requests
    assert (req.path, req.headers["authorization"]) == ("/v1/chat/completions", f"Bearer {KEY}")
    assert (req.body["model"], req.body["temperature"]) == ("test-vl", 0.0)
    images = req.images()
    assert [kind for kind, _ in images] == ["image/png"] * 3
    sheet_ana, sheet_bo, frame = (decoded(data) for _, data in images)
    assert frame.size == (72, 128)  # 180x320 scaled to a longer side of 128
    assert max(sheet_ana.size) == 128 and max(sheet_bo.size) == 128
    with Image.open(pictures["subject"]) as original:
        want = original.convert("RGB").resize((72, 128), Image.Resampling.LANCZOS)
    assert max(ImageStat.Stat(ImageChops.difference(frame, want)).mean) < 2  # the keyframe itself
    assert ImageStat.Stat(ImageChops.difference(sheet_ana, sheet_bo)).mean != [0, 0, 0]
    texts = req.texts()
    assert "Character sheet of ana:" in texts and "Character sheet of bo:" in texts
    spec = req.body["response_format"]["json_schema"]
    assert req.body["response_format"]["type"] == "json_schema"
    assert spec["schema"]["required"] == ["same_look", "no_artifacts"]
    assert spec["schema"]["properties"]["same_look"]["required"] == ["ana", "bo"]
    assert json.dumps(spec["schema"], separators=(",", ":")) in texts[0]


def test_keyframe_fails_on_a_low_score_or_a_stricter_threshold(server, pictures, tmp_path):
    server.plan(Answer(content=scores(bo=0.2)), Answer(content=scores(no_artifacts=0.9)))
    b = vision(server)
    low = b.run("judge", pictures, judge_params("keyframe"), tmp_path / "a").meta
    assert low["verdict"] == "fail"
    assert [c["passed"] for c in low["checks"]] == [True, False, True]
    assert low["score"] == pytest.approx((1 + 0.2 / 0.5 + 1) / 3)
    strict = b.run("judge", pictures, judge_params("keyframe", {"min_no_artifacts": 0.95}), tmp_path / "b").meta
    assert strict["verdict"] == "fail"
    assert strict["checks"][2] | {"detail": ""} == {
        "name": "no_artifacts",
        "value": 0.9,
        "threshold": 0.95,
        "passed": False,
        "detail": "",
    }


@pytest.mark.media
def test_clip_is_shown_evenly_spread_frames_and_judged_on_motion(server, pictures, clip, tmp_path):
    """4 of 12 frames (first and last among them) are sent; motion_ok becomes a check."""
    server.plan(Answer(content=scores(motion_ok=0.8)))
    result = vision(server, frames=4).run("judge", pictures | {"subject": clip}, judge_params("clip"), tmp_path)
    assert result.meta["verdict"] == "pass"
    assert [c["name"] for c in result.meta["checks"]][-2:] == ["no_artifacts", "motion_ok"]
    assert pick(FRAMES, 4) == [0, 4, 7, 11]

    [req] = server.requests
    frames = [decoded(data) for _, data in req.images()[2:]]
    assert len(frames) == 4 and all(f.size == (W, H) for f in frames)  # already under max_side
    with Image.open(pictures["subject"]) as original:
        still = original.convert("RGB")
    diff = [max(ImageStat.Stat(ImageChops.difference(f, still)).mean) for f in frames]
    assert diff[0] < 4 < diff[-1]  # push_in: the first frame is the keyframe, the last is zoomed in
    assert diff == sorted(diff)
    assert any("4 frames of the clip" in t and "moves in toward" in t for t in req.texts())
    assert req.body["response_format"]["json_schema"]["schema"]["required"] == [
        "same_look",
        "no_artifacts",
        "motion_ok",
    ]
    strip = Image.open(result.files["evidence"])
    assert (strip.height, strip.width) == (160, 4 * 90 + 3 * 4)


@pytest.mark.media
def test_clip_with_bad_motion_fails(server, pictures, clip, tmp_path):
    server.plan(Answer(content=scores(motion_ok=0.1)))
    meta = vision(server, max_side=128).run("judge", pictures | {"subject": clip}, judge_params("clip"), tmp_path).meta
    assert meta["verdict"] == "fail" and meta["checks"][-1]["passed"] is False
    assert [decoded(data).size for _, data in server.requests[0].images()[2:]] == [(72, 128)] * 4


@pytest.mark.media
@pytest.mark.parametrize("op", ["keyframe", "clip"])
def test_a_subject_that_cannot_be_decoded_fails_without_asking(server, pictures, tmp_path, op):
    broken = tmp_path / "broken"
    broken.write_bytes(b"\x00not a picture at all" * 10)
    meta = vision(server).run("judge", pictures | {"subject": broken}, judge_params(op), tmp_path / "out").meta
    assert meta["verdict"] == "fail" and meta["score"] == 0.0
    assert [(c["name"], c["passed"]) for c in meta["checks"]] == [("decoded", False)]
    assert server.requests == []


@pytest.mark.parametrize(
    "content, error",
    [
        ("The picture looks fine to me.", "is not JSON"),
        (json.dumps({"same_look": {"ana": 0.9}, "no_artifacts": 0.9}), "same_look.bo is missing"),
        (json.dumps({"same_look": {"ana": 0.9, "bo": 1.5}, "no_artifacts": 0.9}), "same_look.bo is 1.5, outside"),
        (json.dumps({"same_look": {"ana": 0.9, "bo": 0.9}, "no_artifacts": "high"}), "no_artifacts is 'high', not"),
        (json.dumps({"same_look": {"ana": 0.9, "bo": 0.9}}), "no_artifacts is missing"),
        ("[0.9, 0.9, 0.9]", "not a JSON object"),
    ],
)
def test_an_answer_that_is_not_the_schema_is_retryable_never_a_verdict(server, pictures, tmp_path, content, error):
    server.plan(Answer(content=content))
    with pytest.raises(StageError) as err:
        vision(server).run("judge", pictures, judge_params("keyframe"), tmp_path)
    assert err.value.retryable is True and error in str(err.value)
    assert not (tmp_path / "verdict.json").exists()


def test_vision_rate_limit_is_retryable_after_the_servers_delay(server, pictures, tmp_path):
    server.plan(Answer(status=429, headers={"Retry-After": "2"}, error="Rate limit reached"))
    with pytest.raises(StageError) as err:
        vision(server).run("judge", pictures, judge_params("keyframe"), tmp_path)
    assert (err.value.retryable, err.value.retry_after) == (True, 2.0)


def test_vision_timeout_is_retryable(server, pictures, tmp_path):
    server.plan(Answer(delay=3))
    with pytest.raises(StageError) as err:
        vision(server, timeout_s=0.5).run("judge", pictures, judge_params("keyframe"), tmp_path)
    assert err.value.retryable is True and "timed out" in str(err.value)


def test_vision_wrong_key_is_final_and_never_repeated(server, pictures, tmp_path):
    wrong = "sk-wrong-secret-987654"
    with pytest.raises(StageError) as err:
        vision(server, api_key=wrong).run("judge", pictures, judge_params("keyframe"), tmp_path)
    assert err.value.retryable is False and "401" in str(err.value) and wrong not in str(err.value)


def test_vision_refuses_ops_it_does_not_judge_and_unknown_thresholds(server, pictures, tmp_path):
    b = vision(server)
    with pytest.raises(StageError, match="judges keyframe and clip, not 'line'"):
        b.run("judge", pictures, judge_params("keyframe") | {"target": {"op": "line"}}, tmp_path)
    with pytest.raises(StageError, match="unknown threshold 'max_cer'") as err:
        b.run("judge", pictures, judge_params("keyframe", {"max_cer": 0.2}), tmp_path)
    assert err.value.retryable is False and server.requests == []


def test_vision_version_follows_what_changes_the_verdict():
    base = {"kind": "openai-vision", "base_url": "http://a:1/v1", "model": "qwen-vl"}
    v = OpenAIVisionJudge("vl", base).version
    assert OpenAIVisionJudge("vl", base | {"frames": 4, "max_side": 512}).version == v  # the defaults
    for change in ({"model": "qwen-vl-72b"}, {"frames": 6}, {"max_side": 768}):
        assert OpenAIVisionJudge("vl", base | change).version != v
    for same in ({"base_url": "https://b/v1"}, {"api_key": "sk-x"}, {"api_key_env": "K"}, {"timeout_s": 5}):
        assert OpenAIVisionJudge("vl", base | same).version == v


def test_vision_config_errors_name_the_setting():
    with pytest.raises(ConfigError, match="backends.vl.frames: Input should be less than or equal to 16"):
        OpenAIVisionJudge("vl", {"kind": "openai-vision", "base_url": "http://a:1/v1", "model": "m", "frames": 99})


# --- openai-transcribe -------------------------------------------------------------------------


def transcriber(server, **config) -> OpenAITranscribeJudge:
    return OpenAITranscribeJudge(
        "stt",
        {"kind": "openai-transcribe", "base_url": server.base_url, "model": "test-whisper", "api_key": KEY, **config},
    )


def line_params(text: str, language: str = "en", cjk: bool = False, thresholds: dict | None = None) -> dict:
    expect = {"text": text, "language": language, "cjk": cjk, "units_per_second": 2.5, "rate": 175}
    return {
        "target": {"op": "line", "stage": "dubbing", "backend": "espeak", "take": 1},
        "thresholds": thresholds or {},
        "expect": expect | {"sample_rate": 48000},
    }


@pytest.fixture
def wav(tmp_path):
    path = tmp_path / "line.wav"
    path.write_bytes(tone_wav(0.5, rate=48000))
    return path


def test_a_line_heard_right_passes_and_the_form_is_real_multipart(server, wav, tmp_path):
    """Case and punctuation do not count; the form carries the WAV's bytes, model, language, json."""
    server.plan(Answer(text="who's there", usage=(30, 4)))
    result = transcriber(server).run("judge", {"subject": wav}, line_params("Who's there?"), tmp_path / "out")

    assert (result.meta["verdict"], result.meta["score"]) == ("pass", 1.0)
    [check] = result.meta["checks"]
    assert (check["name"], check["value"], check["threshold"], check["passed"]) == ("cer", 0.0, 0.35, True)
    assert check["detail"] == 'heard "who\'s there" for "Who\'s there?": 0 edits in 11 characters (spaces included)'
    assert (result.usage.tokens_in, result.usage.tokens_out, result.usage.model) == (30, 4, "test-whisper")

    [req] = server.requests
    assert (req.method, req.path, req.headers["authorization"]) == ("POST", "/v1/audio/transcriptions", f"Bearer {KEY}")
    assert req.headers["content-type"].startswith("multipart/form-data; boundary=")
    form = req.form
    assert form["file"].data == wav.read_bytes()
    assert (form["file"].filename, form["file"].content_type) == ("line.wav", "audio/wav")
    assert {k: v.value for k, v in form.items() if k != "file"} == {
        "model": "test-whisper",
        "language": "en",
        "response_format": "json",
        "temperature": "0",
    }
    # the standard library's MIME parser reads the same form from the same bytes
    mime = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + req.headers["content-type"].encode() + b"\r\n\r\n" + req.raw
    )
    parts = {p.get_param("name", header="content-disposition"): p for p in mime.iter_parts()}
    assert parts["file"].get_payload(decode=True) == wav.read_bytes()
    assert parts["model"].get_content() == "test-whisper" and parts["language"].get_content() == "en"


def test_a_line_heard_wrong_fails_with_its_cer(server, wav, tmp_path):
    server.plan(Answer(text="Who is their"))
    meta = transcriber(server).run("judge", {"subject": wav}, line_params("Who's there?"), tmp_path).meta
    [check] = meta["checks"]
    rate = cer("Who's there?", "Who is their", cjk=False)[0]
    assert rate == pytest.approx(3 / 11)  # "who's there" -> "who is their": 3 edits in 11
    assert (meta["verdict"], check["value"]) == ("pass", pytest.approx(rate, abs=1e-6))
    server.plan(Answer(text="Where were you last night?"))
    meta = transcriber(server).run("judge", {"subject": wav}, line_params("Who's there?"), tmp_path / "b").meta
    [check] = meta["checks"]
    assert meta["verdict"] == "fail" and check["passed"] is False and check["value"] > 0.35
    assert meta["score"] == pytest.approx(max(0.0, 1 - check["value"]), abs=1e-6)


def test_cjk_lines_count_characters_and_the_language_setting_is_honoured(server, wav, tmp_path):
    server.plan(Answer(text="你好 世界"), Answer(text="你好"))
    b = transcriber(server, send_language=False)
    ok = b.run("judge", {"subject": wav}, line_params("你好，世界。", "zh", cjk=True), tmp_path / "a").meta
    half = b.run("judge", {"subject": wav}, line_params("你好，世界。", "zh", cjk=True), tmp_path / "b").meta
    assert (ok["verdict"], ok["checks"][0]["value"]) == ("pass", 0.0)
    assert (half["verdict"], half["checks"][0]["value"]) == ("fail", 0.5)
    assert all("language" not in r.form for r in server.requests)


def test_an_empty_wav_fails_and_a_silent_line_passes_without_a_request(server, tmp_path):
    empty = tmp_path / "empty.wav"
    empty.write_bytes(tone_wav(0.0, rate=48000, pad=0.0))
    meta = transcriber(server).run("judge", {"subject": empty}, line_params("Hello."), tmp_path / "a").meta
    assert meta["verdict"] == "fail" and [c["name"] for c in meta["checks"]] == ["audio"]
    assert "no samples" in meta["checks"][0]["detail"]
    quiet = tmp_path / "quiet.wav"
    quiet.write_bytes(tone_wav(0.0, rate=48000, pad=0.5))
    meta = transcriber(server).run("judge", {"subject": quiet}, line_params(" … "), tmp_path / "b").meta
    assert meta["verdict"] == "pass" and server.requests == []


@pytest.mark.parametrize(
    "answer, retry_after",
    [
        (Answer(status=429, headers={"Retry-After": "2"}, error="Rate limit reached"), 2.0),
        (Answer(status=503, error="overloaded"), None),
        (Answer(raw=b'{"transcript": "hi"}'), None),
    ],
)
def test_transcription_failures_are_retryable(server, wav, tmp_path, answer, retry_after):
    server.plan(answer)
    with pytest.raises(StageError) as err:
        transcriber(server).run("judge", {"subject": wav}, line_params("Hi."), tmp_path)
    assert (err.value.retryable, err.value.retry_after) == (True, retry_after)


def test_transcription_wrong_key_is_final_and_never_repeated(server, wav, tmp_path):
    wrong = "sk-wrong-secret-987654"
    with pytest.raises(StageError) as err:
        transcriber(server, api_key=wrong).run("judge", {"subject": wav}, line_params("Hi."), tmp_path)
    assert err.value.retryable is False and "401" in str(err.value) and wrong not in str(err.value)


def test_transcribe_version_and_check(server):
    base = {"kind": "openai-transcribe", "base_url": "http://a:1/v1", "model": "whisper-1"}
    v = OpenAITranscribeJudge("stt", base).version
    assert OpenAITranscribeJudge("stt", base | {"model": "whisper-2"}).version != v
    assert OpenAITranscribeJudge("stt", base | {"send_language": False}).version != v
    assert OpenAITranscribeJudge("stt", base | {"base_url": "http://b/v1", "api_key": "sk-x"}).version == v
    assert transcriber(server).check() == f"model test-whisper available at {server.base_url}"


def test_normalise_drops_case_punctuation_and_extra_space():
    assert normalise("  Who's   THERE?!  ", cjk=False) == "who s there"
    assert normalise("你好，世界。 Ａ", cjk=True) == "你好世界a"
