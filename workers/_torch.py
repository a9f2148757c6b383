"""What the diffusers backends share: device and dtype, a per-process pipeline cache, GPU timing,
out-of-memory splitting, seeds, sizes and settings.

torch and diffusers are imported inside functions only: the controller and ``farm backends`` list
and version these backends on machines without them (the version depends on settings alone), and
only the GPU actor that runs them needs ``pip install 'farm[diffusers]'``.

Why these choices:

- Pipelines are cached per process, keyed by what makes them different (path, dtype, device and
  anything loaded into them): a GPU actor builds its backend once and keeps the weights resident,
  and two backends configured with the same model in one process share one copy.
- GPU time is measured with CUDA events around the pipeline call, i.e. time the device was busy
  for us, not wall time spent waiting for the actor; on a CPU it is 0 and the process CPU time
  (``time.process_time``, all threads) is reported instead.
- A batch that runs out of GPU memory is split in halves and each half retried, down to single
  items; a single item that still does not fit fails retryably (another worker, or this one after
  other work has freed memory, may manage). The CUDA cache is emptied after every OOM so the retry
  sees the memory the failed attempt had reserved.
"""

from __future__ import annotations

import gc
import hashlib
import inspect
import json
import threading
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import Field, field_validator

from workers.api import Resources, StageError, ToolMissing, config_version
from workers.configured import BackendSettings, parse

INSTALL_HINT = "pip install 'farm[diffusers]'"

T = TypeVar("T")
R = TypeVar("R")


def import_torch(what: str):
    """``torch``, or ToolMissing naming the extra to install."""
    try:
        import torch
    except ImportError as exc:
        raise ToolMissing(f"{what}: torch is not installed ({exc}): {INSTALL_HINT}") from None
    return torch


def import_diffusers(what: str):
    """``diffusers`` (and torch), or ToolMissing naming the extra to install."""
    import_torch(what)
    try:
        import diffusers
    except ImportError as exc:
        raise ToolMissing(f"{what}: diffusers is not installed ({exc}): {INSTALL_HINT}") from None
    return diffusers


# --- settings ---------------------------------------------------------------------------------

STORE_PREFIX = "store:"


class TorchSettings(BackendSettings):
    """Settings every diffusers backend has. ``model_path`` is a local directory written by
    ``save_pretrained`` (a ``model_index.json`` and one folder per component), provisioned onto the
    GPU nodes' disks beforehand, or ``store:NAME``: a model pushed to the artifact store with
    ``farm models push``, which each worker fetches once into its model cache. Nothing is ever
    downloaded from a model hub."""

    model_path: Path
    steps: int = Field(30, ge=1, le=500)
    device: Literal["auto", "cuda", "cpu"] = "auto"
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = "auto"
    max_batch: int = Field(4, ge=1, le=64)
    # how long a GPU worker holding fewer than max_batch actions waits for more to share the call
    batch_wait_s: float = Field(0.05, ge=0, le=10)
    # The longest side generated; the result is resized to the requested size afterwards. Models
    # draw well only near the resolution they were trained at (SD 1.5: 512, SDXL: 1024, SVD: 1024).
    max_side: int = Field(1024, ge=16, le=8192)

    # set by the farm on a worker that fetched "store:NAME" into a local folder: the version and the
    # model label stay those of the stored model, not of the folder it landed in
    model_ref: str | None = None

    @field_validator("model_path")
    @classmethod
    def _model_dir(cls, value: Path) -> Path:
        # The folder is on the GPU nodes, not necessarily where the settings are read (the
        # controller plans with them on a CPU head): it is checked where the model is loaded or
        # checked (require_model_dir), not here.
        if str(value).startswith(STORE_PREFIX):  # in the artifact store: each worker fetches it (farm.store.models)
            return value
        return value.expanduser()


def require_model_dir(model_path: Path, what: str) -> Path:
    """``model_path`` if it is a folder written by save_pretrained, else a StageError saying so."""
    path = Path(model_path)
    if str(model_path).startswith(STORE_PREFIX):
        raise StageError(f"{what}: {model_path} must be fetched from the store before it is loaded (farm.store.models)")
    if not path.is_dir():
        raise StageError(
            f"{what}: model_path {path} is not a directory on this machine: give a local directory "
            "written by save_pretrained, or push it to the store (farm models push) and use store:NAME"
        )
    if not (path / "model_index.json").is_file():
        raise StageError(
            f"{what}: model_path {path} has no model_index.json: give the directory a diffusers "
            "pipeline was saved to with save_pretrained"
        )
    return path


# --- device, dtype, pipelines -----------------------------------------------------------------


def pick_device(choice: str, what: str) -> str:
    """ "cuda" when asked for or (``auto``) available, else "cpu"."""
    torch = import_torch(what)
    if choice == "cpu":
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    if choice == "cuda":
        raise StageError(
            f"{what}: device is 'cuda' but torch sees no CUDA GPU on this machine "
            f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'})"
        )
    return "cpu"


def pick_dtype(choice: str, device: str, what: str):
    """float16 on a GPU, float32 on a CPU (where half precision is slow or unsupported), unless set."""
    torch = import_torch(what)
    if choice == "auto":
        return torch.float16 if device == "cuda" else torch.float32
    return getattr(torch, choice)


_PIPELINES: dict[tuple, Any] = {}
_PIPELINES_LOCK = threading.Lock()


def cached_pipeline(key: tuple, load: Callable[[], T]) -> T:
    """``load()`` once per process for ``key``; concurrent callers wait for the first load."""
    with _PIPELINES_LOCK:
        if key not in _PIPELINES:
            _PIPELINES[key] = load()
        return _PIPELINES[key]


def forget_pipelines() -> None:
    """Drop every cached pipeline (tests; an actor that is being reconfigured)."""
    with _PIPELINES_LOCK:
        _PIPELINES.clear()
    free_memory()


def from_pretrained(loader: Any, model_path: Path, dtype: Any, device: str, what: str) -> Any:
    """``loader.from_pretrained`` from local files only, moved to ``device``, progress bars off."""
    require_model_dir(model_path, what)
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.disable_progress_bar()  # "Loading pipeline components": noise in a worker's log
    try:
        with warnings.catch_warnings():
            # diffusers >= 0.36 renamed torch_dtype to dtype; torch_dtype works in every version.
            warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
            pipe = loader.from_pretrained(str(model_path), torch_dtype=dtype, local_files_only=True)
    except (OSError, ValueError, TypeError, ImportError) as exc:
        raise StageError(f"{what}: cannot load a pipeline from {model_path}: {exc}") from exc
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def model_name(model_path: str | Path) -> str:
    text = str(model_path)
    return text[len(STORE_PREFIX) :] if text.startswith(STORE_PREFIX) else Path(model_path).name


def identity(settings: TorchSettings) -> dict[str, Any]:
    """The settings as their version sees them: a fetched model is known by its store name."""
    dump = settings.model_dump(mode="json", exclude={"model_ref"})
    if settings.model_ref:
        dump["model_path"] = settings.model_ref
    return dump


def accepted(fn: Callable[..., Any], kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The subset of ``kwargs`` that ``fn`` (a pipeline: its ``__call__``) names. ``**kwargs`` in a
    pipeline's signature only catch deprecated arguments, so only named parameters count. A wrapper
    around a pipeline is seen through when it sets ``__wrapped__``, as functools.wraps does."""
    params = inspect.signature(fn).parameters
    return {k: v for k, v in kwargs.items() if k in params and params[k].kind is not inspect.Parameter.VAR_KEYWORD}


def pipeline_class(pipe: Any) -> str:
    """The class name of ``pipe``, seen through wrappers that set ``__wrapped__``."""
    return type(inspect.unwrap(pipe)).__name__


def takes(fn: Callable[..., Any], name: str) -> bool:
    return bool(accepted(fn, {name: None}))


# --- seeds and sizes --------------------------------------------------------------------------


def seed_of(*parts: Any) -> int:
    """A 63-bit seed from JSON-able ``parts`` (an action's seed parameter and what it draws)."""
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).digest()
    return int.from_bytes(digest[:8], "big") & ((1 << 63) - 1)


def generators(seeds: Sequence[int], device: str, what: str) -> list:
    """One torch.Generator per item: each image's noise depends on its own seed only, so an item
    comes out the same alone or in any batch."""
    torch = import_torch(what)
    return [torch.Generator(device=device).manual_seed(s) for s in seeds]


def size_multiple(pipe: Any) -> int:
    """What generation sides must be a multiple of: the VAE's downscale times the denoiser's patch
    (transformers) or one UNet level (2), and at least 8 (Stable Diffusion checks that)."""
    vae = getattr(pipe, "vae_scale_factor_spatial", None) or getattr(pipe, "vae_scale_factor", None) or 8
    patch = 2
    transformer = getattr(pipe, "transformer", None)
    if transformer is not None:
        size = getattr(transformer.config, "patch_size", None)
        patch = int(size[-1] if isinstance(size, (list, tuple)) else size or 2)
    return max(8, int(vae) * patch)


def generation_size(width: int, height: int, max_side: int, multiple: int) -> tuple[int, int]:
    """The requested aspect with the longest side at most ``max_side``, each side rounded to
    ``multiple``; ``fit`` then resizes and crops the result to exactly the requested size."""
    scale = min(1.0, max_side / max(width, height))
    return tuple(max(multiple, round(side * scale / multiple) * multiple) for side in (width, height))  # type: ignore[return-value]


def fit(image, width: int, height: int):
    """``image`` scaled to cover width x height (aspect kept) and centre-cropped to exactly that."""
    from PIL import Image

    scale = max(width / image.width, height / image.height)
    w, h = max(width, round(image.width * scale)), max(height, round(image.height * scale))
    if (w, h) != image.size:
        image = image.resize((w, h), Image.Resampling.LANCZOS)
    left, top = (w - width) // 2, (h - height) // 2
    return image.crop((left, top, left + width, top + height))


# --- timing and out-of-memory -----------------------------------------------------------------


class DeviceTimer:
    """Measures one call: ``gpu_seconds`` (CUDA events, device busy time; 0 on CPU) and
    ``cpu_seconds`` (this process's CPU time, all threads)."""

    def __init__(self, device: str):
        self.device = device
        self.gpu_seconds = 0.0
        self.cpu_seconds = 0.0

    def __enter__(self) -> DeviceTimer:
        self._cpu0 = time.process_time()
        self._events = None
        if self.device == "cuda":
            torch = import_torch("timer")
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            self._events = (start, end)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._events is not None:
            start, end = self._events
            end.record()
            end.synchronize()
            self.gpu_seconds = start.elapsed_time(end) / 1000.0
        self.cpu_seconds = time.process_time() - self._cpu0


def is_oom(exc: BaseException) -> bool:
    try:
        import torch

        if isinstance(exc, torch.cuda.OutOfMemoryError):
            return True
    except ImportError:
        pass
    return isinstance(exc, (RuntimeError, MemoryError)) and "out of memory" in str(exc).lower()


def free_memory() -> None:
    gc.collect()
    try:
        import torch
    except ImportError:
        return
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_one(backend: Any, op: str, inputs: Mapping[str, Path], params: Mapping[str, Any], out_dir: Path):
    """A batching backend's ``run``: its ``run_batch`` of one action, the error raised."""
    from workers.api import BatchItem

    [result] = backend.run_batch(op, [BatchItem(inputs=inputs, params=params, out_dir=Path(out_dir))])
    if isinstance(result, StageError):
        raise result
    return result


class TorchBackend:
    """What the diffusers backends share: the parsed settings, the version, resources, batching
    and model name they give, ``what`` for messages, ``run`` as a batch of one, and ``load``: the
    pipeline built once per process (shared by backends of the same model, ``cached_pipeline``).

    A subclass sets ``kind`` and ``stage`` and gives ``_load(device, dtype)``; ``_load_key`` adds to
    what tells models apart, ``_accept`` checks a loaded pipeline before it is kept."""

    kind: str
    stage: str

    def __init__(
        self,
        name: str,
        config: Mapping[str, Any],
        settings_type: type[TorchSettings],
        kind_version: str,
        affects: Sequence[str],
    ):
        self.name = name
        self.settings: Any = parse(settings_type, name, config)
        s = self.settings
        self.version = config_version(kind_version, identity(s), tuple(affects))
        self.resources = s.resources_or(Resources(num_cpus=1, num_gpus=1))
        self.max_batch, self.batch_wait_s = s.max_batch, s.batch_wait_s
        self.model = model_name(s.model_ref or s.model_path)
        self._loaded: Any = None
        self._load_lock = threading.Lock()

    @property
    def what(self) -> str:
        return f"{self.stage} ({self.name})"

    def run(self, op: str, inputs: Mapping[str, Path], params: Mapping[str, Any], out_dir: Path):
        return run_one(self, op, inputs, params, out_dir)

    def load(self) -> Any:
        """Load (once per process, shared by backends with the same model) and return the pipeline(s)."""
        with self._load_lock:
            if self._loaded is None:
                s, what = self.settings, self.what
                device = pick_device(s.device, what)
                dtype = pick_dtype(s.dtype, device, what)
                key = (self.kind, str(s.model_path.resolve()), str(dtype), device, *self._load_key())
                loaded = cached_pipeline(key, lambda: self._load(device, dtype))
                self._accept(loaded)
                self._loaded = loaded
            return self._loaded

    def _load(self, device: str, dtype: Any) -> Any:
        raise NotImplementedError

    def _load_key(self) -> tuple:
        return ()

    def _accept(self, loaded: Any) -> None:
        pass


def split_on_oom(items: list[T], call: Callable[[list[T]], list[R]], what: str) -> list[R | StageError]:
    """``call(items)``, one result per item. Out of memory: free the cache and retry each half;
    one item that still does not fit is a retryable StageError. Any other failure of the call is
    a StageError for each of its items (a StageError raised by ``call`` is kept as it is)."""
    failure: StageError | None = None
    try:
        results: list[R | StageError] = list(call(items))
        if len(results) != len(items):
            raise StageError(f"{what}: {len(results)} results for {len(items)} items")
        return results
    except StageError as exc:
        failure = exc
    except Exception as exc:
        if not is_oom(exc):
            failure = StageError(f"{what}: {type(exc).__name__}: {exc}")
        elif len(items) == 1:
            failure = StageError(f"{what}: out of GPU memory even for one item ({exc})", retryable=True)
    # Outside the except block: the exception's traceback no longer pins the failed call's tensors.
    free_memory()
    if failure is not None:
        return [failure] * len(items)
    half = (len(items) + 1) // 2
    return split_on_oom(items[:half], call, what) + split_on_oom(items[half:], call, what)


# --- check ------------------------------------------------------------------------------------


def describe_model_dir(model_path: Path, what: str) -> tuple[str, list[str]]:
    """Read ``model_index.json`` and every component's JSON config (no weights, no GPU); return
    the pipeline class and its components. Raises StageError naming the broken file."""
    require_model_dir(model_path, what)
    diffusers = import_diffusers(what)
    index_path = Path(model_path) / "model_index.json"
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise StageError(f"{what}: cannot read {index_path}: {exc}") from exc
    cls = index.get("_class_name")
    if not cls or not hasattr(diffusers, cls):
        raise StageError(
            f"{what}: {index_path} names pipeline {cls!r}, which diffusers "
            f"{diffusers.__version__} does not have (upgrade diffusers?)"
        )
    components = []
    for name, spec in sorted(index.items()):
        if name.startswith("_") or not isinstance(spec, list) or spec[0] is None:
            continue
        folder = Path(model_path) / name
        if not folder.is_dir():
            raise StageError(f"{what}: component {name} ({spec[1]}) is missing: no folder {folder}")
        for config in sorted(folder.glob("*.json")):
            try:
                json.loads(config.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise StageError(f"{what}: cannot read {config}: {exc}") from exc
        components.append(name)
    return cls, components
