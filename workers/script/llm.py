"""Script stage through an OpenAI-compatible chat API (OpenAI, vLLM, llama.cpp, Ollama, ...).

The model is asked for the Script as JSON with ``response_format`` set to the Script's JSON
schema, but the answer is not trusted: servers differ in how closely they hold a model to a
schema (``strict`` stays off, since pydantic's schema has defaults that OpenAI's strict subset
forbids), and no schema knows which speakers the series has. So the answer is validated exactly as
a hand-written script is, and every failure goes back to the model with the exact errors, asking for
a corrected whole script, up to ``repair_attempts`` times. A repair shows the model only its latest
answer: earlier ones were wrong in ways already reported and would only lengthen the prompt.

``title`` and ``language`` are facts the farm knows, so they are set from the episode and series
rather than repaired. The prompt is part of this code: change it and bump KIND_VERSION, since the
version (and with it every script action's key) must change when the output may.

The OpenAI-compatible plumbing shared with ``openai-speech`` (settings, Bearer key, ``check``) is
in ``workers._openai``.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError

from farm.core.script import Script, check_against
from workers._openai import OpenAIClient, OpenAISettings
from workers.api import Estimate, Resources, StageError, StageResult, Usage, config_version
from workers.configured import parse

KIND, KIND_VERSION = "openai-chat", "1"
_MAX_LISTED_ERRORS = 25  # a repair message lists at most this many problems, then counts the rest


class ChatSettings(OpenAISettings):
    temperature: float = Field(0.7, ge=0, le=2)
    max_tokens: int = Field(8192, ge=256, le=1_000_000)
    repair_attempts: int = Field(2, ge=0, le=5)


_SYSTEM = """\
You write the script of one episode of a vertical (9:16) short drama series.
Answer with a single JSON object that matches the JSON schema below, and nothing else: no prose, \
no code fences.
Rules:
- "title" is the episode's title and "language" the series' language code, both given to you. \
Write all dialogue in that language.
- Every line is spoken by one of the series' characters, named by its "id" in "speaker"; \
"characters" (who is in frame) lists character ids too. Use no other names as ids.
- Scene and shot ids are unique lowercase slugs such as "s01" and "s01-02".
- Every shot's "duration" is between 0.5 and 30 seconds. A shot with lines is stretched to fit \
them (speech runs at about units_per_second words, or CJK characters, per second), so its \
duration is a minimum.
- The whole episode (shots, stretched to their lines) should last close to the episode's \
target_seconds.
- Follow the episode outline's beats in order. Where a beat has lines, use them verbatim, in order, \
spoken by the same characters; you may add lines only where a beat has none.
JSON schema of the answer:
"""


@functools.cache
def _schema() -> dict[str, Any]:
    return Script.model_json_schema()


def _messages(params: Mapping[str, Any]) -> list[dict[str, str]]:
    schema = json.dumps(_schema(), ensure_ascii=False, separators=(",", ":"))
    episode = json.dumps(params, ensure_ascii=False, indent=1)
    return [
        {"role": "system", "content": _SYSTEM + schema},
        {"role": "user", "content": "Write the script of this episode.\n" + episode},
    ]


def _where(loc: tuple[Any, ...]) -> str:
    """pydantic's ("scenes", 0, "shots") as check_against writes it: scenes[0].shots."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(the whole object)"


def _unfence(content: str) -> str:
    """Drop a ```json ... ``` fence around the answer: a common habit, not worth a repair round."""
    text = content.strip()
    if text.startswith("```") and text.endswith("```") and "\n" in text:
        return text[text.index("\n") + 1 : -3].strip()
    return text


def validate_answer(
    content: str | None, finish_reason: Any, characters: set[str], max_tokens: int
) -> tuple[Script | None, list[str]]:
    """The Script in a chat answer, or the problems to send back for repair."""
    if finish_reason == "length":
        return None, [
            f"the answer was cut off at the token limit ({max_tokens}) before the JSON ended; "
            "write a shorter script (fewer or shorter descriptions) that fits"
        ]
    if not content or not content.strip():
        return None, ["the answer was empty; answer with the script as a JSON object"]
    try:
        data = json.loads(_unfence(content))
    except ValueError as exc:
        return None, [f"the answer is not valid JSON: {exc}"]
    try:
        script = Script.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            got = err.get("input")
            shown = "" if isinstance(got, (dict, list)) or err["type"] == "missing" else f" (got {got!r:.80})"
            problems.append(f"{_where(err['loc'])}: {err['msg']}{shown}")
        return None, problems
    return script, [f"{where}: {msg}" for where, msg in check_against(script, characters)]


def _repair_request(problems: list[str]) -> str:
    listed = problems[:_MAX_LISTED_ERRORS]
    more = len(problems) - len(listed)
    return (
        "Your script cannot be used as it is:\n"
        + "\n".join(f"- {p}" for p in listed)
        + (f"\n- ... and {more} more problems of the same kinds" if more > 0 else "")
        + "\nAnswer again with the complete corrected script as one JSON object, and nothing else."
    )


class OpenAIChatScript:
    """Script stage: episode outline -> Script JSON, written by a chat model (see module docstring).

    op "script": params as ``farm.core.plan.script_params`` builds them. Writes ``script.json`` (output
    "script"); meta: scenes, shots, seconds, requests (chat requests made), repairs (of them,
    repairs). Usage: prompt and completion tokens summed over all requests, the model the server
    named, and the last response's id.

    Raises StageError: retryable for 429 (with ``retry_after``), 5xx, timeouts and answers that
    are not a chat completion; not retryable for other 4xx (a wrong key, an unknown model), a
    refusal, or a script still invalid after ``repair_attempts`` repairs (the message names the
    last problems).

    Example config::

        {"kind": "openai-chat", "base_url": "http://vllm:8000/v1", "model": "Qwen2.5-72B-Instruct",
         "api_key_env": "VLLM_KEY", "temperature": 0.7}
    """

    kind, stage = KIND, "script"
    ops = ("script",)
    tools: tuple[str, ...] = ()
    features: tuple[str, ...] = ()

    def __init__(self, name: str, config: Mapping[str, Any]):
        self.name = name
        self.settings = parse(ChatSettings, name, config)
        self.version = config_version(KIND_VERSION, self.settings.model_dump(mode="json"), ("model", "temperature"))
        self.resources = self.settings.resources_or(Resources(num_cpus=0.25))
        self.client = OpenAIClient(name, self.settings, config, what=f"script ({name})")

    def estimate(self, op: str, params: Mapping[str, Any]) -> Estimate:
        prompt = sum(len(m["content"]) for m in _messages(params)) // 3  # ~3 characters a token
        return self.settings.estimate_or(Estimate(seconds=60.0, tokens=prompt + min(self.settings.max_tokens, 4000)))

    def check(self) -> str:
        return self.client.check_model()

    def run(self, op: str, inputs: Mapping[str, Path], params: Mapping[str, Any], out_dir: Path) -> StageResult:
        if op not in self.ops:
            raise StageError(f"{self.client.what}: unknown op {op!r}; {self.kind} does {self.ops}")
        series, episode = params["series"], params["episode"]
        characters = {c["id"] for c in series["characters"]}
        s = self.settings
        opening = _messages(params)
        messages = opening
        usage = Usage(model=s.model)
        requests = 0
        while True:
            body = {
                "model": s.model,
                "messages": messages,
                "temperature": s.temperature,
                "max_tokens": s.max_tokens,
                "seed": episode["seed"],
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "script", "schema": _schema(), "strict": False},
                },
            }
            content, finish = self._complete(body, usage)
            requests += 1
            script, problems = validate_answer(content, finish, characters, s.max_tokens)
            if not problems:
                break
            if requests > s.repair_attempts:
                raise StageError(
                    f"{self.client.what}: the model's script is still invalid after "
                    f"{s.repair_attempts} repair(s): " + "; ".join(problems[:10]),
                    retryable=False,
                )
            messages = [
                *opening,
                {"role": "assistant", "content": content or ""},
                {"role": "user", "content": _repair_request(problems)},
            ]
        assert script is not None
        script = script.model_copy(update={"title": episode["title"], "language": series["language"]})
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / "script.json"
        path.write_text(json.dumps(script.model_dump(mode="json"), ensure_ascii=False, indent=1), encoding="utf-8")
        shots = script.shots()
        return StageResult(
            files={"script": path},
            meta={
                "scenes": len(script.scenes),
                "shots": len(shots),
                "seconds": round(sum(x.duration for x in shots), 2),
                "requests": requests,
                "repairs": requests - 1,
            },
            usage=usage,
        )

    def _complete(self, body: dict[str, Any], usage: Usage) -> tuple[str | None, Any]:
        """One chat request: the answer's content and finish_reason; adds its usage to ``usage``."""
        choice, data, what = self.client.chat(body)
        message = choice["message"]
        counted = data.get("usage") or {}
        usage.tokens_in += int(counted.get("prompt_tokens") or 0)
        usage.tokens_out += int(counted.get("completion_tokens") or 0)
        usage.model = str(data.get("model") or usage.model)
        usage.provider_job_id = str(data.get("id") or "")
        if message.get("refusal"):
            raise StageError(f"{what}: the model refused: {str(message['refusal'])[:300]}", retryable=False)
        return message.get("content"), choice.get("finish_reason")
