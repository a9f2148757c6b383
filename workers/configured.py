"""What every configured backend's settings share, and how they are parsed.

A configured backend is named in settings (``FARM_BACKENDS``, JSON)::

    {"qwen": {"kind": "openai-chat", "base_url": "http://vllm:8000/v1", "model": "Qwen2.5-72B",
              "api_key_env": "VLLM_KEY", "resources": {"num_cpus": 0.25},
              "estimate": {"seconds": 30, "tokens": 6000}}}

Each kind subclasses ``BackendSettings`` with its own fields and parses its mapping with
``parse``; every mistake is reported at once as ``backends.<name>.<field>: <what to do>``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from workers.api import ConfigError, Estimate, Resources


class ResourceSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    num_cpus: float = Field(1.0, ge=0)
    num_gpus: float = Field(0.0, ge=0)
    accelerator: str | None = None
    memory_mb: int = Field(0, ge=0)
    load_seconds: float = Field(0.0, ge=0, le=3600)
    gpu_memory_gb: float = Field(0.0, ge=0, le=1024)


class EstimateSettings(BaseModel):
    """What one action is expected to cost before it runs (the scheduler's plan and budgets)."""

    model_config = ConfigDict(extra="forbid")
    seconds: float = Field(10.0, gt=0)
    tokens: int = Field(0, ge=0)
    gpu_seconds: float = Field(0.0, ge=0)


class BackendSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: str
    resources: ResourceSettings | None = None  # None: the kind's default
    estimate: EstimateSettings | None = None
    timeout_s: float = Field(120.0, gt=0, le=86_400)
    api_key: SecretStr | None = None
    api_key_env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")

    def resources_or(self, default: Resources) -> Resources:
        r = self.resources
        return (
            default
            if r is None
            else Resources(
                num_cpus=r.num_cpus,
                num_gpus=r.num_gpus,
                accelerator=r.accelerator,
                memory_mb=r.memory_mb,
                load_seconds=r.load_seconds,
                gpu_memory_gb=r.gpu_memory_gb,
            )
        )

    def estimate_or(self, default: Estimate) -> Estimate:
        e = self.estimate
        return default if e is None else Estimate(seconds=e.seconds, tokens=e.tokens, gpu_seconds=e.gpu_seconds)


S = TypeVar("S", bound=BackendSettings)


def parse(model: type[S], name: str, config: Mapping[str, Any]) -> S:
    """Validate ``config`` as ``model``; raise ConfigError naming every bad field of backend ``name``."""
    try:
        return model.model_validate(dict(config))
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"])
            problems.append(f"backends.{name}.{where}: {err['msg']}")
        raise ConfigError("; ".join(problems)) from None
