"""What the fake ComfyUI (tests.support.comfyui_server) "executes": the node classes it knows, as
ComfyUI's /object_info lists them (required inputs, output node or not), and how a workflow of
them becomes files.

A workflow draws PNGs with Pillow: the size comes from the workflow's width/height fields, the
number of frames from its ``length``, the picture from its seed, prompts and uploaded images, so
equal workflows give byte-equal files. A workflow loading a video (VHS_LoadVideo, as a lip-sync
graph does) instead decodes the uploaded video with ffmpeg (up to ``frame_load_cap`` frames) and,
when a LatentSyncNode is in it, draws a mouth into each frame. Output nodes write what their
ComfyUI namesakes write: SaveImage one PNG per frame, SaveAnimatedWEBP an animated WebP,
VHS_VideoCombine a GIF or an MP4, SaveVideo an MP4 of its CreateVideo; an MP4 carries the sound of
the LoadAudio its ``audio`` input leads back to, as AAC. ``misshapen`` (set by the server's
``misshape``) bends every MP4's frame count, size or frame rate.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageOps

_WAN = ("positive", "negative", "vae", "width", "height", "length", "batch_size")
# class_type -> (required inputs, is an output node); optional inputs are not listed
NODE_CLASSES: dict[str, tuple[tuple[str, ...], bool]] = {
    "CheckpointLoaderSimple": (("ckpt_name",), False),
    "CLIPTextEncode": (("text", "clip"), False),
    "EmptyLatentImage": (("width", "height", "batch_size"), False),
    "KSampler": (
        ("model", "seed", "steps", "cfg", "sampler_name", "scheduler", "positive", "negative", "latent_image")
        + ("denoise",),
        False,
    ),
    "VAEDecode": (("samples", "vae"), False),
    "LoadImage": (("image",), False),
    "WanFirstLastFrameToVideo": (_WAN, False),
    "SaveImage": (("images", "filename_prefix"), True),
    "PreviewImage": (("images",), True),
    "SaveAnimatedWEBP": (("images", "filename_prefix", "fps", "lossless", "quality", "method"), True),
    "VHS_VideoCombine": (
        ("images", "frame_rate", "loop_count", "filename_prefix", "format", "pingpong", "save_output"),
        True,
    ),
    # lip-sync (ComfyUI-LatentSyncWrapper, VideoHelperSuite) and speech-to-video (Wan 2.2 S2V, core nodes)
    "LoadAudio": (("audio",), False),
    "VHS_LoadVideo": (("video", "force_rate", "custom_width", "custom_height", "frame_load_cap"), False),
    "LatentSyncNode": (("images", "audio", "seed", "lips_expression", "inference_steps"), False),
    "UNETLoader": (("unet_name", "weight_dtype"), False),
    "CLIPLoader": (("clip_name", "type"), False),
    "VAELoader": (("vae_name",), False),
    "AudioEncoderLoader": (("audio_encoder_name",), False),
    "AudioEncoderEncode": (("audio_encoder", "audio"), False),
    "WanSoundImageToVideo": (_WAN, False),
    "ModelSamplingSD3": (("model", "shift"), False),
    "CreateVideo": (("images", "fps"), False),
    "SaveVideo": (("video", "filename_prefix", "format", "codec"), True),
}
# loader class -> its file field and ComfyUI's message for a file that is not in input/
LOADERS = {
    "LoadImage": ("image", "Invalid image file"),
    "LoadAudio": ("audio", "Invalid audio file"),
    "VHS_LoadVideo": ("video", "Invalid video file"),
}
FFMPEG = shutil.which("ffmpeg") or "ffmpeg"


def is_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int)


class FakeNodes:
    """The execution half of the fake server: ``dirs`` (input/output/temp), a ``lock`` guarding
    ``counter`` (file numbers) and ``misshapen``."""

    dirs: dict[str, Path]
    lock: threading.Condition
    counter: int
    misshapen: dict[str, Any]

    def _render(self, prompt: dict[str, Any]) -> list[Image.Image]:
        def first(*names: str, default: Any = None) -> Any:
            for node in prompt.values():
                for name in names:
                    value = (node.get("inputs") or {}).get(name)
                    if isinstance(value, int) and not isinstance(value, bool):
                        return value
            return default

        width, height = first("width", default=512), first("height", default=512)
        for node in prompt.values():  # both from the same node, as a latent has them
            inputs = node.get("inputs") or {}
            if isinstance(inputs.get("width"), int) and isinstance(inputs.get("height"), int):
                width, height = inputs["width"], inputs["height"]
                break
        videos = [n["inputs"] for n in prompt.values() if n["class_type"] == "VHS_LoadVideo"]
        if videos:
            return self._decode(videos[0], any(n["class_type"] == "LatentSyncNode" for n in prompt.values()))
        count = max(1, first("length", default=1))
        seed = first("seed", "noise_seed", default=0)
        texts = [n["inputs"].get("text") for n in prompt.values() if n["class_type"] == "CLIPTextEncode"]
        loaded = [
            self.dirs["input"] / n["inputs"]["image"]
            for n in prompt.values()
            if n["class_type"] == "LoadImage" and isinstance(n["inputs"].get("image"), str)
        ]
        digest = hashlib.sha256(json.dumps([seed, texts], sort_keys=True).encode()).digest()
        background = tuple(40 + b % 120 for b in digest[:3])
        figure = tuple(255 - c for c in background)
        base = Image.new("RGB", (width, height), background)
        if loaded:
            with Image.open(loaded[0]) as im:
                base = ImageOps.fit(im.convert("RGB"), (width, height))
        frames = []
        for i in range(count):
            im = base.copy()
            draw = ImageDraw.Draw(im)
            # a standing "figure" in the left third, then a bar that moves across the frames
            draw.ellipse((width * 0.08, height * 0.15, width * 0.25, height * 0.85), fill=figure)
            x = int(width * 0.4 + (width * 0.5) * i / max(1, count - 1))
            draw.rectangle((x, int(height * 0.4), x + max(2, width // 20), int(height * 0.6)), fill=(250, 250, 250))
            frames.append(im)
        return frames

    def _decode(self, inputs: dict[str, Any], lipsync: bool) -> list[Image.Image]:
        """The frames of an uploaded video (VHS_LoadVideo: at most frame_load_cap, when not 0), with a
        mouth drawn opening and closing in the middle of each when a lip-sync node "ran"."""
        cap = int(inputs.get("frame_load_cap") or 0)
        with tempfile.TemporaryDirectory() as tmp:
            limit = ["-frames:v", str(cap)] if cap > 0 else []
            source = str(self.dirs["input"] / inputs["video"])
            subprocess.run([FFMPEG, "-v", "error", "-i", source, *limit, f"{tmp}/%05d.png"], check=True)
            frames = []
            for path in sorted(Path(tmp).iterdir()):
                with Image.open(path) as im:
                    frames.append(im.convert("RGB"))
        for i, im in enumerate(frames if lipsync else []):
            w, h = im.size
            ImageDraw.Draw(im).ellipse((w * 0.4, h * 0.5, w * 0.6, h * (0.52 + 0.04 * (i % 3))), fill=(60, 10, 20))
        return frames

    def _audio(self, prompt: dict[str, Any], value: Any) -> Path | None:
        """The uploaded file of the LoadAudio that an ``audio`` input leads back to (None if none)."""
        for _ in range(len(prompt)):
            if not is_link(value) or value[0] not in prompt:
                return None
            node = prompt[value[0]]
            if node["class_type"] == "LoadAudio":
                return self.dirs["input"] / node["inputs"]["audio"]
            value = (node.get("inputs") or {}).get("audio")
        return None

    def _mp4(self, path: Path, frames: list[Image.Image], fps: float, audio: Path | None) -> None:
        shape = self.misshapen
        if shape.get("frames", 0) < 0:
            frames = frames[: len(frames) + shape["frames"]]
        frames = frames + frames[-1:] * max(0, shape.get("frames", 0))
        if shape.get("size"):
            frames = [im.resize(shape["size"]) for im in frames]
        fps = shape.get("fps") or fps
        with tempfile.TemporaryDirectory() as tmp:
            for i, im in enumerate(frames):
                im.save(Path(tmp) / f"{i:05d}.png")
            sound = ["-i", str(audio), "-c:a", "aac"] if audio is not None else []
            subprocess.run(
                [FFMPEG, "-v", "error", "-y", "-framerate", f"{fps:g}", "-i", str(Path(tmp) / "%05d.png"), *sound]
                + ["-c:v", "libx264", "-pix_fmt", "yuv420p", "-preset", "ultrafast", str(path)],
                check=True,
                capture_output=True,
            )

    def _name(self, inputs: dict[str, Any], suffix: str) -> str:
        prefix = re.sub(r"[^A-Za-z0-9_-]", "_", str(inputs.get("filename_prefix") or "ComfyUI"))[:40]
        with self.lock:
            self.counter += 1
            return f"{prefix}_{self.counter:05d}_{suffix}"

    def _save(
        self, prompt: dict[str, Any], class_type: str, inputs: dict[str, Any], frames: list[Image.Image]
    ) -> dict[str, Any]:
        kind = "temp" if class_type == "PreviewImage" else "output"
        folder = self.dirs[kind]
        if class_type in ("SaveImage", "PreviewImage"):
            files = []
            for im in frames:
                name = self._name(inputs, ".png")
                im.save(folder / name)
                files.append({"filename": name, "subfolder": "", "type": kind})
            return {"images": files}
        if class_type == "SaveVideo":  # its video is a CreateVideo of frames, fps and maybe audio
            made = prompt[inputs["video"][0]]["inputs"]
            name = self._name(inputs, ".mp4")
            self._mp4(folder / name, frames, float(made["fps"]), self._audio(prompt, made.get("audio")))
            return {"images": [{"filename": name, "subfolder": "", "type": kind}], "animated": [True]}
        fps = float(inputs.get("fps") or inputs.get("frame_rate") or 8)
        if class_type == "SaveAnimatedWEBP":
            name = self._name(inputs, ".webp")
            frames[0].save(
                folder / name, save_all=True, append_images=frames[1:], duration=int(1000 / fps), lossless=True, loop=0
            )
            return {"images": [{"filename": name, "subfolder": "", "type": kind}], "animated": [True]}
        # VHS_VideoCombine
        fmt = str(inputs.get("format", "image/gif"))
        if fmt == "video/h264-mp4":
            name = self._name(inputs, ".mp4")
            self._mp4(folder / name, frames, fps, self._audio(prompt, inputs.get("audio")))
        else:
            name = self._name(inputs, ".gif")
            frames[0].save(folder / name, save_all=True, append_images=frames[1:], duration=int(1000 / fps), loop=0)
        return {"gifs": [{"filename": name, "subfolder": "", "type": kind, "format": fmt, "frame_rate": fps}]}
