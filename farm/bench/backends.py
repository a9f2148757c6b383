"""``farm bench backends``: shots per minute of the diffusers image and video backends, with
batching off (one shot per pipeline call) and on (``--batch`` shots per call), in the same run.

It drives the backends through ``run_batch``, the call a GPU worker makes, on this machine's device
(a GPU when torch sees one, else the CPU). Each phase is warmed up first by one untimed call of its
own size (weights loaded, kernels chosen for that batch shape). While a measured phase runs, NVML is
sampled every 0.1 s for the GPU's utilisation (where a GPU and pynvml are present).

Without ``--image-model`` / ``--video-model`` it builds tiny random pipelines of the same classes
(farm.bench.tiny_pipelines): a smoke run of the real code path that says nothing about a real model's
speed. With real checkpoints on a GPU it measures what a studio gets per GPU-minute.
"""

from __future__ import annotations

import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from PIL import Image

from farm.observe.nvml import open_nvml
from workers.api import BatchItem, StageError


class _Sampler:
    """GPU utilisation sampled in a thread while a phase runs (None without NVML)."""

    def __init__(self):
        self.read = open_nvml()
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            readings = self.read()
            if readings:
                self.samples.append(statistics.fmean(r.utilization for r in readings))

    def __enter__(self):
        if self.read:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self.read:
            self._thread.join()

    @property
    def mean(self) -> float | None:
        return round(statistics.fmean(self.samples), 3) if self.samples else None


def keyframe_params(n: int, width: int, height: int) -> dict[str, Any]:
    return {
        "style": {"description": "soft watercolour, warm evening light", "palette": ["#1d2b3a", "#e0a060", "#f4e8d0"]},
        "width": width,
        "height": height,
        "seed": [1, f"s01-{n:02d}"],
        "location": "a rooftop garden",
        "time_of_day": "dusk",
        "description": f"shot {n}: two friends talk by the railing",
        "framing": "wide",
        "characters": [],
    }


def _items(root: Path, inputs: dict[str, Path], params_of):
    """A maker of ``n`` actions (params ``params_of(i)``), each with a fresh folder, for one phase."""

    def make(n: int, tag: str) -> list[BatchItem]:
        out = []
        for i in range(n):
            folder = root / f"{tag}-{i}"
            folder.mkdir(parents=True)
            out.append(BatchItem(inputs, params_of(i), folder))
        return out

    return make


def _phase(backend, op: str, items: list[BatchItem], per_call: int) -> dict[str, Any]:
    started = time.perf_counter()
    failed = 0
    with _Sampler() as sampler:
        for i in range(0, len(items), per_call):
            results = backend.run_batch(op, items[i : i + per_call])
            failed += sum(isinstance(r, StageError) for r in results)
    wall = time.perf_counter() - started
    if failed:
        raise StageError(f"{failed} of {len(items)} {op} actions failed during the benchmark")
    return {
        "shots": len(items),
        "per_call": per_call,
        "seconds": round(wall, 3),
        "shots_per_minute": round(len(items) / wall * 60, 2),
        "gpu_utilisation": sampler.mean,
    }


def _measure(backend, op: str, make_items, shots: int, batch: int) -> dict[str, Any]:
    # each phase first runs one untimed call of its own size: weights loaded, kernels chosen for that
    # batch shape (untimed, a phase's first call cost ~10x the others and could reverse the ratio)
    backend.run_batch(op, make_items(1, "warm-single"))
    single = _phase(backend, op, make_items(shots, "single"), 1)
    backend.run_batch(op, make_items(batch, "warm-batched"))
    batched = _phase(backend, op, make_items(shots, "batched"), batch)
    return {"batching_off": single, "batching_on": batched, "speedup": round(single["seconds"] / batched["seconds"], 2)}


def bench_backends(
    image_model: str | None = None,
    video_model: str | None = None,
    shots: int = 8,
    batch: int = 4,
    width: int = 576,
    height: int = 1024,
    steps: int = 20,
    frames: int = 25,
) -> dict[str, Any]:
    import os

    # a benchmark's output is its table: no download progress bars or library chatter (and never the hub)
    for name, value in (
        ("HF_HUB_OFFLINE", "1"),
        ("HF_HUB_DISABLE_PROGRESS_BARS", "1"),
        ("TRANSFORMERS_VERBOSITY", "error"),
        ("DIFFUSERS_VERBOSITY", "error"),
    ):
        os.environ.setdefault(name, value)
    from workers import _torch as tt
    from workers.image.diffusers import DiffusersImages
    from workers.video.diffusers_i2v import DiffusersVideo

    torch = tt.import_torch("farm bench backends")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    accelerator = torch.cuda.get_device_name(0) if device == "cuda" else "CPU"
    report: dict[str, Any] = {"device": accelerator, "shots": shots, "batch": batch}
    with tempfile.TemporaryDirectory(prefix="farm-bench-backends-") as tmp:
        root = Path(tmp)
        tiny = not image_model or not video_model
        if not image_model:
            from farm.bench.tiny_pipelines import build_tiny_sd

            image_model = str(build_tiny_sd(root / "tiny-sd"))
        if not video_model:
            from farm.bench.tiny_pipelines import build_tiny_svd

            video_model = str(build_tiny_svd(root / "tiny-svd"))
        if tiny:  # tiny pipelines draw at tiny sizes: a smoke run of the code, not of a model
            width, height, steps, frames = min(width, 72), min(height, 128), min(steps, 2), min(frames, 4)
        report |= {"tiny_models": tiny, "size": [width, height], "steps": steps}

        image = DiffusersImages(
            "bench-image", {"kind": "diffusers-image", "model_path": image_model, "steps": steps, "max_batch": batch}
        )

        keyframes = _items(root / "keyframes", {}, lambda i: keyframe_params(i, width, height))
        report["image"] = _measure(image, "keyframe", keyframes, shots, batch)

        still = root / "keyframe.png"
        Image.new("RGB", (width, height), (200, 150, 110)).save(still)
        video = DiffusersVideo(
            "bench-video",
            {
                "kind": "diffusers-video",
                "model_path": video_model,
                "steps": steps,
                "frames": frames,
                "max_batch": batch,
            },
        )

        clips = _items(
            root / "clips",
            {"keyframe": still},
            lambda i: {"width": width, "height": height, "fps": 24, "frames": frames, "camera": "push_in"},
        )

        report["video"] = _measure(video, "clip", clips, max(2, shots // 2), batch)
    report["text"] = _text(report)
    return report


def _text(r: dict[str, Any]) -> str:
    unit = "GPU-minute" if r["device"] != "CPU" else "CPU-minute (no GPU here)"
    lines = [
        f"farm bench backends on {r['device']}: {r['size'][0]}x{r['size'][1]}, {r['steps']} steps"
        + (" (tiny random pipelines: a smoke run of the code path, not a model's speed)" if r["tiny_models"] else "")
    ]
    for kind in ("image", "video"):
        m = r[kind]
        for phase in ("batching_off", "batching_on"):
            p = m[phase]
            util = f", GPU {p['gpu_utilisation'] * 100:.0f}% busy" if p["gpu_utilisation"] is not None else ""
            lines.append(
                f"  {kind:<5} {phase.replace('_', ' '):<13} {p['per_call']} per call: "
                f"{p['shots_per_minute']:8.2f} shots per {unit} ({p['shots']} in {p['seconds']} s{util})"
            )
        lines.append(f"  {kind:<5} batching on is {m['speedup']:.2f}x batching off")
    return "\n".join(lines)
