"""Settings of the ``replicate`` kind: which model on which server, and which farm values go into
which of the model's input fields."""

from __future__ import annotations

import json
import math
import re
from typing import Any, Literal

from pydantic import ConfigDict, Field, field_validator

from workers._http import http_url
from workers.api import ConfigError
from workers.configured import BackendSettings, parse

KIND, KIND_VERSION = "replicate", "1"
STAGES = ("lipsync",)  # what a model behind this API may do for the farm, so far

MAX_SPEAKER_TRACKS = 4
# farm value -> what it is: files are uploaded (POST /v1/files) and given as their URL, numbers as they are
FILE_INPUTS = ("video", "audio", *(f"speaker{i}" for i in range(1, MAX_SPEAKER_TRACKS + 1)))
NUMBER_INPUTS = ("fps", "frames", "width", "height", "seed")
FARM_INPUTS = (*FILE_INPUTS, *NUMBER_INPUTS)
DEFAULT_INPUTS = {"video": "video", "audio": "audio"}

MAX_FIXED = 32  # fixed input values
MAX_FIXED_JSON = 8192  # bytes of their JSON
MAX_TEXT = 1000  # characters of one fixed text value
FIELD = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
MODEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}/[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
VERSION = re.compile(rf"({MODEL.pattern}):([A-Za-z0-9]{{8,128}})")

Scalar = str | bool | int | float | None


class ReplicateSettings(BackendSettings):
    """What a ``replicate`` backend is configured with (``FARM_BACKENDS``)::

    {"lips": {"kind": "replicate", "stage": "lipsync", "model": "acme/lipsync",
              "api_key_env": "REPLICATE_API_TOKEN",
              "inputs": {"video": "face_video", "audio": "driving_audio", "fps": "fps"},
              "input": {"guidance_scale": 1.5}}}
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: Literal["replicate"] = "replicate"
    stage: str = Field(description="the stage the model does: lipsync")
    base_url: str = Field("https://api.replicate.com/v1", description="the API root; a gateway speaking it")
    model: str | None = Field(None, description="owner/name: runs the model's latest version")
    version: str | None = Field(None, description="owner/name:version_id: runs exactly that version")
    inputs: dict[str, str] = Field(
        default_factory=lambda: dict(DEFAULT_INPUTS), description="farm value -> the model's input field"
    )
    input: dict[str, Scalar] = Field(default_factory=dict, description="fixed values of other input fields")
    poll_interval_s: float = Field(2.0, gt=0, le=60)
    timeout_s: float = Field(3600.0, gt=0, le=86_400)  # the longest one run waits on a prediction
    request_timeout_s: float = Field(60.0, gt=0, le=600)
    max_output_mb: int = Field(2048, ge=1, le=16_384)  # the returned clip is fetched up to this size

    @field_validator("stage")
    @classmethod
    def _stage(cls, value: str) -> str:
        if value not in STAGES:
            raise ValueError(f"is {value!r}; a replicate backend does {', '.join(STAGES)} (set stage to {STAGES[0]!r})")
        return value

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        return http_url(value, "the API root, such as https://api.replicate.com/v1")

    @field_validator("model")
    @classmethod
    def _model(cls, value: str | None) -> str | None:
        if value is not None and not MODEL.fullmatch(value):
            raise ValueError(f"is {value!r}; give the model as owner/name, such as acme/lipsync")
        return value

    @field_validator("version")
    @classmethod
    def _version(cls, value: str | None) -> str | None:
        if value is not None and not VERSION.fullmatch(value):
            raise ValueError(
                f"is {value!r}; give the version as owner/name:version_id, as the model's API page shows it"
            )
        return value

    @field_validator("inputs")
    @classmethod
    def _inputs(cls, value: dict[str, str]) -> dict[str, str]:
        unknown = [k for k in value if k not in FARM_INPUTS]
        if unknown:
            raise ValueError(
                f"{', '.join(map(repr, unknown))} is not a farm value; map any of {', '.join(FARM_INPUTS)}"
            )
        bad = [f for f in value.values() if not isinstance(f, str) or not FIELD.fullmatch(f)]
        if bad:
            raise ValueError(f"{bad[0]!r} is not an input field name (letters, digits, _; at most 64)")
        if "video" not in value:
            raise ValueError('map "video" to the model\'s video input field')
        if not any(k == "audio" or k.startswith("speaker") for k in value):
            raise ValueError('map "audio" (every line) or "speaker1".. (one track per speaker) to an input field')
        fields = list(value.values())
        twice = sorted({f for f in fields if fields.count(f) > 1})
        if twice:
            raise ValueError(f"field {twice[0]!r} is given two farm values; map each field once")
        return value

    @field_validator("input")
    @classmethod
    def _fixed(cls, value: dict[str, Scalar]) -> dict[str, Scalar]:
        if len(value) > MAX_FIXED:
            raise ValueError(f"has {len(value)} values; at most {MAX_FIXED}")
        for key, item in value.items():
            if not FIELD.fullmatch(key):
                raise ValueError(f"{key!r} is not an input field name (letters, digits, _; at most 64)")
            if isinstance(item, float) and not math.isfinite(item):
                raise ValueError(f"{key}: {item} is not a JSON number")
            if isinstance(item, str) and len(item) > MAX_TEXT:
                raise ValueError(f"{key}: the text is {len(item)} characters; at most {MAX_TEXT}")
        if len(json.dumps(value)) > MAX_FIXED_JSON:
            raise ValueError(f"is over {MAX_FIXED_JSON} bytes of JSON; keep fixed values small")
        return value

    @property
    def model_name(self) -> str:
        """owner/name of the model run."""
        return self.model or self.version.partition(":")[0]  # type: ignore[union-attr]

    @property
    def version_id(self) -> str | None:
        """The pinned version's id, if one is pinned."""
        return self.version.partition(":")[2] if self.version else None

    @property
    def target(self) -> str:
        """What runs, as Replicate writes it: owner/name or owner/name:version_id."""
        return self.version or self.model or ""


def settings(name: str, config: Any) -> ReplicateSettings:
    """``config`` parsed and checked as a whole; ConfigError naming each field at fault."""
    s = parse(ReplicateSettings, name, config)
    where = f"backends.{name}"
    if (s.model is None) == (s.version is None):
        raise ConfigError(
            f"{where}.model, {where}.version: give exactly one: model (owner/name, its latest version) "
            "or version (owner/name:version_id, exactly that one)"
        )
    clash = sorted(set(s.inputs.values()) & set(s.input))
    if clash:
        raise ConfigError(
            f"{where}.input.{clash[0]}: the field is also filled from inputs (a farm value); drop it from one"
        )
    return s


def fixed_json(value: Any) -> str:
    """Canonical JSON (sorted keys, no spaces) of a prediction's input: equal inputs, equal text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
