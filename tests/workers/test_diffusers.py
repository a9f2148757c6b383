"""The diffusers backends, run for real on tiny random pipelines built here (no downloads).

The pipelines are saved with ``save_pretrained`` into temporary folders and loaded by the backends
through the same ``from_pretrained(..., local_files_only=True)`` code the GPU path uses; only their
size differs. Random weights draw noise, which is all these tests need: sizes, determinism, that
conditioning inputs reach the model, batching, retiming and encoding.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before huggingface_hub is imported: never the network

import pytest
from PIL import Image

from tests.conftest import need
from workers import _torch as tt
from workers.api import BatchItem, ConfigError, StageError, StageResult

try:
    import diffusers  # noqa: F401
    import numpy as np
    import torch
    import transformers  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    torch = None
    MISSING: str | None = f"{exc}: pip install 'farm[diffusers]'"
else:
    MISSING = None

STYLE = {"description": "flat colours", "palette": ["#102030", "#405060", "#f0a040"]}
ANA = {"id": "ana", "name": "Ana", "look": {"description": "red coat", "outfit": "#c03030"}}
BO = {"id": "bo", "name": "Bo", "look": {"description": "blue jacket"}}
W, H = 72, 128  # not a multiple of the generation grid: the outputs are resized and cropped to it
# The CPU tests run on the CPU whatever the machine has (a GPU machine too); the GPU tests ask for "auto".
IMAGE_CONFIG = {
    "kind": "diffusers-image",
    "steps": 2,
    "max_side": 64,
    "sheet_width": 96,
    "sheet_height": 128,
    "device": "cpu",
}
VIDEO_CONFIG = {"kind": "diffusers-video", "steps": 2, "max_side": 64, "frames": 4, "device": "cpu"}
# diffusers' Euler scheduler builds an array in the way numpy 2 deprecates; not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")
needs_gpu = pytest.mark.skipif(torch is None or not torch.cuda.is_available(), reason="needs a GPU")


@pytest.fixture(autouse=True, scope="module")
def _diffusers_installed():
    need(MISSING)


@pytest.fixture(scope="module")
def sd_dir(tmp_path_factory, _diffusers_installed):
    from farm.bench.tiny_pipelines import build_tiny_sd

    return build_tiny_sd(tmp_path_factory.mktemp("tiny-sd"))


@pytest.fixture(scope="module")
def svd_dir(tmp_path_factory, _diffusers_installed):
    from farm.bench.tiny_pipelines import build_tiny_svd

    return build_tiny_svd(tmp_path_factory.mktemp("tiny-svd"))


@pytest.fixture(scope="module")
def wan_dir(tmp_path_factory, _diffusers_installed):
    from farm.bench.tiny_pipelines import build_tiny_wan_flf2v

    return build_tiny_wan_flf2v(tmp_path_factory.mktemp("tiny-wan"))


@pytest.fixture(scope="module")
def images(sd_dir):
    from workers.image.diffusers import DiffusersImages

    return DiffusersImages("tiny-sd", {**IMAGE_CONFIG, "model_path": str(sd_dir)})


@pytest.fixture(scope="module")
def figures(images, tmp_path_factory):
    """Each character's figure, from a real sheet run."""
    out = {}
    for character in (ANA, BO):
        folder = tmp_path_factory.mktemp(f"sheet-{character['id']}")
        out[character["id"]] = images.run("sheet", {}, _sheet_params(character), folder).files["figure"]
    return out


@pytest.fixture(scope="module")
def keyframes(tmp_path_factory):
    """Two plain keyframes of W x H to animate (what the image stage hands the video stage)."""
    folder = tmp_path_factory.mktemp("keyframes")
    paths = []
    for i, colour in enumerate([(200, 70, 60), (60, 160, 90)]):
        im = Image.new("RGB", (W, H), colour)
        im.paste((240, 230, 80), (10 + 20 * i, 30, 40 + 20 * i, 90))
        paths.append(folder / f"kf{i}.png")
        im.save(paths[-1])
    return paths


def _sheet_params(character, seed=0):
    return {"style": STYLE, "character": character, "seed": seed}


def _kf_params(seed=(1, "s01-01"), characters=("ana",), framing="medium", width=W, height=H):
    return {
        "style": STYLE,
        "width": width,
        "height": height,
        "seed": list(seed),
        "location": "kitchen",
        "time_of_day": "night",
        "description": "Ana at the window",
        "framing": framing,
        "characters": list(characters),
    }


def _pixels(path: Path):
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).astype(np.int16)


def _size(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        return im.size


def _out(tmp_path: Path, name: str) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    return folder


def _keyframe(backend, tmp_path, name, params=None, inputs=None):
    return backend.run("keyframe", inputs or {}, params or _kf_params(), _out(tmp_path, name))


def ffprobe(path: Path) -> dict:
    out = subprocess.run(
        [
            "ffprobe",
            "-v",
            "error",
            "-count_frames",
            "-select_streams",
            "v:0",
            "-show_entries",
            "stream=codec_name,profile,pix_fmt,width,height,r_frame_rate,time_base,nb_read_frames,"
            "color_space,color_range",
            "-of",
            "json",
            str(path),
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out)["streams"][0]


# --- images ---------------------------------------------------------------------------------


def test_sheet_is_the_configured_size_with_a_transparent_edged_figure(images, tmp_path):
    result = images.run("sheet", {}, _sheet_params(ANA), _out(tmp_path, "sheet"))
    assert set(result.files) == {"sheet", "figure"}
    assert _size(result.files["sheet"]) == (96, 128)
    with Image.open(result.files["figure"]) as figure:
        figure.load()
    assert figure.mode == "RGBA" and figure.height == 128 and figure.width == round(128 * 0.55)
    assert figure.getpixel((0, 0))[3] == 0  # the corners are outside the soft ellipse
    assert figure.getchannel("A").getextrema()[1] > 0
    assert result.meta["conditioning"] == "text"


def test_figure_keys_out_a_plain_background():
    """cut_figure: the sheet's plain background turns transparent, the character stays opaque."""
    from workers.image.diffusers import cut_figure

    sheet = Image.new("RGB", (300, 400), (235, 235, 240))
    sheet.paste((190, 40, 40), (120, 60, 180, 380))  # the "character", centred
    figure = cut_figure(sheet)
    assert figure.mode == "RGBA" and figure.size == (220, 400)
    alpha = figure.getchannel("A")
    assert alpha.getpixel((110, 200)) == 255  # inside the character
    assert alpha.getpixel((30, 200)) == 0  # background inside the soft ellipse, keyed out
    assert alpha.getpixel((0, 0)) == 0
    blank = cut_figure(Image.new("RGB", (300, 400), (235, 235, 240)))  # nothing to key: the soft strip
    assert blank.getchannel("A").getpixel((110, 200)) == 255


def test_keyframe_is_exactly_the_requested_size(images, figures, tmp_path):
    for w, h in [(W, H), (90, 50), (64, 64)]:
        result = _keyframe(
            images, tmp_path, f"kf-{w}x{h}", _kf_params(width=w, height=h), {"sheet:ana": figures["ana"]}
        )
        assert _size(result.files["keyframe"]) == (w, h)
        assert result.meta["width"] == w and result.meta["height"] == h
        gw, gh = result.meta["generated"]
        assert max(gw, gh) <= 64 and gw % 8 == 0 and gh % 8 == 0


def test_same_seed_same_pixels_other_seed_other_pixels(images, figures, tmp_path):
    inputs = {"sheet:ana": figures["ana"]}
    a = _keyframe(images, tmp_path, "a", _kf_params(seed=(1, "s01-01")), inputs).files["keyframe"]
    b = _keyframe(images, tmp_path, "b", _kf_params(seed=(1, "s01-01")), inputs).files["keyframe"]
    c = _keyframe(images, tmp_path, "c", _kf_params(seed=(2, "s01-01")), inputs).files["keyframe"]
    assert np.array_equal(_pixels(a), _pixels(b))
    assert not np.array_equal(_pixels(a), _pixels(c))
    s1 = images.run("sheet", {}, _sheet_params(ANA, seed=0), _out(tmp_path, "s1")).files["sheet"]
    s2 = images.run("sheet", {}, _sheet_params(ANA, seed=0), _out(tmp_path, "s2")).files["sheet"]
    s3 = images.run("sheet", {}, _sheet_params(ANA, seed=1), _out(tmp_path, "s3")).files["sheet"]
    assert np.array_equal(_pixels(s1), _pixels(s2)) and not np.array_equal(_pixels(s1), _pixels(s3))


def test_keyframe_is_conditioned_on_the_character_figures(images, figures, tmp_path):
    """img2img from the composed init image: the figure's pixels reach the keyframe."""
    params = _kf_params(characters=("ana",))
    with_figure = _keyframe(images, tmp_path, "with", params, {"sheet:ana": figures["ana"]})
    without = _keyframe(images, tmp_path, "without", params, {})
    other = _keyframe(images, tmp_path, "other", params | {"characters": ["bo"]}, {"sheet:bo": figures["bo"]})
    assert with_figure.meta["conditioning"] == "img2img"
    a, b, c = (_pixels(r.files["keyframe"]) for r in (with_figure, without, other))
    assert np.abs(a - b).mean() > 1 and np.abs(a - c).mean() > 1


def test_a_batch_gives_what_single_runs_give(images, figures, tmp_path):
    """One pipeline call for three keyframes, one generator per item: each comes out as when it
    runs alone. Not bit-for-bit on every CPU: oneDNN/MKL pick different blockings (and summation
    orders) for a batch of 3 than for 1, so a pixel may round to the neighbouring 8-bit value."""
    params = [_kf_params(seed=(1, f"s0{i}")) for i in range(3)]
    inputs = [{"sheet:ana": figures["ana"]}, {}, {"sheet:ana": figures["ana"], "sheet:bo": figures["bo"]}]
    params[2]["characters"] = ["ana", "bo"]
    items = [BatchItem(inputs[i], params[i], _out(tmp_path, f"batch{i}")) for i in range(3)]
    batch = images.run_batch("keyframe", items)
    assert all(isinstance(r, StageResult) for r in batch)
    for i in range(3):
        single = _keyframe(images, tmp_path, f"single{i}", params[i], inputs[i])
        diff = np.abs(_pixels(single.files["keyframe"]) - _pixels(batch[i].files["keyframe"]))
        assert diff.max() <= 2 and diff.mean() < 0.05, (i, diff.max(), diff.mean())
    # and the three are different pictures
    assert not np.array_equal(_pixels(batch[0].files["keyframe"]), _pixels(batch[1].files["keyframe"]))


def test_batch_key_groups_by_op_and_size(images):
    key = images.batch_key
    assert key("keyframe", _kf_params(seed=(1, "a"))) == key("keyframe", _kf_params(seed=(9, "b"), characters=()))
    assert key("keyframe", _kf_params()) != key("keyframe", _kf_params(width=90, height=50))
    assert key("sheet", _sheet_params(ANA)) == key("sheet", _sheet_params(BO))
    assert key("sheet", _sheet_params(ANA)) != key("keyframe", _kf_params())


def test_a_bad_item_fails_alone_in_its_batch(images, tmp_path):
    items = [
        BatchItem({}, _kf_params(), _out(tmp_path, "good")),
        BatchItem({}, _kf_params(width=3), _out(tmp_path, "bad")),
        BatchItem({"sheet:ana": tmp_path / "nope.png"}, _kf_params(), _out(tmp_path, "unreadable")),
    ]
    good, bad, unreadable = images.run_batch("keyframe", items)
    assert isinstance(good, StageResult)
    assert isinstance(bad, StageError) and "params.width" in str(bad) and not bad.retryable
    assert isinstance(unreadable, StageError) and "sheet:ana" in str(unreadable)
    with pytest.raises(StageError, match="unknown op"):
        images.run("clip", {}, {}, _out(tmp_path, "op"))


class OomWhenBatched:
    """A pipeline wrapper that runs out of GPU memory on more than one prompt."""

    def __init__(self, pipe, always: bool = False):
        self.__wrapped__ = pipe  # the backend reads the pipeline's signature through it
        self.always = always
        self.sizes: list[int] = []

    def __getattr__(self, name):
        return getattr(self.__wrapped__, name)

    def __call__(self, **kwargs):
        self.sizes.append(len(kwargs["prompt"]))
        if self.always or len(kwargs["prompt"]) > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.__wrapped__(**kwargs)


def test_out_of_memory_splits_the_batch_down_to_single_items(images, figures, tmp_path, monkeypatch):
    pipes = images.load()
    fake = OomWhenBatched(pipes.img2img)
    monkeypatch.setattr(pipes, "img2img", fake)
    params = [_kf_params(seed=(1, f"oom{i}")) for i in range(3)]
    items = [BatchItem({"sheet:ana": figures["ana"]}, p, _out(tmp_path, f"oom{i}")) for i, p in enumerate(params)]
    results = images.run_batch("keyframe", items)
    assert fake.sizes == [3, 2, 1, 1, 1]  # 3 -> (2 -> 1 + 1) + 1
    assert all(isinstance(r, StageResult) for r in results)
    monkeypatch.setattr(pipes, "img2img", fake.__wrapped__)
    alone = _keyframe(images, tmp_path, "alone", params[2], {"sheet:ana": figures["ana"]})
    assert np.array_equal(_pixels(alone.files["keyframe"]), _pixels(results[2].files["keyframe"]))

    monkeypatch.setattr(pipes, "img2img", OomWhenBatched(fake.__wrapped__, always=True))
    results = images.run_batch("keyframe", items[:2])
    assert all(isinstance(r, StageError) and r.retryable and "out of GPU memory" in str(r) for r in results)


def test_usage_on_cpu_is_cpu_seconds_and_no_gpu_seconds(images, tmp_path):
    usage = _keyframe(images, tmp_path, "usage").usage
    assert usage.cpu_seconds > 0 and usage.gpu_seconds == 0
    assert usage.model == images.model == images.settings.model_path.name


def test_pipelines_load_once_per_process(images, sd_dir):
    from workers.image.diffusers import DiffusersImages

    other = DiffusersImages("same-model", {**IMAGE_CONFIG, "model_path": str(sd_dir), "steps": 3})
    assert other.load() is images.load()
    assert images.load().img2img.unet is images.load().text2img.unet  # from_pipe shares the weights


def test_version_digests_what_changes_the_output(sd_dir):
    from workers.image.diffusers import DiffusersImages

    def version(**extra):
        return DiffusersImages("v", {**IMAGE_CONFIG, "model_path": str(sd_dir), **extra}).version

    assert version() == version(device="cpu", max_batch=8, timeout_s=30) == version(steps=2)
    assert len({version(), version(steps=3), version(strength=0.5), version(guidance=7), version(dtype="float32")}) == 5


def test_check_reads_the_model_directory(images, sd_dir, tmp_path):
    from workers.image.diffusers import DiffusersImages

    assert "StableDiffusionPipeline" in images.check() and "unet" in images.check()
    broken = tmp_path / "broken"
    subprocess.run(["cp", "-r", str(sd_dir), str(broken)], check=True)
    (broken / "unet" / "config.json").write_text("{not json")
    with pytest.raises(StageError, match="unet/config.json"):
        DiffusersImages("broken", {**IMAGE_CONFIG, "model_path": str(broken)}).check()


def test_config_errors_name_the_setting(sd_dir, tmp_path):
    from workers.image.diffusers import DiffusersImages
    from workers.video.diffusers_i2v import DiffusersVideo

    with pytest.raises(ConfigError) as err:
        DiffusersImages("sd", {**IMAGE_CONFIG, "model_path": str(sd_dir), "steps": 0, "guidance": "high", "nope": 1})
    assert all(f"backends.sd.{f}" in str(err.value) for f in ("steps", "guidance", "nope"))
    with pytest.raises(ConfigError, match=r"backends\.sd\.model_path: Field required"):
        DiffusersImages("sd", IMAGE_CONFIG)
    # the folder lives on the GPU nodes: it is checked where the model is checked or loaded
    with pytest.raises(StageError, match=r"model_path .*/missing is not a directory on this machine.*save_pretrained"):
        DiffusersImages("sd", {**IMAGE_CONFIG, "model_path": str(tmp_path / "missing")}).check()
    with pytest.raises(StageError, match=r"model_path .* has no model_index\.json"):
        DiffusersImages("sd", {**IMAGE_CONFIG, "model_path": str(tmp_path)}).check()
    with pytest.raises(ConfigError, match=r"backends\.sd\.strength: steps x strength = 1 x 0.5"):
        DiffusersImages("sd", {**IMAGE_CONFIG, "model_path": str(sd_dir), "steps": 1, "strength": 0.5})
    with pytest.raises(ConfigError, match=r"backends\.v\.prompt: .*\{camera\}"):
        DiffusersVideo("v", {**VIDEO_CONFIG, "model_path": str(sd_dir), "prompt": "{scene} moves"})
    with pytest.raises(ConfigError, match=r"backends\.v\.device"):
        DiffusersVideo("v", {**VIDEO_CONFIG, "model_path": str(sd_dir), "device": "tpu"})


def test_modules_import_and_configure_without_torch(sd_dir):
    """The controller lists and versions backends without torch; running one says what to install."""
    code = f"""
import sys
sys.modules["torch"] = None
sys.modules["diffusers"] = None
from workers.api import ToolMissing
from workers.image.diffusers import DiffusersImages
from workers.video.diffusers_i2v import DiffusersVideo
b = DiffusersImages("sd", {{"kind": "diffusers-image", "model_path": {str(sd_dir)!r}}})
v = DiffusersVideo("v", {{"kind": "diffusers-video", "model_path": {str(sd_dir)!r}, "last_frame": True}})
assert b.version and v.features == ("last_frame",)
try:
    b.check()
except ToolMissing as exc:
    print(exc)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[2])
    assert out.returncode == 0, out.stderr
    assert "pip install 'farm[diffusers]'" in out.stdout


# --- IP-adapter -------------------------------------------------------------------------------


def test_ip_adapter_conditions_keyframes_on_the_figures(sd_dir, figures, tmp_path_factory, tmp_path):
    from farm.bench.tiny_pipelines import build_tiny_ip_adapter
    from workers.image.diffusers import DiffusersImages

    ip_dir = build_tiny_ip_adapter(tmp_path_factory.mktemp("tiny-ip"), sd_dir)
    backend = DiffusersImages(
        "ip",
        {
            **IMAGE_CONFIG,
            "model_path": str(sd_dir),
            "ip_adapter": {
                "path": str(ip_dir),
                "subfolder": "models",
                "weight_name": "ip-adapter.safetensors",
                "scale": 1.0,
            },
        },
    )
    assert "ip-adapter" in backend.check()
    with_figure = _keyframe(backend, tmp_path, "with", _kf_params(), {"sheet:ana": figures["ana"]})
    without = _keyframe(backend, tmp_path, "without", _kf_params(), {})
    assert with_figure.meta["conditioning"] == "ip_adapter"
    assert _size(with_figure.files["keyframe"]) == (W, H)
    assert np.abs(_pixels(with_figure.files["keyframe"]) - _pixels(without.files["keyframe"])).mean() > 1
    items = [
        BatchItem({"sheet:ana": figures["ana"]}, _kf_params(), _out(tmp_path, "b0")),
        BatchItem({}, _kf_params(), _out(tmp_path, "b1")),
    ]
    batch = backend.run_batch("keyframe", items)
    assert np.array_equal(_pixels(batch[0].files["keyframe"]), _pixels(with_figure.files["keyframe"]))
    assert np.array_equal(_pixels(batch[1].files["keyframe"]), _pixels(without.files["keyframe"]))
    sheet = backend.run("sheet", {}, _sheet_params(ANA), _out(tmp_path, "sheet"))
    assert _size(sheet.files["sheet"]) == (96, 128)
    with pytest.raises(
        StageError, match=r"no file .*models/missing\.safetensors on this machine.*backends\.ip\.ip_adapter"
    ):
        DiffusersImages(
            "ip",
            {
                **IMAGE_CONFIG,
                "model_path": str(sd_dir),
                "ip_adapter": {"path": str(ip_dir), "subfolder": "models", "weight_name": "missing.safetensors"},
            },
        ).check()


# --- video ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def svd(svd_dir):
    from workers.video.diffusers_i2v import DiffusersVideo

    return DiffusersVideo("tiny-svd", {**VIDEO_CONFIG, "model_path": str(svd_dir)})


@pytest.fixture(scope="module")
def wan(wan_dir):
    from workers.video.diffusers_i2v import DiffusersVideo

    return DiffusersVideo("tiny-wan", {**VIDEO_CONFIG, "model_path": str(wan_dir), "last_frame": True})


def _clip_params(frames=10, fps=12, camera="push_in", width=W, height=H):
    return {"width": width, "height": height, "fps": fps, "frames": frames, "camera": camera}


@pytest.mark.media
def test_clip_has_the_requested_frames_fps_and_size(svd, keyframes, tmp_path):
    result = svd.run("clip", {"keyframe": keyframes[0]}, _clip_params(frames=10), _out(tmp_path, "clip"))
    info = ffprobe(result.files["clip"])
    assert (info["width"], info["height"], info["r_frame_rate"], int(info["nb_read_frames"])) == (W, H, "12/1", 10)
    assert (info["codec_name"], info["profile"], info["pix_fmt"]) == ("h264", "High", "yuv420p")
    assert result.meta == result.meta | {"frames": 10, "fps": 12, "width": W, "height": H, "generated_frames": 4}
    assert result.usage.cpu_seconds > 0 and result.usage.gpu_seconds == 0
    # fewer frames than the model makes: the generation is clamped, the clip still exact
    short = svd.run("clip", {"keyframe": keyframes[0]}, _clip_params(frames=3, fps=25), _out(tmp_path, "short"))
    info = ffprobe(short.files["clip"])
    assert (info["r_frame_rate"], int(info["nb_read_frames"]), short.meta["generated_frames"]) == ("25/1", 3, 3)


@pytest.mark.media
def test_clip_concatenates_by_stream_copy_with_a_motion_clip(svd, keyframes, tmp_path):
    from workers.video.motion import BACKEND as MOTION

    ours = svd.run("clip", {"keyframe": keyframes[0]}, _clip_params(frames=10), _out(tmp_path, "ours")).files["clip"]
    theirs = MOTION.run(
        "clip", {"keyframe": keyframes[1]}, _clip_params(frames=7, camera="pan_left"), _out(tmp_path, "motion")
    ).files["clip"]
    a, b = ffprobe(ours), ffprobe(theirs)
    for field in ("codec_name", "profile", "pix_fmt", "time_base", "r_frame_rate", "color_space", "color_range"):
        assert a[field] == b[field], field
    listing = tmp_path / "list.txt"
    listing.write_text(f"file '{ours}'\nfile '{theirs}'\nfile '{ours}'\n")
    joined = tmp_path / "joined.mp4"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-f", "concat", "-safe", "0", "-i", str(listing), "-c", "copy", str(joined)],
        check=True,
    )
    assert int(ffprobe(joined)["nb_read_frames"]) == 27
    decode = subprocess.run(["ffmpeg", "-v", "error", "-i", str(joined), "-f", "null", "-"], capture_output=True)
    assert decode.returncode == 0 and decode.stderr == b""


class Recorder:
    """A pipeline wrapper that keeps the keyword arguments and the frames of every call."""

    def __init__(self, pipe):
        self.__wrapped__ = pipe  # the backend reads the pipeline's signature through it
        self.calls: list[dict] = []
        self.frames: list = []

    def __getattr__(self, name):
        return getattr(self.__wrapped__, name)

    def __call__(self, **kwargs):
        self.calls.append(kwargs)
        out = self.__wrapped__(**kwargs)
        self.frames.append([[np.asarray(f).astype(np.int16) for f in video] for video in out.frames])
        return out


@pytest.mark.media
def test_clip_is_deterministic_and_a_video_batch_matches_single_runs(svd, keyframes, tmp_path, monkeypatch):
    """SVD batches images, one generator each: every video of a batch is the one a single run
    makes, up to float rounding (see the image batch test). The encoded clips are compared by
    frame count only: x264 on random-model noise turns a one-level difference into visibly
    different macroblock decisions."""
    params = [_clip_params(frames=8), _clip_params(frames=8, camera="static")]
    items = [BatchItem({"keyframe": k}, p, _out(tmp_path, f"b{i}")) for i, (k, p) in enumerate(zip(keyframes, params))]
    key = svd.batch_key
    assert key("clip", params[0]) == key("clip", params[1])  # 4 frames generated at 6 fps
    assert key("clip", params[0]) != key("clip", _clip_params(frames=8, width=90, height=50))
    assert key("clip", params[0]) != key("clip", _clip_params(frames=6))  # the same 4 frames, but at 8 fps
    loaded = svd.load()
    recorder = Recorder(loaded.pipe)
    monkeypatch.setattr(loaded, "pipe", recorder)
    batch = svd.run_batch("clip", items)
    singles = [svd.run("clip", item.inputs, item.params, _out(tmp_path, f"s{i}")) for i, item in enumerate(items)]
    assert [len(call["image"]) if isinstance(call["image"], list) else 1 for call in recorder.calls] == [2, 1, 1]
    batched, alone = recorder.frames[0], [recorder.frames[1][0], recorder.frames[2][0]]
    for i in range(2):
        assert len(batched[i]) == len(alone[i]) == 4
        assert max(np.abs(a - b).max() for a, b in zip(batched[i], alone[i])) <= 2
        assert (
            int(ffprobe(batch[i].files["clip"])["nb_read_frames"])
            == int(ffprobe(singles[i].files["clip"])["nb_read_frames"])
            == 8
        )
    assert not np.array_equal(alone[0][0], alone[1][0])
    again = svd.run("clip", items[0].inputs, items[0].params, _out(tmp_path, "again"))
    assert again.files["clip"].read_bytes() == singles[0].files["clip"].read_bytes()


@pytest.mark.media
def test_last_frame_reaches_a_first_last_frame_pipeline(wan, keyframes, tmp_path, monkeypatch):
    assert wan.features == ("last_frame",)
    assert "WanImageToVideoPipeline" in wan.check() and "last frame" in wan.check()
    loaded = wan.load()
    recorder = Recorder(loaded.pipe)
    monkeypatch.setattr(loaded, "pipe", recorder)
    seen = recorder.calls
    params = _clip_params(frames=9)
    to_b = wan.run("clip", {"keyframe": keyframes[0], "last": keyframes[1]}, params, _out(tmp_path, "to-b"))
    to_self = wan.run("clip", {"keyframe": keyframes[0]}, params, _out(tmp_path, "to-self"))
    assert [sorted(k) for k in seen][0] == sorted(
        [
            "image",
            "last_image",
            "prompt",
            "height",
            "width",
            "num_frames",
            "num_inference_steps",
            "generator",
            "output_type",
        ]
    )
    assert (
        seen[0]["num_frames"] == 5
        and seen[0]["prompt"] == "cinematic shot, the camera slowly pushes in, natural motion"
    )
    assert seen[1]["last_image"] is seen[1]["image"] or np.array_equal(
        np.asarray(seen[1]["last_image"]), np.asarray(seen[1]["image"])
    )
    assert int(ffprobe(to_b.files["clip"])["nb_read_frames"]) == 9
    assert to_b.files["clip"].read_bytes() != to_self.files["clip"].read_bytes()


def test_last_frame_needs_a_pipeline_that_takes_one(svd_dir, keyframes, tmp_path):
    from workers.video.diffusers_i2v import DiffusersVideo

    backend = DiffusersVideo("svd-last", {**VIDEO_CONFIG, "model_path": str(svd_dir), "last_frame": True})
    with pytest.raises(StageError, match="takes no last_image"):
        backend.check()
    with pytest.raises(StageError, match="takes no last_image"):
        backend.run("clip", {"keyframe": keyframes[0]}, _clip_params(), _out(tmp_path, "c"))


@pytest.mark.media  # the backend asks for ffmpeg before it reads the params
def test_bad_clip_params_fail_before_the_model_runs(svd, keyframes, tmp_path):
    for params, message in [
        (_clip_params(width=71), "even sides"),
        (_clip_params(fps=7), "fps 7"),
        (_clip_params(camera="spin"), "camera 'spin'"),
    ]:
        with pytest.raises(StageError, match=message):
            svd.run(
                "clip", {"keyframe": keyframes[0]}, params, _out(tmp_path, message.replace(" ", "_").replace("'", ""))
            )
    with pytest.raises(StageError, match="input 'keyframe' is missing"):
        svd.run("clip", {}, _clip_params(), _out(tmp_path, "none"))


@pytest.mark.media
def test_an_ffmpeg_failure_is_a_stage_error_with_its_message(tmp_path):
    from workers.video.diffusers_i2v import encode

    with pytest.raises(StageError, match=r"ffmpeg exited \d+: .*(divisible by 2|width)"):
        encode([Image.new("RGB", (71, 128))], [0, 0], 12, tmp_path / "odd.mp4", 30, "video (t)")


def test_retime_spreads_generated_frames_evenly():
    from workers.video.diffusers_i2v import retime

    assert retime(4, 10) == [0, 0, 1, 1, 1, 2, 2, 2, 3, 3]
    assert retime(5, 3) == [0, 2, 4]
    assert retime(4, 1) == [0] and retime(1, 3) == [0, 0, 0]


# --- GPU --------------------------------------------------------------------------------------


@needs_gpu
def test_gpu_runs_in_half_precision_and_reports_gpu_seconds(sd_dir, tmp_path):
    from workers.image.diffusers import DiffusersImages

    backend = DiffusersImages("gpu", {**IMAGE_CONFIG, "model_path": str(sd_dir), "device": "auto"})
    pipes = backend.load()
    assert pipes.device == "cuda" and pipes.text2img.unet.dtype == torch.float16
    result = _keyframe(backend, tmp_path, "gpu")
    assert _size(result.files["keyframe"]) == (W, H)
    assert result.usage.gpu_seconds > 0


@needs_gpu
@pytest.mark.media
def test_gpu_video_clip(svd_dir, keyframes, tmp_path):
    from workers.video.diffusers_i2v import DiffusersVideo

    backend = DiffusersVideo("gpu-v", {**VIDEO_CONFIG, "model_path": str(svd_dir), "device": "auto"})
    assert backend.load().pipe.unet.dtype == torch.float16
    result = backend.run("clip", {"keyframe": keyframes[0]}, _clip_params(), _out(tmp_path, "c"))
    assert result.usage.gpu_seconds > 0 and result.meta["frames"] == 10


def test_device_choice(sd_dir, tmp_path):
    """auto: the GPU when there is one; cuda without one is a clear error; float32 on a CPU."""
    from workers.image.diffusers import DiffusersImages

    assert tt.pick_device("cpu", "t") == "cpu" and tt.pick_dtype("auto", "cpu", "t") == torch.float32
    assert tt.pick_device("auto", "t") == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        backend = DiffusersImages("cuda", {**IMAGE_CONFIG, "model_path": str(sd_dir), "device": "cuda"})
        with pytest.raises(StageError, match="device is 'cuda' but torch sees no CUDA GPU"):
            _keyframe(backend, tmp_path, "x")
