"""The openai-chat script backend against a real local server speaking OpenAI's chat API."""

from __future__ import annotations

import json

import pytest

from farm.core.plan import BackendChoice, EpisodeJob, script_params
from farm.core.script import Script
from farm.core.spec import Episode, Series
from tests.conftest import SMALL_SERIES
from tests.support.openai_server import Answer, openai_server
from workers.api import ConfigError, Estimate, Resources, StageError
from workers.script.llm import OpenAIChatScript
from workers.script.outline import write_script

KEY = "sk-test-0123456789abcdef"
OUTLINE = [
    {
        "beat": "Ana hears a knock",
        "location": "kitchen",
        "time_of_day": "night",
        "lines": [{"speaker": "ana", "text": "Who's there?"}, {"speaker": "bo", "text": "It's me, open up."}],
    },
    {"beat": "They talk in the hallway", "location": "hallway", "lines": [{"speaker": "ana", "text": "你好。"}]},
]


def params(seed: int = 7) -> dict:
    episode = Episode.model_validate(
        {"series": "s.yaml", "number": 2, "title": "The Knock", "target_seconds": 40, "seed": seed, "outline": OUTLINE}
    )
    job = EpisodeJob("s", "s", Series.model_validate(SMALL_SERIES), episode, {"script": BackendChoice("llm", "1")})
    return script_params(job)


GOOD = write_script(params())


def answer_with(**changes) -> str:
    """GOOD's JSON with its first dialogue shot (scenes[0].shots[1]) changed."""
    data = GOOD.model_dump(mode="json")
    data["scenes"][0]["shots"][1].update(changes)
    return json.dumps(data, ensure_ascii=False)


@pytest.fixture
def server():
    with openai_server(api_key=KEY) as s:
        yield s


def backend(server, **config) -> OpenAIChatScript:
    return OpenAIChatScript(
        "llm", {"kind": "openai-chat", "base_url": server.base_url, "model": "test-chat", "api_key": KEY, **config}
    )


def test_valid_script_on_first_try(server, tmp_path):
    """One request carrying the schema, model, seed and key; usage and the script come back as given."""
    server.plan(Answer(content=GOOD.model_dump_json(), usage=(1200, 800), model="test-chat-2025-01-01"))
    b = backend(server, temperature=0.3, max_tokens=4000)
    result = b.run("script", {}, params(), tmp_path)

    assert Script.model_validate_json(result.files["script"].read_text(encoding="utf-8")) == GOOD
    assert "你好。" in result.files["script"].read_text(encoding="utf-8")  # UTF-8, not \u escapes
    assert result.meta == {
        "scenes": 2,
        "shots": 5,
        "seconds": round(sum(s.duration for s in GOOD.shots()), 2),
        "requests": 1,
        "repairs": 0,
    }
    u = result.usage
    assert (u.tokens_in, u.tokens_out, u.model, u.provider_job_id) == (1200, 800, "test-chat-2025-01-01", "chatcmpl-1")
    [req] = server.requests
    assert (req.method, req.path, req.headers["authorization"]) == ("POST", "/v1/chat/completions", f"Bearer {KEY}")
    body = req.body
    assert (body["model"], body["seed"], body["temperature"], body["max_tokens"]) == ("test-chat", 7, 0.3, 4000)
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "script", "schema": Script.model_json_schema(), "strict": False},
    }
    system, user = body["messages"]
    assert (system["role"], user["role"]) == ("system", "user")
    assert "0.5 and 30 seconds" in system["content"] and '"speaker"' in system["content"]
    assert json.loads(user["content"].split("\n", 1)[1]) == params()
    assert KEY not in repr(result) and KEY not in result.files["script"].read_text(encoding="utf-8")


def test_title_and_language_come_from_the_episode_and_series(server, tmp_path):
    """The model cannot rename the episode or change its language; a ```json fence is tolerated."""
    data = GOOD.model_dump(mode="json") | {"title": "Something else", "language": "fr"}
    server.plan(Answer(content="```json\n" + json.dumps(data) + "\n```"))
    result = backend(server).run("script", {}, params(), tmp_path)
    script = Script.model_validate_json(result.files["script"].read_text(encoding="utf-8"))
    assert (script.title, script.language, script.scenes) == ("The Knock", "en", GOOD.scenes)


def test_invalid_answers_are_repaired_with_their_exact_errors(server, tmp_path):
    """Schema errors, then an unknown speaker, each go back to the model; usage sums all three requests."""
    too_long = answer_with(duration=45)
    stranger = answer_with(lines=[{"speaker": "zed", "text": "Who's there?"}])
    server.plan(
        Answer(content=too_long, usage=(1000, 700)),
        Answer(content=stranger, usage=(1800, 650)),
        Answer(content=GOOD.model_dump_json(), usage=(1900, 640)),
    )
    result = backend(server).run("script", {}, params(), tmp_path)

    assert result.meta["requests"] == 3 and result.meta["repairs"] == 2
    u = result.usage
    assert (u.tokens_in, u.tokens_out, u.provider_job_id) == (4700, 1990, "chatcmpl-3")
    first, second, third = (r.body["messages"] for r in server.requests)
    assert second[:2] == first and third[:2] == first
    assert second[2] == {"role": "assistant", "content": too_long}
    assert "- scenes[0].shots[1].duration: Input should be less than or equal to 30 (got 45)" in second[3]["content"]
    assert third[2] == {"role": "assistant", "content": stranger}  # only the latest answer is shown
    assert (
        "- scenes[0].shots[1].lines[0].speaker: 'zed' is not a character of the series (known: ana, bo)"
        in third[3]["content"]
    )
    assert all(r.body["seed"] == 7 for r in server.requests)


@pytest.mark.parametrize(
    "answer, error",
    [
        (Answer(content="Sure! Here is the script: {"), "the answer is not valid JSON"),
        (Answer(content=GOOD.model_dump_json()[:200], finish_reason="length"), "cut off at the token limit (8192)"),
        (Answer(content=""), "the answer was empty"),
    ],
)
def test_unusable_answers_are_repaired(server, tmp_path, answer, error):
    server.plan(answer, Answer(content=GOOD.model_dump_json()))
    result = backend(server).run("script", {}, params(), tmp_path)
    assert result.meta["repairs"] == 1
    assert error in server.requests[1].body["messages"][3]["content"]


def test_repairs_run_out_into_a_final_error(server, tmp_path):
    """After repair_attempts repairs the last problems are reported, and retrying would not help."""
    server.plan(Answer(content="{}"), Answer(content=answer_with(duration=0.1)))
    with pytest.raises(StageError) as err:
        backend(server, repair_attempts=1).run("script", {}, params(), tmp_path)
    assert err.value.retryable is False
    assert "still invalid after 1 repair(s)" in str(err.value)
    assert "scenes[0].shots[1].duration: Input should be greater than or equal to 0.5" in str(err.value)
    assert len(server.requests) == 2


def test_rate_limit_is_retryable_after_the_servers_delay(server, tmp_path):
    server.plan(Answer(status=429, headers={"Retry-After": "2"}, error="Rate limit reached"))
    with pytest.raises(StageError) as err:
        backend(server).run("script", {}, params(), tmp_path)
    assert (err.value.retryable, err.value.retry_after) == (True, 2.0)
    assert "429" in str(err.value) and len(server.requests) == 1


def test_server_error_is_retryable(server, tmp_path):
    server.plan(Answer(status=503, error="overloaded"))
    with pytest.raises(StageError) as err:
        backend(server).run("script", {}, params(), tmp_path)
    assert err.value.retryable is True and "503" in str(err.value)


def test_timeout_is_retryable(server, tmp_path):
    server.plan(Answer(content=GOOD.model_dump_json(), delay=3))
    with pytest.raises(StageError) as err:
        backend(server, timeout_s=0.5).run("script", {}, params(), tmp_path)
    assert err.value.retryable is True and "timed out after 0.5s" in str(err.value)


@pytest.mark.parametrize(
    "raw, error",
    [
        (b'{"id": "chatcmpl-1", "choices": [', "not JSON"),
        (b'{"object": "list", "data": []}', "not a chat completion"),
    ],
)
def test_a_broken_answer_is_retryable(server, tmp_path, raw, error):
    server.plan(Answer(raw=raw))
    with pytest.raises(StageError) as err:
        backend(server).run("script", {}, params(), tmp_path)
    assert err.value.retryable is True and error in str(err.value)


def test_a_refusal_is_final(server, tmp_path):
    refusal = {
        "id": "c",
        "model": "m",
        "choices": [
            {
                "index": 0,
                "finish_reason": "stop",
                "message": {"role": "assistant", "content": None, "refusal": "I can't help with that."},
            }
        ],
    }
    server.plan(Answer(raw=json.dumps(refusal).encode()))
    with pytest.raises(StageError) as err:
        backend(server).run("script", {}, params(), tmp_path)
    assert err.value.retryable is False and "refused: I can't help with that." in str(err.value)


def test_a_wrong_key_is_final_and_never_repeated(server, tmp_path):
    """The server quotes the refused key; the error says 401 without it."""
    wrong = "sk-wrong-secret-987654"
    with pytest.raises(StageError) as err:
        backend(server, api_key=wrong).run("script", {}, params(), tmp_path)
    assert err.value.retryable is False
    assert "401" in str(err.value) and "Incorrect API key provided: [api key]" in str(err.value)
    assert wrong not in str(err.value) and wrong not in repr(err.value.args)
    assert server.requests[0].headers["authorization"] == f"Bearer {wrong}"


def test_the_key_can_come_from_the_environment(server, tmp_path, monkeypatch):
    monkeypatch.setenv("FARM_TEST_LLM_KEY", KEY + "\n")  # as a mounted secret file often has it
    server.plan(Answer(content=GOOD.model_dump_json()))
    b = OpenAIChatScript(
        "llm",
        {"kind": "openai-chat", "base_url": server.base_url, "model": "test-chat", "api_key_env": "FARM_TEST_LLM_KEY"},
    )
    b.run("script", {}, params(), tmp_path)
    assert server.requests[0].headers["authorization"] == f"Bearer {KEY}"
    monkeypatch.delenv("FARM_TEST_LLM_KEY")
    with pytest.raises(StageError, match="FARM_TEST_LLM_KEY .* is not set"):
        b.run("script", {}, params(), tmp_path)


def test_a_key_that_cannot_be_a_header_is_refused_without_showing_it(server, tmp_path):
    with pytest.raises(StageError) as err:
        backend(server, api_key="sk-one\nX-Evil: 1").run("script", {}, params(), tmp_path)
    assert err.value.retryable is False and "sk-one" not in str(err.value)
    assert "backends.llm.api_key" in str(err.value) and server.requests == []


def test_attributes_and_estimate(server):
    b = backend(server)
    assert (b.kind, b.stage, b.name, b.ops, b.tools, b.features) == (
        "openai-chat",
        "script",
        "llm",
        ("script",),
        (),
        (),
    )
    assert b.resources == Resources(num_cpus=0.25)
    assert b.estimate("script", params()).tokens > 4000
    tuned = backend(server, resources={"num_cpus": 2}, estimate={"seconds": 9, "tokens": 5000})
    assert tuned.resources == Resources(num_cpus=2)
    assert tuned.estimate("script", params()) == Estimate(seconds=9, tokens=5000)


def test_version_follows_what_changes_the_script():
    base = {"kind": "openai-chat", "base_url": "http://a:1/v1", "model": "m"}
    v = OpenAIChatScript("llm", base).version
    assert v.startswith("1+")
    assert OpenAIChatScript("llm", base | {"temperature": 0.7}).version == v  # the default, spelled out
    for change in ({"model": "m2"}, {"temperature": 0.2}):
        assert OpenAIChatScript("llm", base | change).version != v
    for same in (
        {"base_url": "https://b/v1"},
        {"api_key": "sk-x"},
        {"api_key_env": "K"},
        {"timeout_s": 5},
        {"repair_attempts": 4},
        {"resources": {"num_cpus": 3}},
    ):
        assert OpenAIChatScript("llm", base | same).version == v


@pytest.mark.parametrize(
    "change, error",
    [
        ({"base_url": None}, "backends.llm.base_url: Field required"),
        ({"base_url": "vllm:8000/v1"}, "backends.llm.base_url: Value error, must be an http(s) URL"),
        ({"model": ""}, "backends.llm.model: String should have at least 1 character"),
        ({"temperature": 3}, "backends.llm.temperature: Input should be less than or equal to 2"),
        ({"repair_attempts": 6}, "backends.llm.repair_attempts: Input should be less than or equal to 5"),
        ({"temprature": 0.5}, "backends.llm.temprature: Extra inputs are not permitted"),
        ({"api_key_env": "MY KEY"}, "backends.llm.api_key_env: String should match pattern"),
    ],
)
def test_config_errors_name_the_setting(change, error):
    config = {"kind": "openai-chat", "base_url": "http://a:1/v1", "model": "m"} | change
    with pytest.raises(ConfigError) as err:
        OpenAIChatScript("llm", {k: v for k, v in config.items() if v is not None})
    assert error in str(err.value)


def test_check_lists_the_model(server):
    assert backend(server).check() == f"model test-chat available at {server.base_url}"
    assert server.requests[0].path == "/v1/models"
    assert server.requests[0].headers["authorization"] == f"Bearer {KEY}"


def test_check_fails_for_a_model_not_served(server):
    with pytest.raises(StageError) as err:
        backend(server, model="gpt-9").check()
    assert "does not serve model 'gpt-9' (it serves: test-chat, test-tts)" in str(err.value)
    assert "backends.llm.model" in str(err.value)


def test_check_fails_when_the_server_is_down():
    with openai_server() as gone:
        url = gone.base_url
    b = OpenAIChatScript("llm", {"kind": "openai-chat", "base_url": url, "model": "test-chat", "timeout_s": 2})
    with pytest.raises(StageError) as err:
        b.check()
    assert err.value.retryable is True and "cannot reach 127.0.0.1" in str(err.value)
