"""A speech-native video backend for tests (``kind: tests.support.speaking:Speaking``): it speaks the
declared contract (farm.core.talking) with real media, as a model that generates its clip already
talking would.

Its picture is the embedded camera move over the keyframe; its sound is each line said by espeak-ng
(or, with feature ``voice_reference``, the dubbed line it is given) at a time of its own choosing:
``shift_s`` after where the plan placed it, so that a test can tell cues that follow the returned
times from cues that follow the plan. Under the whole track lies a quiet ``pilot_hz`` tone, the
signature by which a test finds this clip's sound in the delivered episode. The clip it returns is
an MP4 with that sound as AAC, which goes through the same contract checks
(``workers.video.returned``) a real backend's does; ``frames_off`` returns that many frames too many,
to test the refusal.
"""

from __future__ import annotations

import math
import wave
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from workers.api import Estimate, Resources, StageError, StageResult, Usage, config_version, run_tool
from workers.dubbing.espeak import BACKEND as ESPEAK
from workers.lipsync.mouth import read_line
from workers.video import returned
from workers.video.motion import BACKEND as MOTION


class Speaking:
    stage, kind = "video", "tests.support.speaking:Speaking"
    ops = ("clip",)
    tools = ("ffmpeg", "ffprobe", "espeak-ng")
    resources = Resources(num_cpus=1)

    def __init__(self, name: str, config: Mapping[str, Any]):
        self.name = name
        self.shift_s = float(config.get("shift_s", 0.2))
        self.pilot_hz = float(config.get("pilot_hz", 1000.0))
        self.frames_off = int(config.get("frames_off", 0))
        self.features: tuple[str, ...] = ("speech", "voice_reference") if config.get("reference") else ("speech",)
        self.version = config_version("1", config, ("shift_s", "pilot_hz", "frames_off", "reference"))

    def estimate(self, op: str, params: Mapping[str, Any]) -> Estimate:
        return Estimate(seconds=1.0)

    def run(self, op: str, inputs: Mapping[str, Path], params: Mapping[str, Any], out_dir: Path) -> StageResult:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        asked = params.get("lines") or []
        picture = dict(params) | {"frames": int(params["frames"]) + self.frames_off}
        picture.pop("lines", None)
        video = MOTION.run("clip", inputs, picture, out_dir / "picture").files["clip"]
        if not asked:
            return StageResult(files={"clip": video}, usage=Usage(model="speaking"))
        rate, fps, frames = int(params["sample_rate"]), int(params["fps"]), int(params["frames"])
        total = frames * rate // fps
        n = np.arange(total)
        track = 0.03 * np.sin(2 * math.pi * self.pilot_hz * n / rate)
        times = []
        for i, line in enumerate(asked):
            if "input" in line:
                samples = read_line(Path(inputs[line["input"]]), line["input"], rate)
            else:
                said = ESPEAK.run(
                    "line",
                    {},
                    {"text": line["text"], "voice": line["voice"], "speaker": line["speaker"], "sample_rate": rate},
                    out_dir / f"said{i}",
                )
                samples = read_line(said.files["audio"], f"line {i}", rate)
            start = min(int(line["offset_samples"]) + round(self.shift_s * rate), max(0, total - len(samples)))
            end = min(total, start + len(samples))
            track[start:end] += samples[: end - start]
            times.append({"start": start / rate, "end": end / rate})
        wav = out_dir / "sound.wav"
        with wave.open(str(wav), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(rate)
            w.writeframes((np.clip(track, -1, 1) * 32767).astype("<i2").tobytes())
        model = out_dir / "model.mp4"  # what a model would send back: picture and sound in one file
        run_tool(
            ["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(video), "-i", str(wav), "-map", "0:v:0"]
            + ["-map", "1:a:0", "-c:v", "copy", "-c:a", "aac", "-b:a", "128k", str(model)],
            what="speaking: mux",
        )
        what = f"video ({self.name})"
        clip = returned.encode(model, out_dir / "clip.mp4", params, what)
        audio = returned.sound(model, out_dir / "audio.wav", rate, total, fps, what)
        lines = returned.spoken_times(times, asked, frames, fps, what)
        if len(lines) != len(asked):
            raise StageError(f"{what}: {len(lines)} line times for {len(asked)} lines")
        return StageResult(
            files={"clip": clip, "audio": audio}, meta={"lines": lines, "frames": frames}, usage=Usage(model="speaking")
        )
