"""One settings object, read once at the entry point (env FARM_*) and passed down.

Each field ``x`` is read from the environment variable ``FARM_X``; command-line options override.
Secrets are SecretStr: they print as '**********' and are never logged.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, StringConstraints, field_validator

from farm.catalog import DEFAULT_JUDGES, Catalog, UnknownBackend, estimator, resolve, slots
from farm.core.controller import Controller
from farm.core.events import JudgingData
from farm.core.plan import JUDGE, STAGES
from farm.core.script import Slug
from farm.core.spec import MAX_TAKES, Judge, Judges, Series
from farm.core.state import Profile
from farm.errors import SpecError, SpecProblem, UsageError
from farm.policy import Prices, RetryPolicy, Share
from workers.api import ConfigError, require_tool


class StoreSpec(BaseModel):
    """Where artifacts live: a directory path, or s3://bucket/prefix with an endpoint and credentials."""

    model_config = ConfigDict(frozen=True)
    url: str
    endpoint: str = ""
    access_key: SecretStr = SecretStr("")
    secret_key: SecretStr = SecretStr("")
    secure: bool = True
    region: str | None = None


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    store: str = Field("./farm-store", description="a directory, or s3://bucket/prefix")
    studio: Slug = "default"
    cache_namespace: Slug | None = None  # defaults to the studio
    ray_address: str | None = None
    num_cpus: int | None = None  # for a local Ray; None = all cores
    s3_endpoint: str = ""
    s3_access_key: SecretStr = SecretStr("")
    s3_secret_key: SecretStr = SecretStr("")
    s3_secure: bool = True
    s3_region: str | None = None
    backend_script: str = "outline"
    backend_image: str = "pillow"
    backend_video: str = "ffmpeg-motion"
    backend_dubbing: str = "espeak-ng"
    backend_lipsync: str = "mouth"
    backend_assembly: str = "ffmpeg"
    judges: Judges = Field(
        default_factory=lambda: {op: [Judge(name=n) for n in names] for op, names in DEFAULT_JUDGES.items()},  # type: ignore[arg-type]
        description='judged op -> judges, e.g. {"clip": ["frames"], "line": []}; a series or batch may choose others',
    )
    takes: int = Field(3, ge=1, le=MAX_TAKES, description="takes of a judged action unless a series or batch says")
    log_level: str = Field("WARNING", pattern="^(DEBUG|INFO|WARNING|ERROR)$")
    # the batch controller
    metrics_port: int = Field(9108, ge=0, le=65535)
    controller_resources: dict[str, float] = Field(
        default_factory=dict,
        description='custom Ray resources the controller actor needs, e.g. {"farm_controller": 1} '
        "to pin it (and its /metrics) to the node that declares that resource",
    )
    stage_resources: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description='per stage: {"video": {"num_gpus": 1, "accelerator": "A100"}}'
    )
    prices: dict[str, float] = Field(default_factory=lambda: {"per_1k_tokens": 0.0, "per_gpu_hour": 0.0})
    shares: list[dict[str, Any]] = Field(default_factory=list, description='[{"studio", "weight", "floor_gpus"}]')
    caps: dict[str, int] = Field(default_factory=dict, description="concurrency cap per backend name")
    retry: dict[str, float] = Field(default_factory=dict, description="RetryPolicy fields")
    cache_namespaces: dict[str, Slug] = Field(
        default_factory=dict,
        description="the controller's: studio -> the cache namespace its batches use (default: the studio's "
        "own). Studios given the same namespace share finished work",
    )
    admin_token: SecretStr = Field(
        SecretStr(""),
        description="the controller's admin credential (manages studios, sees every batch, stops the controller); "
        "`farm controller start` makes one in the state dir when it is not set",
    )
    token: SecretStr = Field(
        SecretStr(""),
        description="the credential this client sends the controller: a studio's (`farm studio add`) or the admin's",
    )
    webhook_secrets: dict[Slug, Annotated[str, StringConstraints(pattern=r"^[A-Z_][A-Z0-9_]{0,63}$")]] = Field(
        default_factory=dict,
        description="the controller's: studio -> the environment variable holding the secret its webhooks are "
        'signed with, e.g. {"acme": "ACME_WEBHOOK_SECRET"}. A studio not named here gets unsigned webhooks',
    )
    webhook_allow_link_local: bool = Field(
        False,
        description="send webhooks to link-local and cloud metadata addresses too (refused by default)",
    )
    dispatch_ahead: int = Field(
        1,
        ge=0,
        le=16,
        description=(
            "CPU actions the controller hands to Ray per CPU beyond those it can run now: a worker that "
            "finishes starts the next at once instead of waiting for the controller's round trip"
        ),
    )
    backends: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description='configured backends by name: {"qwen": {"kind": "openai-chat", '
        '"base_url": ..., "model": ..., "api_key_env": "QWEN_KEY"}}',
    )
    # reading spec files (farm.specfile, farm.loader)
    spec_max_bytes: int = Field(1 << 20, gt=0, description="the most bytes one spec file may have")
    spec_root: str = Field(
        "",
        description="folders (separated by the path separator, ':' on Linux) whose files any spec may name, "
        "besides the files in the spec's own folder and below it",
    )

    @field_validator("store")
    @classmethod
    def _store(cls, v: str) -> str:
        """A directory, or exactly ``s3://BUCKET[/PREFIX]``. Anything else that looks like a URL
        (``s3:/b``, ``http://host:9000/b``, ``minio://b``, ``s3://``) is refused with the fix, never
        taken for a folder named ``s3:`` or ``http:`` in the current directory."""
        fix = "use s3://BUCKET/PREFIX (with FARM_S3_ENDPOINT=host:port), or a directory"
        if v.startswith("s3://"):
            if not v[len("s3://") :].split("/")[0]:
                raise ValueError(f"{v!r} names no bucket: {fix}")
            return v
        if not v.strip():
            raise ValueError(f"the store is empty: {fix} (default ./farm-store)")
        scheme = re.match(r"([A-Za-z][A-Za-z0-9+.-]*):", v)
        if scheme is None or (os.name == "nt" and len(scheme[1]) == 1):  # a path (or a Windows drive)
            return v
        name, rest = scheme[1].lower(), v[scheme.end() :]
        url = urlsplit(v)
        if "@" in url.netloc:  # never echo user:password@
            v = url._replace(netloc=url.netloc.rpartition("@")[2]).geturl()
        if name == "s3":  # s3:/b, s3:b, S3://b
            bucket = rest.lstrip("/")
            fix = f"use s3://{bucket}" if bucket.split("/")[0] else fix
        elif name in ("http", "https") and url.hostname:  # the endpoint is a setting of its own
            endpoint = f"{url.hostname}:{url.port}" if url.port else url.hostname
            insecure = " FARM_S3_SECURE=false" if name == "http" else ""
            bucket = url.path.strip("/") or "BUCKET/PREFIX"
            fix = f"use s3://{bucket} with FARM_S3_ENDPOINT={endpoint}{insecure}, or a directory"
        elif name == "file" and url.path:
            fix = f"use the directory {url.path}"
        elif not rest.startswith("//"):
            fix += f" (a directory named so: ./{v})"
        raise ValueError(f"{v!r} is not a store: {fix}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides) -> Settings:
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for name, info in cls.model_fields.items():
            raw = env.get(f"FARM_{name.upper()}")
            if raw is None:
                continue
            structured = getattr(info.annotation, "__origin__", None) in (dict, list)
            try:
                values[name] = json.loads(raw) if structured else raw
            except json.JSONDecodeError as exc:  # where and what was expected, never the text: it may hold keys
                raise UsageError(
                    f"FARM_{name.upper()} must be JSON: {exc.msg} at line {exc.lineno} column {exc.colno} "
                    f"(character {exc.pos + 1} of {len(raw)})"
                ) from None
            except (ValueError, RecursionError):  # a number too long to read, nesting too deep
                raise UsageError(
                    f"FARM_{name.upper()} must be JSON that Python can read (a number too long, or nested too deep)"
                ) from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls.model_validate(values)

    @property
    def namespace(self) -> str:
        return self.cache_namespace or self.studio

    def store_spec(self) -> StoreSpec:
        if self.store.startswith("s3://") and not self.s3_endpoint:
            raise UsageError("an s3:// store needs FARM_S3_ENDPOINT (host:port) and credentials")
        return StoreSpec(
            url=self.store,
            endpoint=self.s3_endpoint,
            access_key=self.s3_access_key,
            secret_key=self.s3_secret_key,
            secure=self.s3_secure,
            region=self.s3_region,
        )

    def backend_names(self) -> dict[str, str]:
        """The default backend of each stage (a series or batch spec may choose another)."""
        return {stage: getattr(self, f"backend_{stage}") for stage in STAGES}

    def catalog(self) -> Catalog:
        return Catalog(self.backends)

    def judging(self, catalog: Catalog, series: Series, batch: Any = None) -> JudgingData:
        """Which judges run on an episode of ``series`` (settings', then the series', then ``batch``'s: a
        BatchSpec, or a validated batch payload), how many takes, and whether it is strict."""
        specs: list[Any] = [(series.judges, series.takes)]
        strict, chosen = False, None
        if batch is not None:
            specs.append((batch.judges, batch.takes))
            strict, chosen = batch.strict, batch.backends
        backends = resolve(self.backend_names(), series.backends, chosen)
        return catalog.judging_for(self.judges, self.takes, *specs, strict=strict, backends=backends)


# -- what settings make ----------------------------------------------------------------------------
def profiles_for(settings: Settings, catalog: Catalog | None = None) -> dict[tuple[str, str], Profile]:
    """What one action of each backend holds: its declared resources, with settings' per-stage
    overrides (``FARM_STAGE_RESOURCES``) for the default backends. A batching backend's GPUs are
    shared by the actions of a batch, so each holds its slice (the worker holds the whole)."""
    catalog = catalog or settings.catalog()
    defaults = settings.backend_names()
    out = {}
    for stage, name in catalog.all():
        if stage not in defaults and stage != JUDGE:
            continue  # a configured backend that cannot be built: ``farm backends`` says why
        backend = catalog.load(stage, name)
        declared = backend.resources
        override = (
            settings.stage_resources.get(stage, {})
            if defaults.get(stage) == name or name not in catalog.configs
            else {}
        )
        gpus = override.get("num_gpus", declared.num_gpus)
        out[(stage, name)] = Profile(
            cpus=override.get("num_cpus", declared.num_cpus),
            gpus=gpus / slots(backend),
            accelerator=override.get("accelerator", declared.accelerator),
            load_s=float(override.get("load_seconds", getattr(declared, "load_seconds", 0.0))),
            memory_gb=float(override.get("gpu_memory_gb", getattr(declared, "gpu_memory_gb", 0.0))),
        )
    return out


def controller_for(settings: Settings, catalog: Catalog | None = None) -> Controller:
    """The controller settings describe: the backends' estimates and resources, prices, shares, caps
    and the retry policy. ``farm render``, the batch controller and ``farm report`` all build theirs here."""
    catalog = catalog or settings.catalog()
    return Controller(
        estimator(catalog),
        profiles_for(settings, catalog),
        prices=Prices(**settings.prices),
        shares=[Share(**s) for s in settings.shares],
        caps=settings.caps,
        retry=RetryPolicy(**dict[str, Any](settings.retry)),
    )


def preflight(
    settings: Settings, episodes: Any = (), batch: Any = None, line_of: Callable[[Path, str], int | None] | None = None
) -> None:
    """Fail before anything runs: a configured backend with bad settings, a spec naming a backend
    that does not exist (file and field named), a program a chosen backend needs that is missing.
    ``episodes`` are LoadedEpisodes; ``batch`` a LoadedBatch (whose ``backends`` win over the series');
    ``line_of(file, field)``: where a field is in its file (farm.loader.field_line), for the messages."""
    catalog = settings.catalog()
    broken = catalog.problems()
    if broken:
        raise ConfigError("invalid backend settings (FARM_BACKENDS): " + "; ".join(broken))
    problems: list[SpecProblem] = []
    wanted = [settings.backend_names()]
    sources = [(str(e.series_path), e.series.backends) for e in episodes]
    if batch is not None:
        sources.append((str(batch.path), batch.spec.backends))
    for path, names in sources:
        for stage, name in names.items():
            try:
                catalog.load(stage, name)
            except (UnknownBackend, ConfigError) as exc:
                problems.append(
                    SpecProblem(
                        path,
                        f"backends.{stage}",
                        f"{exc}; configure it in FARM_BACKENDS or choose a known one (farm backends)",
                    )
                )
    judged = [(str(e.series_path), e.series.judges) for e in episodes]
    if batch is not None:
        judged.append((str(batch.path), batch.spec.judges))
    for path, judges in judged:
        problems += [
            SpecProblem(path, field, message, line=line_of(Path(path), field) if line_of else None)
            for field, message in catalog.judge_problems(judges)
        ]
    defaults = catalog.judge_problems(settings.judges)
    if defaults:
        raise ConfigError("invalid judges (FARM_JUDGES): " + "; ".join(f"{f}: {m}" for f, m in defaults))
    if problems:
        raise SpecError(problems)
    for e in episodes:
        wanted.append(
            resolve(settings.backend_names(), e.series.backends, batch.spec.backends if batch is not None else None)
        )
    for names in wanted:
        for tool in catalog.required_tools(names):
            require_tool(tool)
