"""Configured backends for testing the farm's handling of backends (not the media):
``kind: tests.support.fake_backends:Batching`` and ``...:Resumable`` in a test's settings."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from workers.api import BatchItem, Estimate, Resources, StageError, StageResult, Usage, config_version


class Batching:
    """A keyframe drawer that batches: each output file names the batch it was drawn in."""

    stage, kind = "image", "tests.support.fake_backends:Batching"
    ops = ("sheet", "keyframe")
    features: tuple[str, ...] = ()
    tools: tuple[str, ...] = ()
    judged = False  # writes text files, not pictures: no default judge measures them

    def __init__(self, name: str, config: Mapping[str, Any]):
        self.name, self.max_batch = name, int(config.get("max_batch", 4))
        self.delay_s = float(config.get("delay_s", 0.2))
        self.batch_wait_s = float(config.get("batch_wait_s", 0.02))
        self.version = config_version("1", config, ("flavour",))
        self.resources = Resources(num_cpus=0, num_gpus=float(config.get("num_gpus", 1)))

    def estimate(self, op: str, params: Mapping[str, Any]) -> Estimate:
        return Estimate(seconds=self.delay_s, gpu_seconds=self.delay_s)

    def batch_key(self, op: str, params: Mapping[str, Any]) -> Any:
        return params.get("width"), params.get("height")

    def run(self, op, inputs, params, out_dir) -> StageResult:
        result = self.run_batch(op, [BatchItem(inputs, params, out_dir)])[0]
        if isinstance(result, Exception):
            raise result
        return result

    def run_batch(self, op: str, items: list[BatchItem]) -> list[StageResult | StageError]:
        time.sleep(self.delay_s)
        out = []
        for item in items:
            if "fail" in str(item.params.get("description", "")):
                out.append(StageError("asked to fail"))
                continue
            files = {}
            for output in ("sheet", "figure") if op == "sheet" else ("keyframe",):
                files[output] = Path(item.out_dir) / f"{output}.txt"
                files[output].write_text(f"{op} {item.params.get('seed')} in a batch of {len(items)} pid {os.getpid()}")
            out.append(
                StageResult(
                    files=files,
                    meta={"batch": len(items)},
                    usage=Usage(gpu_seconds=self.delay_s / len(items), model="fake"),
                )
            )
        return out


class Resumable:
    """Submits a "job" once (a file in ``jobs_dir``) and waits for ``done`` to appear beside it."""

    stage, kind = "image", "tests.support.fake_backends:Resumable"
    judged = False  # writes placeholders, not media: no default judge measures them
    ops = ("sheet", "keyframe")
    resumable = True
    features: tuple[str, ...] = ()
    tools: tuple[str, ...] = ()
    resources = Resources(num_cpus=0.5)

    def __init__(self, name: str, config: Mapping[str, Any]):
        self.name, self.jobs = name, Path(config["jobs_dir"])
        self.version = config_version("1", config, ())

    def estimate(self, op, params) -> Estimate:
        return Estimate(seconds=1.0)

    def run(self, op, inputs, params, out_dir, job=None) -> StageResult:
        state = job.load() if job is not None else None
        if state is None:
            submitted = sorted(self.jobs.glob("job-*"))
            state = {"job": f"job-{len(submitted)}"}
            (self.jobs / state["job"]).write_text(f"{op} {params.get('seed')}")
            job.save(state)
        deadline = time.monotonic() + 60
        while not (self.jobs / f"{state['job']}.done").exists():
            if time.monotonic() > deadline:
                raise StageError("the job did not finish", retryable=True)
            time.sleep(0.05)
        files = {}
        for output in ("sheet", "figure") if op == "sheet" else ("keyframe",):
            files[output] = Path(out_dir) / f"{output}.txt"
            files[output].write_text(f"{op} made by {state['job']}")
        return StageResult(files=files, usage=Usage(provider_job_id=state["job"]))


class Flaky:
    """A dubbing backend whose every line fails once (retryably), then speaks: a marker file per line in
    ``marks`` remembers the first attempt."""

    stage, kind = "dubbing", "tests.support.fake_backends:Flaky"
    ops = ("line",)
    features: tuple[str, ...] = ()
    tools: tuple[str, ...] = ()
    judged = False  # writes a placeholder, not a WAV: no default judge measures it (farm.catalog.judging_for)
    resources = Resources(num_cpus=0.25)

    def __init__(self, name: str, config: Mapping[str, Any]):
        self.name, self.marks = name, Path(config["marks"])
        self.version = config_version("1", config, ())

    def estimate(self, op, params) -> Estimate:
        return Estimate(seconds=0.01)

    def run(self, op, inputs, params, out_dir) -> StageResult:
        import hashlib

        self.marks.mkdir(parents=True, exist_ok=True)
        mark = self.marks / hashlib.sha256(str(params["text"]).encode()).hexdigest()
        if not mark.exists():
            mark.write_text("tried")
            raise StageError("the voice server hiccuped", retryable=True)
        path = Path(out_dir) / "line.wav"
        path.write_bytes(b"RIFF....WAVE")
        return StageResult(
            files={"audio": path},
            meta={"samples": 9_600 + 480 * len(params["text"])},
            usage=Usage(cpu_seconds=0.01, model="flaky"),
        )


class Scripted:
    """A script backend (a studio's own class) that writes the outline's beats as scenes, each line a shot,
    and, for an episode whose title says "rogue", gives a line to ``rogue_speaker`` (a character the
    series may not have): the bad answer a real model can give."""

    stage, kind = "script", "tests.support.fake_backends:Scripted"
    ops = ("script",)
    features: tuple[str, ...] = ()
    tools: tuple[str, ...] = ()
    resources = Resources(num_cpus=0.25)

    def __init__(self, name: str, config: Mapping[str, Any]):
        self.name, self.rogue = name, str(config.get("rogue_speaker", "nobody"))
        self.version = config_version("1", config, ("rogue_speaker",))

    def estimate(self, op, params) -> Estimate:
        return Estimate(seconds=0.01, tokens=100)

    def run(self, op, inputs, params, out_dir) -> StageResult:
        import json

        episode, series = params["episode"], params["series"]
        rogue = "rogue" in episode["title"].lower()
        scenes = []
        for bi, beat in enumerate(episode["outline"]):
            shots = [
                {
                    "id": f"s{bi}-{li}",
                    "description": beat["beat"],
                    "characters": [line["speaker"]],
                    "lines": [{"speaker": self.rogue if rogue else line["speaker"], "text": line["text"]}],
                }
                for li, line in enumerate(beat["lines"])
            ]
            scenes.append(
                {
                    "id": f"s{bi}",
                    "location": beat["location"],
                    "shots": shots or [{"id": f"s{bi}-0", "description": beat["beat"]}],
                }
            )
        path = Path(out_dir) / "script.json"
        path.write_text(json.dumps({"title": episode["title"], "language": series["language"], "scenes": scenes}))
        return StageResult(files={"script": path}, usage=Usage(tokens_in=60, tokens_out=40, model="scripted"))


class Sleepy:
    """A video backend that takes ``seconds`` per clip and writes a placeholder (noop's files): a render
    that is still running when a test interrupts it. With ``pids`` (a folder), each clip first writes
    a file named after the process running it (its content: the shot), so a test can kill that process."""

    stage, kind = "video", "tests.support.fake_backends:Sleepy"
    judged = False  # writes placeholders, not media: no default judge measures them
    ops = ("clip",)
    features: tuple[str, ...] = ()
    tools: tuple[str, ...] = ()
    resources = Resources(num_cpus=0.5)

    def __init__(self, name: str, config: Mapping[str, Any]):
        self.name, self.seconds = name, float(config.get("seconds", 1.0))
        self.pids = Path(config["pids"]) if config.get("pids") else None
        self.version = config_version("1", config, ())

    def estimate(self, op, params) -> Estimate:
        return Estimate(seconds=self.seconds)

    def run(self, op, inputs, params, out_dir) -> StageResult:
        if self.pids is not None:
            (self.pids / str(os.getpid())).write_text(str(params.get("shot", "")))
        time.sleep(self.seconds)
        path = Path(out_dir) / "clip.bin"
        path.write_bytes(b"clip")
        return StageResult(files={"clip": path}, usage=Usage(cpu_seconds=0.0, model="sleepy"))


class Loader:
    """A GPU video backend with a model to load: its first clip in a process sleeps ``load_s`` (the
    load) and leaves a file in ``loads`` (shared by every process of a test), then each clip takes
    ``seconds`` and leaves a file in ``loads``/clips. A test counts the loads."""

    stage, kind = "video", "tests.support.fake_backends:Loader"
    judged = False  # writes placeholders, not media: no default judge measures them
    ops = ("clip",)
    features: tuple[str, ...] = ()
    tools: tuple[str, ...] = ()

    def __init__(self, name: str, config: Mapping[str, Any]):
        self.name, self.loads = name, Path(config["loads"])
        self.load_s, self.seconds = float(config.get("load_s", 1.0)), float(config.get("seconds", 0.5))
        self.resources = Resources(num_cpus=0, num_gpus=1, load_seconds=self.load_s)
        self.version = config_version("1", config, ())
        self.loaded = False
        self._lock = threading.Lock()

    def estimate(self, op, params) -> Estimate:
        return Estimate(seconds=self.seconds, gpu_seconds=self.seconds)

    def run(self, op, inputs, params, out_dir) -> StageResult:
        loaded_now = 0.0
        with self._lock:  # the model is loaded once per process, on its first clip
            if not self.loaded:
                time.sleep(self.load_s)
                (self.loads / f"load-{os.getpid()}-{time.monotonic_ns()}").write_text("loaded")
                self.loaded, loaded_now = True, self.load_s
        (self.loads / "clips").mkdir(exist_ok=True)
        (self.loads / "clips" / f"{os.getpid()}-{time.monotonic_ns()}").write_text(json.dumps(params, sort_keys=True))
        time.sleep(self.seconds)
        path = Path(out_dir) / "clip.bin"
        path.write_bytes(b"clip")
        return StageResult(
            files={"clip": path}, usage=Usage(gpu_seconds=self.seconds, model="loader", load_seconds=loaded_now)
        )


def chat_and_loader(base_url: str, api_key: str, loads: Path, stages: Sequence[str]) -> dict[str, Any]:
    """Settings for a batch whose script is a paid chat call (``base_url``: an OpenAI-compatible server)
    and whose clips run on a ``Loader`` GPU pool that counts its loads in ``loads``; the rest noop."""
    return {
        "backends": {
            "llm": {"kind": "openai-chat", "base_url": base_url, "model": "test-chat", "api_key": api_key},
            "loader": {"kind": "tests.support.fake_backends:Loader", "loads": str(loads), "load_s": 2.0},
        },
        **{f"backend_{s}": "noop" for s in stages if s not in ("script", "video")},
        "backend_script": "llm",
        "backend_video": "loader",
    }
