"""Character sheets and keyframes drawn by a local diffusers text-to-image model.

Configured as kind ``diffusers-image``::

    {"sdxl": {"kind": "diffusers-image", "model_path": "/models/sdxl", "steps": 30,
              "ip_adapter": {"path": "/models/ip-adapter", "subfolder": "sdxl_models",
                             "weight_name": "ip-adapter_sdxl.safetensors", "scale": 0.6}}}

Same ops, params and outputs as the embedded Pillow backend: ``sheet`` -> "sheet" and "figure",
``keyframe`` (inputs "sheet:<id>", each a character's figure) -> "keyframe", exactly width x height.

Character consistency. A text prompt alone redraws a character differently in every shot, so each
keyframe is conditioned on the figures cut from the characters' sheets:

- with an IP-adapter configured, the figures (side by side on grey) are the adapter's reference
  image: identity comes from the figures' image embedding while the prompt and the noise are free
  to lay out the shot;
- without one, the keyframe is img2img from an init image composed like the Pillow backend's
  keyframes (the palette's gradient, a floor, the figures placed by framing): ``strength`` below 1
  keeps the figures' colours and silhouettes where the shot puts them, which is the one way a
  plain text-to-image checkpoint can carry identity without extra weights.

The figure is the sheet's centre strip (the prompt asks for one full-body character, centred, on a
plain background) with its background keyed out by colour distance from the strip's border and a
soft elliptical edge, so it composes into a scene without a hard rectangle. A segmentation model
would cut cleaner; it would also be one more model to provision, and img2img repaints the edges.

Every action's noise comes from its own seed (sha256 of its seed parameter), one torch.Generator
per item, so an item comes out the same alone or in a batch (up to float rounding, see the tests).
Batches share one pipeline call, except with an IP-adapter: diffusers gives one reference image
to every prompt of a call, and each keyframe has its own, so those run one call per item. The
adapter is an SD 1.5 / SDXL-style one (``prepare_ip_adapter_image_embeds`` with guidance halves).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, ImageChops, ImageDraw, ImageFilter, ImageStat
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from workers import _torch as tt
from workers.api import BatchItem, Estimate, StageError, StageResult, Usage
from workers.image.pillow import _gradient, _mix, _night_factor, _rgb

KIND = "diffusers-image"
KIND_VERSION = "1"
DEFAULT_NEGATIVE = "text, caption, watermark, logo, lowres, blurry, deformed, extra limbs, cropped"
FRAMING = {"wide": "wide shot, full body", "medium": "medium shot", "close": "close-up portrait"}
FIGURE_ASPECT = 0.55  # width / height of a standing figure, as in the Pillow backend
REFERENCE_GREY = (127, 127, 127)


class IpAdapterSettings(BaseModel):
    """An IP-adapter on local disk: ``load_ip_adapter(path, subfolder=, weight_name=)``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    path: Path
    subfolder: str = ""
    weight_name: str
    scale: float = Field(0.6, ge=0, le=2)
    image_encoder_folder: str | None = "image_encoder"


class DiffusersImageSettings(tt.TorchSettings):
    steps: int = Field(30, ge=1, le=500)
    guidance: float = Field(5.0, ge=0, le=30)
    strength: float = Field(0.65, gt=0, le=1)
    negative_prompt: str = DEFAULT_NEGATIVE
    sheet_width: int = Field(768, ge=16, le=8192)
    sheet_height: int = Field(1024, ge=16, le=8192)
    ip_adapter: IpAdapterSettings | None = None

    @field_validator("strength")
    @classmethod
    def _denoises(cls, strength: float, info: ValidationInfo) -> float:
        steps = info.data.get("steps")
        if steps is not None and int(steps * strength) < 1:
            raise PydanticCustomError(
                "strength",
                "steps x strength = {steps} x {strength} leaves img2img no denoising step: raise steps or strength",
                {"steps": steps, "strength": strength},
            )
        return strength


# Settings that change what is drawn (not device, batch size, timeouts, resources).
AFFECTS = (
    "model_path",
    "steps",
    "guidance",
    "strength",
    "negative_prompt",
    "dtype",
    "max_side",
    "sheet_width",
    "sheet_height",
    "ip_adapter",
)


def prompt_for(op: str, params: Mapping[str, Any]) -> str:
    """The text prompt of a sheet (the character's look) or a keyframe (the shot), in one place."""
    style = str(params.get("style", {}).get("description", ""))
    if op == "sheet":
        character = params["character"]
        look = character.get("look") or {}
        parts = [
            style,
            f"character design sheet of {character.get('name', character['id'])}",
            str(look.get("description") or ""),
            "one person, full body, standing, front view, centred",
            "plain light background",
        ]
    else:
        cast = len(params.get("characters") or [])
        people = {0: "no people", 1: "one person", 2: "two people"}.get(cast, f"{cast} people")
        parts = [
            style,
            str(params.get("description", "")),
            f"{params.get('location', '')}, {params.get('time_of_day', '')}",
            FRAMING.get(str(params.get("framing")), ""),
            people,
        ]
    return ", ".join(p.strip(" ,") for p in parts if p and p.strip(" ,"))


def cut_figure(sheet: Image.Image) -> Image.Image:
    """The character from a sheet, RGBA: the centre strip, background keyed out, soft edges."""
    w, h = sheet.size
    fw = max(1, min(w, round(h * FIGURE_ASPECT)))
    strip = sheet.convert("RGB").crop(((w - fw) // 2, 0, (w - fw) // 2 + fw, h))
    border = Image.new("RGB", (2 * fw + 2 * h, 1))
    border.paste(strip.crop((0, 0, fw, 1)), (0, 0))
    border.paste(strip.crop((0, h - 1, fw, h)), (fw, 0))
    border.paste(strip.crop((0, 0, 1, h)).rotate(90, expand=True), (2 * fw, 0))
    border.paste(strip.crop((fw - 1, 0, fw, h)).rotate(90, expand=True), (2 * fw + h, 0))
    background = tuple(int(v) for v in ImageStat.Stat(border).median)
    distance = ImageChops.difference(strip, Image.new("RGB", strip.size, background)).convert("L")
    key = distance.point(lambda v: 0 if v < 16 else 255 if v > 48 else (v - 16) * 8)
    key = key.filter(ImageFilter.MaxFilter(3)).filter(ImageFilter.GaussianBlur(1))
    edge = Image.new("L", strip.size, 0)
    ImageDraw.Draw(edge).ellipse((fw * 0.04, h * 0.01, fw * 0.96, h * 0.99), fill=255)
    edge = edge.filter(ImageFilter.GaussianBlur(max(1, fw // 24)))
    alpha = ImageChops.multiply(key, edge)
    if ImageStat.Stat(alpha).mean[0] < 255 * 0.05:
        alpha = edge  # nothing stands out from the border's colour: keep the soft-edged strip
    figure = strip.convert("RGBA")
    figure.putalpha(alpha)
    return figure


def place_figures(canvas: Image.Image, figures: list[Image.Image], framing: str, horizon: float) -> None:
    """Composite figures onto ``canvas`` (RGBA) where the Pillow backend puts them: evenly spaced,
    sized by framing, standing on the floor (close-ups: the first character, head near the top)."""
    w, h = canvas.size
    scale = {"wide": 0.42, "medium": 0.7, "close": 1.5}.get(framing, 0.7)
    cast = figures[:1] if framing == "close" else figures
    for i, fig in enumerate(cast):
        fh = max(1, int(min(h * scale, 0.95 * w / len(cast) * fig.height / fig.width)))
        fig = fig.resize((max(1, int(fig.width * fh / fig.height)), fh), Image.Resampling.LANCZOS)
        x = int((i + 1) / (len(cast) + 1) * w - fig.width / 2)
        y = int(h * 0.22) if framing == "close" else int(min(h - fh, horizon + h * 0.3 - fh))
        if x >= 0 and y >= 0:
            canvas.alpha_composite(fig, (x, y))
        else:  # alpha_composite takes no negative offsets
            canvas.paste(fig, (x, y), fig)


def compose_init(params: Mapping[str, Any], figures: list[Image.Image], size: tuple[int, int]) -> Image.Image:
    """The img2img init image of a keyframe: the scene's palette, light and floor, and the figures."""
    w, h = size
    palette = [_rgb(p) for p in params["style"]["palette"]]
    back, mid = palette[0], palette[min(1, len(palette) - 1)]
    dim = _night_factor(str(params.get("time_of_day", "")))
    canvas = _gradient((w, h), _mix(back, (0, 0, 0), dim), _mix(mid, back, 0.3 + dim / 2)).convert("RGBA")
    horizon = h * 0.62
    ImageDraw.Draw(canvas).rectangle((0, int(horizon), w, h), fill=_mix(mid, (0, 0, 0), 0.5 + dim / 3))
    place_figures(canvas, figures, str(params.get("framing")), horizon)
    return canvas.convert("RGB")


def reference_image(figures: list[Image.Image], size: int = 512) -> Image.Image | None:
    """The IP-adapter's reference: the figures side by side on grey (None without figures)."""
    if not figures:
        return None
    canvas = Image.new("RGBA", (size, size), (*REFERENCE_GREY, 255))
    place_figures(canvas, figures, "medium", size * 0.7)
    return canvas.convert("RGB")


def _int(params: Mapping[str, Any], name: str, low: int = 16, high: int = 8192) -> int:
    value = params.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise StageError(f"image: params.{name} = {value!r} must be an integer from {low} to {high}")
    return value


@dataclass
class _Pipes:
    text2img: Any
    img2img: Any | None
    device: str
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass
class _Job:
    index: int
    item: BatchItem
    prompt: str
    seed: int
    size: tuple[int, int]
    gen: tuple[int, int]
    init: Image.Image | None = None
    reference: Image.Image | None = None


class DiffusersImages(tt.TorchBackend):
    """Image stage on a local diffusers checkpoint: ``sheet`` and ``keyframe`` like ``pillow``."""

    kind = KIND
    stage = "image"
    ops = ("sheet", "keyframe")
    tools: tuple[str, ...] = ()
    features: tuple[str, ...] = ()

    def __init__(self, name: str, config: Mapping[str, Any]):
        super().__init__(name, config, DiffusersImageSettings, KIND_VERSION, AFFECTS)

    def estimate(self, op: str, params: Mapping[str, Any]) -> Estimate:
        per_step = 0.15 if op == "keyframe" else 0.1
        return self.settings.estimate_or(
            Estimate(seconds=2.0 + per_step * self.settings.steps, gpu_seconds=per_step * self.settings.steps)
        )

    def batch_key(self, op: str, params: Mapping[str, Any]) -> tuple:
        """Actions with equal keys share a pipeline call: same op and output size (hence the same
        generation size); steps, guidance and strength are the backend's, the same for all."""
        if op == "keyframe":
            return (op, params.get("width"), params.get("height"))
        return (op,)

    # -- loading ---------------------------------------------------------------------------

    def _load_key(self) -> tuple:
        ip = self.settings.ip_adapter
        return (repr(ip.model_dump(mode="json") if ip else None),)

    def _load(self, device: str, dtype: Any) -> _Pipes:
        tt.import_diffusers(self.what)
        from diffusers import AutoPipelineForImage2Image, AutoPipelineForText2Image

        s = self.settings
        text2img = tt.from_pretrained(AutoPipelineForText2Image, s.model_path, dtype, device, self.what)
        if s.ip_adapter is not None:
            ip = s.ip_adapter
            try:
                text2img.load_ip_adapter(
                    str(ip.path),
                    subfolder=ip.subfolder,
                    weight_name=ip.weight_name,
                    image_encoder_folder=ip.image_encoder_folder,
                    local_files_only=True,
                )
            except (OSError, ValueError, KeyError) as exc:
                raise StageError(f"{self.what}: cannot load the IP-adapter {ip.path}: {exc}") from exc
            text2img.set_ip_adapter_scale(ip.scale)  # the adapter lands on the UNet's device and dtype
            return _Pipes(text2img, None, device)
        img2img = AutoPipelineForImage2Image.from_pipe(text2img)  # the same modules, no second copy
        img2img.set_progress_bar_config(disable=True)
        return _Pipes(text2img, img2img, device)

    def check(self) -> str:
        """The model directory's index and component configs read (no weights, no GPU)."""
        s = self.settings
        cls, components = tt.describe_model_dir(s.model_path, self.what)
        ip = s.ip_adapter
        if ip is not None and not (ip.path / ip.subfolder / ip.weight_name).is_file():  # on the GPU nodes
            raise StageError(
                f"{self.what}: no file {ip.path / ip.subfolder / ip.weight_name} on this machine: give the "
                "local folder, subfolder and weight_name of an IP-adapter (backends."
                f"{self.name}.ip_adapter)"
            )
        try:
            from diffusers.pipelines.auto_pipeline import AUTO_TEXT2IMAGE_PIPELINES_MAPPING
        except ImportError:
            pass
        else:
            if cls not in {c.__name__ for c in AUTO_TEXT2IMAGE_PIPELINES_MAPPING.values()}:
                raise StageError(
                    f"{self.what}: {cls} at {s.model_path} is not a text-to-image pipeline "
                    "AutoPipelineForText2Image knows"
                )
        mode = "ip-adapter " + s.ip_adapter.weight_name if s.ip_adapter else f"img2img strength {s.strength}"
        return (
            f"{cls} at {s.model_path} ({', '.join(components)}); {s.steps} steps, guidance {s.guidance}, "
            f"keyframes by {mode}"
        )

    # -- running ---------------------------------------------------------------------------

    def run_batch(self, op: str, items: list[BatchItem]) -> list[StageResult | StageError]:
        """One pipeline call for the items (split on out-of-memory), one result or error per item."""
        if op not in self.ops:
            return [StageError(f"{self.what}: unknown op {op!r}; {KIND} does {self.ops}")] * len(items)
        try:
            pipes = self.load()
        except StageError as exc:
            return [exc] * len(items)
        results: list[StageResult | StageError | None] = [None] * len(items)
        groups: dict[tuple[int, int], list[_Job]] = {}
        multiple = tt.size_multiple(pipes.text2img)
        for i, item in enumerate(items):
            try:
                job = self._prepare(op, i, item, multiple)
            except StageError as exc:
                results[i] = exc
                continue
            groups.setdefault(job.gen, []).append(job)
        # diffusers' pipelines repeat IP-adapter embeddings over the whole batch (one reference
        # for every prompt), so with an IP-adapter each item, with its own reference, is one call.
        one_by_one = self.settings.ip_adapter is not None
        for jobs in groups.values():
            for chunk in ([job] for job in jobs) if one_by_one else [jobs]:
                done = tt.split_on_oom(chunk, lambda c: self._generate(op, pipes, c), self.what)
                for job, result in zip(chunk, done):
                    results[job.index] = result
        return results  # type: ignore[return-value]

    def _prepare(self, op: str, index: int, item: BatchItem, multiple: int) -> _Job:
        s, params = self.settings, item.params
        try:
            if op == "sheet":
                size = (s.sheet_width, s.sheet_height)
                seed = tt.seed_of("sheet", params["seed"], params["character"]["id"])
            else:
                size = (_int(params, "width"), _int(params, "height"))
                seed = tt.seed_of("keyframe", params["seed"])
            prompt = prompt_for(op, params)
        except (KeyError, TypeError, AttributeError) as exc:
            raise StageError(f"{self.what}: params of {op} lack {exc}") from None
        gen = tt.generation_size(*size, s.max_side, multiple)
        job = _Job(index, item, prompt, seed, size, gen)
        if op == "keyframe":
            figures = self._figures(item)
            if s.ip_adapter is not None:
                job.reference = reference_image(figures)
            else:
                try:
                    job.init = compose_init(params, figures, gen)
                except (KeyError, ValueError, TypeError) as exc:
                    raise StageError(f"{self.what}: cannot compose the keyframe's init image: {exc!r}") from None
        return job

    def _figures(self, item: BatchItem) -> list[Image.Image]:
        """The figures of the characters in frame, in the order of params["characters"]."""
        found = {}
        for name, path in item.inputs.items():
            if name.startswith("sheet:"):
                try:
                    with Image.open(path) as im:
                        found[name[len("sheet:") :]] = im.convert("RGBA")
                except OSError as exc:
                    raise StageError(f"{self.what}: input {name} is not a readable image: {exc}") from exc
        return [found[c] for c in item.params.get("characters") or [] if c in found]

    def _generate(self, op: str, pipes: _Pipes, jobs: list[_Job]) -> list[StageResult]:
        s = self.settings
        gw, gh = jobs[0].gen
        use_init = op == "keyframe" and pipes.img2img is not None
        pipe = pipes.img2img if use_init else pipes.text2img
        assert pipe is not None, f"{self.what}: no pipeline loaded for {op}"
        kwargs: dict[str, Any] = {
            "prompt": [j.prompt for j in jobs],
            "negative_prompt": [s.negative_prompt] * len(jobs) if s.negative_prompt else None,
            "height": gh,
            "width": gw,
            "num_inference_steps": s.steps,
            "guidance_scale": s.guidance,
            "generator": tt.generators([j.seed for j in jobs], pipes.device, self.what),
            "output_type": "pil",
        }
        if use_init:
            kwargs.update(image=[j.init for j in jobs], strength=s.strength)
        with pipes.lock, tt.DeviceTimer(pipes.device) as timer:
            if s.ip_adapter is not None:
                [job] = jobs
                kwargs["ip_adapter_image_embeds"] = self._ip_embeds(pipes, job.reference)
            images = pipe(**tt.accepted(pipe, kwargs)).images
        if len(images) != len(jobs):
            raise StageError(f"{self.what}: the pipeline returned {len(images)} images for {len(jobs)} prompts")
        return [self._write(op, job, image, timer, len(jobs)) for job, image in zip(jobs, images)]

    def _ip_embeds(self, pipes: _Pipes, reference: Image.Image | None) -> list[Any]:
        """The IP-adapter embedding of one item's reference (negative and positive halves, as the
        pipeline takes them). Without figures (and for sheets) both halves are the unconditional
        embedding: the adapter then changes nothing for that item."""
        torch = tt.import_torch(self.what)
        blank = Image.new("RGB", (224, 224), REFERENCE_GREY)
        with torch.no_grad():
            [pair] = pipes.text2img.prepare_ip_adapter_image_embeds(
                ip_adapter_image=[reference if reference is not None else blank],
                ip_adapter_image_embeds=None,
                device=pipes.device,
                num_images_per_prompt=1,
                do_classifier_free_guidance=True,
            )
        negative, positive = pair.chunk(2)
        if reference is None:
            positive = negative
        return [torch.cat([negative, positive]) if self.settings.guidance > 1 else positive]

    def _write(self, op: str, job: _Job, image: Image.Image, timer: tt.DeviceTimer, share: int) -> StageResult:
        t0 = time.process_time()
        out = Path(job.item.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        picture = tt.fit(image.convert("RGB"), *job.size)
        if op == "sheet":
            files = {"sheet": out / "sheet.png", "figure": out / "figure.png"}
            picture.save(files["sheet"], optimize=False)
            cut_figure(picture).save(files["figure"], optimize=False)
        else:
            files = {"keyframe": out / "keyframe.png"}
            picture.save(files["keyframe"], optimize=False)
        conditioning = "text" if op == "sheet" else "ip_adapter" if self.settings.ip_adapter else "img2img"
        return StageResult(
            files=files,
            meta={
                "width": picture.width,
                "height": picture.height,
                "seed": job.seed,
                "generated": list(job.gen),
                "conditioning": conditioning,
                "batch": share,
            },
            usage=Usage(
                gpu_seconds=timer.gpu_seconds / share,
                cpu_seconds=timer.cpu_seconds / share + time.process_time() - t0,
                model=self.model,
            ),
        )
