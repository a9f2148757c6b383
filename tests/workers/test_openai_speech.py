"""The openai-speech dubbing backend against a real local server speaking OpenAI's speech API."""

from __future__ import annotations

import pytest

from tests.support.openai_server import Answer, openai_server, tone_seconds, tone_wav
from tests.workers.test_dubbing import read
from workers.api import ConfigError, Resources, StageError
from workers.dubbing.espeak import EDGE_PAD_SECONDS, SILENT_LINE_SECONDS
from workers.dubbing.openai_speech import OpenAISpeech

KEY = "sk-test-0123456789abcdef"
VOICES = {"ana": "coral", "*": "onyx"}
ESPEAK_VOICE = {"voice": "en-us+f3", "pitch": 65, "rate": 190}


@pytest.fixture
def server():
    with openai_server(api_key=KEY) as s:
        yield s


def backend(server, **config) -> OpenAISpeech:
    return OpenAISpeech(
        "tts",
        {
            "kind": "openai-speech",
            "base_url": server.base_url,
            "model": "test-tts",
            "api_key": KEY,
            "voices": VOICES,
            **config,
        },
    )


def line(text: str, speaker: str = "ana", sample_rate: int = 48000) -> dict:
    return {"text": text, "voice": ESPEAK_VOICE, "sample_rate": sample_rate, "speaker": speaker}


@pytest.mark.media
def test_line_becomes_trimmed_mono_16bit_audio_at_the_sample_rate(server, tmp_path):
    """The server's 24 kHz answer becomes mono s16 at 48 kHz, trimmed to the speech like espeak's."""
    text = "Where were you last night?"
    result = backend(server).run("line", {}, line(text), tmp_path)

    assert result.files == {"audio": tmp_path / "line.wav"}
    shape, samples = read(result.files["audio"])
    assert shape == (1, 2, 48000)
    assert result.meta == {"samples": len(samples), "sample_rate": 48000, "duration": len(samples) / 48000}
    assert result.meta["duration"] == pytest.approx(tone_seconds(text) + 2 * EDGE_PAD_SECONDS, abs=0.01)
    assert max(abs(s) for s in samples) > 10000
    assert (result.usage.tokens_in, result.usage.tokens_out, result.usage.model) == (len(text), 0, "test-tts")
    [req] = server.requests
    assert (req.method, req.path, req.headers["authorization"]) == ("POST", "/v1/audio/speech", f"Bearer {KEY}")
    assert req.body == {"model": "test-tts", "input": text, "voice": "coral", "response_format": "wav", "speed": 1.0}


@pytest.mark.media
def test_any_rate_and_channels_are_converted(server, tmp_path):
    """A stereo 44.1 kHz answer comes out as mono at the asked rate, same length."""
    server.plan(Answer(raw=tone_wav(0.5, rate=44100, channels=2), content_type="audio/wav"))
    result = backend(server).run("line", {}, line("Hello.", sample_rate=24000), tmp_path)
    shape, samples = read(result.files["audio"])
    assert shape == (1, 2, 24000)
    assert len(samples) / 24000 == pytest.approx(0.5 + 2 * EDGE_PAD_SECONDS, abs=0.01)


@pytest.mark.media
def test_voices_follow_the_speaker_with_a_default(server, tmp_path):
    b = backend(server, speed=1.25, instructions="Speak softly, with suspense.")
    b.run("line", {}, line("One.", speaker="ana"), tmp_path / "a")
    b.run("line", {}, line("Two.", speaker="bo"), tmp_path / "b")
    assert [r.body["voice"] for r in server.requests] == ["coral", "onyx"]
    assert all(
        r.body["speed"] == 1.25 and r.body["instructions"] == "Speak softly, with suspense." for r in server.requests
    )


@pytest.mark.media
def test_a_characters_voice_description_joins_the_instructions(server, tmp_path):
    b = backend(server, instructions="Speak softly.")
    params = line("One.", speaker="ana")
    params["voice"] = dict(params.get("voice") or {"voice": "en-us"}, description="a low, warm alto")
    b.run("line", {}, params, tmp_path / "a")
    backend(server).run("line", {}, params, tmp_path / "b")
    assert [r.body["instructions"] for r in server.requests] == [
        "Speak softly.\nVoice: a low, warm alto",
        "Voice: a low, warm alto",
    ]


@pytest.mark.media
def test_hostile_text_reaches_the_server_verbatim(server, tmp_path):
    """The text travels only inside the JSON body, unchanged: no shell, no argv, no escaping."""
    text = 'He said "run"\n$(rm -rf /) `id` \'; DROP TABLE lines; -- \\n 你好 -v'
    result = backend(server).run("line", {}, line(text), tmp_path)
    assert server.requests[0].body["input"] == text
    assert result.usage.tokens_in == len(text)


def test_a_line_with_nothing_to_say_is_silence_without_a_request(server, tmp_path):
    result = backend(server).run("line", {}, line("  \n"), tmp_path)
    assert result.meta["duration"] == SILENT_LINE_SECONDS and result.usage.tokens_in == 0
    assert server.requests == []


def test_an_unmapped_speaker_names_the_setting(server, tmp_path):
    b = backend(server, voices={"ana": "coral"})
    with pytest.raises(StageError) as err:
        b.run("line", {}, line("Hi.", speaker="bo"), tmp_path)
    assert err.value.retryable is False
    assert "no voice for speaker 'bo'" in str(err.value) and "backends.tts.voices" in str(err.value)
    assert server.requests == []


def test_an_answer_that_is_not_wav_is_retryable(server, tmp_path):
    server.plan(Answer(raw=b"<html><body>502 Bad Gateway</body></html>", content_type="text/html"))
    with pytest.raises(StageError) as err:
        backend(server).run("line", {}, line("Hi."), tmp_path)
    assert err.value.retryable is True
    assert "answered text/html that is not a WAV file" in str(err.value) and "502 Bad Gateway" in str(err.value)


def test_rate_limit_is_retryable_after_the_servers_delay(server, tmp_path):
    server.plan(Answer(status=429, headers={"Retry-After": "2"}, error="Rate limit reached"))
    with pytest.raises(StageError) as err:
        backend(server).run("line", {}, line("Hi."), tmp_path)
    assert (err.value.retryable, err.value.retry_after) == (True, 2.0)


def test_timeout_is_retryable(server, tmp_path):
    server.plan(Answer(delay=3))
    with pytest.raises(StageError) as err:
        backend(server, timeout_s=0.5).run("line", {}, line("Hi."), tmp_path)
    assert err.value.retryable is True and "timed out" in str(err.value)


def test_a_wrong_key_is_final_and_never_repeated(server, tmp_path):
    wrong = "sk-wrong-secret-987654"
    with pytest.raises(StageError) as err:
        backend(server, api_key=wrong).run("line", {}, line("Hi."), tmp_path)
    assert err.value.retryable is False and "401" in str(err.value) and wrong not in str(err.value)


def test_attributes_and_estimate(server):
    b = backend(server)
    assert (b.kind, b.stage, b.name, b.ops, b.tools, b.features) == (
        "openai-speech",
        "dubbing",
        "tts",
        ("line",),
        ("ffmpeg",),
        (),
    )
    assert b.resources == Resources(num_cpus=0.25)
    assert b.estimate("line", line("Hello there.")).tokens == len("Hello there.")


def test_version_follows_what_changes_the_voice():
    base = {"kind": "openai-speech", "base_url": "http://a:1/v1", "model": "tts-1", "voices": VOICES}
    v = OpenAISpeech("tts", base).version
    assert OpenAISpeech("tts", base | {"speed": 1.0}).version == v  # the default, spelled out
    for change in ({"model": "tts-1-hd"}, {"voices": {"*": "onyx"}}, {"speed": 1.1}, {"instructions": "Calm."}):
        assert OpenAISpeech("tts", base | change).version != v
    for same in ({"base_url": "https://b/v1"}, {"api_key": "sk-x"}, {"api_key_env": "K"}, {"timeout_s": 5}):
        assert OpenAISpeech("tts", base | same).version == v


@pytest.mark.parametrize(
    "change, error",
    [
        ({"voices": {}}, "backends.tts.voices: Dictionary should have at least 1 item"),
        ({"voices": {"Ana!": "coral"}}, "backends.tts.voices: Value error, 'Ana!' is neither a character id"),
        ({"voices": {"ana": " "}}, "backends.tts.voices: Value error, the voice for 'ana' is empty"),
        ({"speed": 5}, "backends.tts.speed: Input should be less than or equal to 4"),
        ({"base_url": "ftp://x"}, "backends.tts.base_url: Value error, must be an http(s) URL"),
    ],
)
def test_config_errors_name_the_setting(change, error):
    config = {"kind": "openai-speech", "base_url": "http://a:1/v1", "model": "tts-1", "voices": VOICES} | change
    with pytest.raises(ConfigError) as err:
        OpenAISpeech("tts", config)
    assert error in str(err.value)


def test_check(server):
    assert backend(server).check() == f"model test-tts available at {server.base_url}"
    with pytest.raises(StageError, match="does not serve model 'tts-9'.*backends.tts.model"):
        backend(server, model="tts-9").check()
