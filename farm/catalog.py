"""Which backend does each stage's work: names -> backend objects under workers/.

Two kinds of backend:

- *embedded* ones (``outline``, ``pillow``, ``ffmpeg-motion``, ``espeak-ng``, ``ffmpeg``, ``noop``)
  need no settings and are always there;
- *configured* ones are named in settings (``FARM_BACKENDS``, JSON: name -> {"kind": ..., ...}) and
  built from their kind's class with that mapping: an LLM server, a diffusers model, ComfyUI, or a
  studio's own class (``"kind": "package.module:Class"``, importable on every worker).

A stage's backend is chosen by name: the batch spec's ``backends`` first, then the series', then
settings (``FARM_BACKEND_<STAGE>``). Its version (code version + a digest of the settings that change
its output) enters every action key; URLs and keys never do.

Backends are imported lazily, where the work runs, so the planner and the CLI start fast and a
machine only needs the libraries of the backends it actually runs. A configured backend is built
once per process and configuration (a GPU actor loads its model once).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import threading
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any

from farm.core.events import JudgingData
from farm.core.plan import JUDGE, STAGES, Action, BackendChoice
from farm.core.spec import Judge, Judges, Takes
from farm.core.takes import JUDGED_OPS
from farm.errors import UsageError
from workers.api import Backend, ConfigError

# (stage, name) -> "module:attribute"
REGISTRY: dict[tuple[str, str], str] = {
    ("script", "outline"): "workers.script.outline:BACKEND",
    ("image", "pillow"): "workers.image.pillow:BACKEND",
    ("video", "ffmpeg-motion"): "workers.video.motion:BACKEND",
    ("dubbing", "espeak-ng"): "workers.dubbing.espeak:BACKEND",
    ("assembly", "ffmpeg"): "workers.assembly.ffmpeg:BACKEND",
    # judges (workers/judge/): measurements of keyframes and clips, dubbed lines, the finished episode
    ("lipsync", "mouth"): "workers.lipsync.mouth:BACKEND",
    ("judge", "frames"): "workers.judge.frames:BACKEND",
    ("judge", "sync"): "workers.judge.sync:BACKEND",
    ("judge", "audio"): "workers.judge.audio:BACKEND",
    ("judge", "delivery"): "workers.judge.delivery:BACKEND",
    # no work at all: for measuring the farm's own overhead and testing scheduling
    **{(stage, "noop"): f"workers.noop:BACKENDS.{stage}" for stage in (*STAGES, JUDGE)},
}
# The judges of each judged op unless settings (FARM_JUDGES), a series or a batch say otherwise.
# the stages whose outputs each op's default judges read: a clip is compared with the character sheets
READ_STAGES = {
    "keyframe": ("image",),
    "clip": ("video", "image"),
    "line": ("dubbing",),
    "lipsync": ("lipsync", "image", "video"),  # the mouths are where the keyframe's faces went
    "episode": ("assembly",),
}
DEFAULT_JUDGES: dict[str, list[str]] = {
    "keyframe": ["frames"],
    "clip": ["frames"],
    "line": ["audio"],
    "lipsync": ["sync"],
    "episode": ["delivery"],
}

# kind -> "module:class" of configured backends
KINDS: dict[str, str] = {
    "openai-chat": "workers.script.llm:OpenAIChatScript",
    "openai-speech": "workers.dubbing.openai_speech:OpenAISpeech",
    "diffusers-image": "workers.image.diffusers:DiffusersImages",
    "diffusers-video": "workers.video.diffusers_i2v:DiffusersVideo",
    "diffusers-speech": "workers.video.diffusers_speech:DiffusersSpeech",
    "comfyui": "workers.comfyui:ComfyUI",
    "openai-vision": "workers.judge.openai_vision:OpenAIVisionJudge",
    "openai-transcribe": "workers.judge.openai_transcribe:OpenAITranscribeJudge",
    "replicate": "workers.jobs.replicate:Replicate",
}


# the stage each kind serves (None: the settings say, as a ComfyUI workflow may draw or animate)
KIND_STAGES: dict[str, str | None] = {
    "openai-chat": "script",
    "openai-speech": "dubbing",
    "diffusers-image": "image",
    "diffusers-video": "video",
    "diffusers-speech": "video",
    "comfyui": None,
    "openai-vision": JUDGE,
    "openai-transcribe": JUDGE,
    "replicate": None,
}


class UnknownBackend(UsageError):
    """A spec or setting names a backend this farm does not have."""


def _import(target: str) -> Any:
    module, _, path = target.partition(":")
    attr, _, item = path.partition(".")
    found = getattr(importlib.import_module(module), attr)
    return found[item] if item else found


_built: dict[tuple[str, str], Backend] = {}
_built_lock = threading.Lock()


def _digest(config: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()


def kind_class(name: str, kind: Any) -> type:
    """The class of a backend kind: one of KINDS, or a studio's own given as "package.module:Class"."""
    if isinstance(kind, str) and ":" in kind:
        try:
            return _import(kind)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"backends.{name}.kind: cannot import {kind!r}: {exc}") from None
    if kind not in KINDS:
        raise ConfigError(
            f"backends.{name}.kind: {kind!r} is not a backend kind (known: {', '.join(KINDS)}, "
            "or your own as package.module:Class)"
        )
    return _import(KINDS[kind])


def build(name: str, config: Mapping[str, Any]) -> Backend:
    """The configured backend ``name``, built once per process for this exact configuration."""
    cache_key = (name, _digest(config))
    with _built_lock:
        found = _built.get(cache_key)
    if found is not None:
        return found
    backend = kind_class(name, config.get("kind"))(name, config)
    with _built_lock:
        return _built.setdefault(cache_key, backend)


class Catalog:
    """Every backend this farm can use: the embedded ones and those configured in settings.

    ``configs`` is settings' ``backends`` mapping; it travels to the workers with each action
    (through Ray's object store, never the journal), so workers need no settings of their own.
    """

    def __init__(self, configs: Mapping[str, Mapping[str, Any]] | None = None):
        self.configs = {name: dict(c) for name, c in (configs or {}).items()}
        clash = [n for n in self.configs if any(n == name for _, name in REGISTRY)]
        if clash:
            raise ConfigError(f"backends.{clash[0]}: the name is taken by an embedded backend; choose another")

    def load(self, stage: str, name: str) -> Backend:
        if name in self.configs:
            serves = self.load_stage(name)
            if serves != stage:
                raise UnknownBackend(f"backend {name!r} does {serves}, not {stage}")
            return build(name, self.configs[name])
        try:
            return _import(REGISTRY[(stage, name)])
        except KeyError:
            raise UnknownBackend(f"no {stage} backend named {name!r} (known: {', '.join(self.names(stage))})") from None

    def names(self, stage: str) -> list[str]:
        """Names usable for ``stage`` (configured ones by their declared or kind's stage)."""
        out = [n for s, n in REGISTRY if s == stage]
        for name in self.configs:
            try:
                if self.load_stage(name) == stage:
                    out.append(name)
            except ConfigError:
                continue
        return out

    def load_stage(self, name: str) -> str:
        """The stage a configured backend serves, read from its settings (nothing is imported)."""
        config = self.configs[name]
        kind = config.get("kind")
        if kind in KIND_STAGES:
            stage = KIND_STAGES[kind] or config.get("stage")
        else:  # a studio's own class says which stage it serves
            stage = config.get("stage") or getattr(kind_class(name, kind), "stage", None)
        if stage not in (*STAGES, JUDGE):
            raise ConfigError(f"backends.{name}.stage: give the stage it serves ({', '.join((*STAGES, JUDGE))})")
        return stage

    def outlives(self, name: str) -> bool:
        """Does backend ``name`` do paid or model work (an API or model server, a model it loads)? Its
        actions then run on workers that outlive the controller, so that a restart neither pays for a
        call again nor loads a model again. The farm's own kinds do; a studio's own class says so with
        ``"outlives": true`` in its settings or an ``outlives`` attribute; embedded backends do not."""
        config = self.configs.get(name)
        if config is None:
            return False
        if "outlives" in config:
            return bool(config["outlives"])
        kind = config.get("kind")
        return kind in KINDS or bool(getattr(kind_class(name, kind), "outlives", False))

    def all(self) -> list[tuple[str, str]]:
        """(stage, name) of every backend: embedded first, then configured."""
        out = [(s, n) for s, n in REGISTRY]
        for name in self.configs:
            try:
                out.append((self.load_stage(name), name))
            except ConfigError:
                out.append(("?", name))
        return out

    def choose(self, names: Mapping[str, str]) -> dict[str, BackendChoice]:
        """Stage -> the chosen backend's name, version (enters every action key) and features."""
        out = {}
        for stage, name in names.items():
            backend = self.load(stage, name)
            out[stage] = BackendChoice(name, backend.version, tuple(getattr(backend, "features", ())))
        return out

    def choose_for(self, defaults: Mapping[str, str], *overrides: Mapping[Any, str] | None) -> dict[str, BackendChoice]:
        """``choose`` for ``resolve(defaults, *overrides)``: settings' defaults, then a series', then
        a batch's choices."""
        return self.choose(resolve(defaults, *overrides))

    def judge_problems(self, judges: Judges) -> list[tuple[str, str]]:
        """(field, what is wrong) of every judge a spec (or settings) names: an unknown judge, one that
        cannot judge the op it is named for, a threshold it does not have or out of its range."""
        problems: list[tuple[str, str]] = []
        for op, entries in judges.items():
            for i, entry in enumerate(entries):
                where = f"judges.{op}[{i}]"
                try:
                    judge = self.load(JUDGE, entry.name)
                except (UnknownBackend, ConfigError) as exc:
                    problems.append((where, f"{exc}; configure it in FARM_BACKENDS or choose a known one"))
                    continue
                can = tuple(getattr(judge, "judges", ()))
                if op not in can:
                    problems.append((where, f"judge {entry.name!r} judges {', '.join(can) or 'nothing'}, not {op}"))
                known: Mapping[str, tuple[float, float, float]] = getattr(judge, "thresholds", {})
                for name, value in entry.thresholds.items():
                    if name not in known:
                        problems.append(
                            (
                                f"{where}.thresholds.{name}",
                                f"judge {entry.name!r} has no threshold {name!r} "
                                f"(it has: {', '.join(sorted(known)) or 'none'})",
                            )
                        )
                    elif not known[name][1] <= value <= known[name][2]:
                        _, lo, hi = known[name]
                        problems.append(
                            (f"{where}.thresholds.{name}", f"is {value:g}; it must be from {lo:g} to {hi:g}")
                        )
        return problems

    def judging_for(
        self,
        defaults: Judges,
        takes: int,
        *specs: tuple[Judges, Takes | None] | None,
        strict: bool = False,
        backends: Mapping[str, str] | None = None,
    ) -> JudgingData:
        """Which judges run on which op (settings' ``defaults``, then each spec's choice per op: a
        series', then a batch's), each with its version and threshold overrides; the takes allowed
        (the last spec that says, else ``takes``); ``strict``: the batch's. ``backends`` (stage ->
        name): the episode's; an op whose backend, or the backend of what its judges compare it with (a
        clip's sheets), says its output is no media (``judged = False``, the noop backends) keeps no
        default judges, only those a spec names."""
        chosen: dict[str, list[Judge]] = {}
        for op in JUDGED_OPS:
            names = [(stage, (backends or {}).get(stage)) for stage in READ_STAGES[op]]
            if all(name is None or getattr(self.load(stage, name), "judged", True) for stage, name in names):
                chosen[op] = list(defaults.get(op, []))  # type: ignore[call-overload]
        for spec in specs:
            if spec is None:
                continue
            judges, spec_takes = spec
            chosen.update({op: list(entries) for op, entries in judges.items()})
            if spec_takes is not None:
                takes = spec_takes.max
        resolved = {
            op: [[j.name, self.load(JUDGE, j.name).version, dict(j.thresholds)] for j in entries]
            for op, entries in chosen.items()
            if entries
        }
        return JudgingData(judges=resolved, takes=takes, strict=strict)

    def required_tools(self, names: Mapping[str, str]) -> list[str]:
        """Programs the chosen backends need on PATH (checked before anything runs)."""
        tools: list[str] = []
        for stage, name in names.items():
            for tool in getattr(self.load(stage, name), "tools", ()):
                if tool not in tools:
                    tools.append(tool)
        return tools

    def problems(self) -> list[str]:
        """Every configured backend that cannot be built, with why (settings are checked up front)."""
        out = []
        for name, config in self.configs.items():
            try:
                build(name, config)
            except ConfigError as exc:
                out.append(str(exc))
            except ImportError as exc:
                out.append(
                    f"backends.{name}: kind {config.get('kind')!r} needs a package that is not installed "
                    f"({exc.name or exc}); install it (pip install 'farm[diffusers]' for diffusers kinds)"
                )
        return out

    def secrets(self) -> list[str]:
        """Inline secrets in the configuration, so that logs can mask them: keys, and the userinfo
        (``user:password``, and the password alone) of any URL in it (``http://u:p@vllm:8000/v1``)."""
        out = [str(c[k]) for c in self.configs.values() for k in c if k.endswith("api_key") and c[k]]
        for config in self.configs.values():
            for value in config.values():
                if isinstance(value, str) and "@" in value and "://" in value:
                    userinfo = urllib.parse.urlsplit(value).netloc.rpartition("@")[0]
                    if userinfo:
                        out += [userinfo, userinfo.partition(":")[2]]
        return [s for s in out if s]


def resolve(defaults: Mapping[str, str], *overrides: Mapping[Any, str] | None) -> dict[str, str]:
    """Stage -> backend name: ``defaults`` (settings) overridden by each mapping in turn
    (the series', then the batch's)."""
    names = dict(defaults)
    for over in overrides:
        names.update(over or {})
    return names


# -- what the scheduler knows of the backends ------------------------------------------------------
def slots(backend: Any) -> int:
    """How many actions one worker of ``backend`` takes at once (a batching backend's ``max_batch``)."""
    return max(1, int(getattr(backend, "max_batch", 1))) if hasattr(backend, "run_batch") else 1


def estimator(catalog: Catalog) -> Callable[[Action], tuple[float, int, float]]:
    """The controller's estimate function: (seconds, tokens, GPU-seconds) of one action."""

    def estimate(action: Action) -> tuple[float, int, float]:
        est = catalog.load(action.stage, action.backend).estimate(action.op, action.params)
        return est.seconds, est.tokens, est.gpu_seconds

    return estimate
