"""The comfyui backend against a real local server speaking ComfyUI's HTTP API.

Workflow templates are small API-format workflows written into tmp dirs by the tests. Jobs are
held on the server (``hold``/``release``) rather than timed, so nothing here races a slow machine.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageDraw

from tests.support.comfyui_server import ComfyUIServer, comfyui_server
from workers.api import ConfigError, StageError
from workers.comfyui import ComfyUI, action_seed, gpu_seconds
from workers.video.motion import BACKEND as MOTION

ROOT = Path(__file__).resolve().parents[2]
W, H, FPS = 180, 320, 12
STYLE = {"description": "flat colours", "palette": ["#102030", "#405060", "#f0a040"]}
ANA = {"id": "ana", "name": "Ana", "look": {"description": "red coat", "outfit": "#c03030"}}


class FileJobRecord:
    """A JobRecord in one local file: written to a temporary file, fsynced and renamed into place,
    so a process killed at any moment leaves the old state or the new one. ``saves`` records
    (time.monotonic(), state) of each save made through this instance."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.saves: list[tuple[float, dict[str, Any]]] = []

    def load(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None

    def save(self, state: Mapping[str, Any]) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(dict(state), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        self.saves.append((time.monotonic(), dict(state)))


# -- workflow templates (API format, as ComfyUI's "Export (API)" writes them) ---------------------


def image_workflow(width: int = 512, height: int = 512, figure: bool = False) -> dict[str, Any]:
    wf = {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sdxl.safetensors"}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": width, "height": height, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a placeholder", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry, text", "clip": ["4", 1]}},
        "3": {
            "class_type": "KSampler",
            "inputs": {
                "model": ["4", 0],
                "seed": 1,
                "steps": 20,
                "cfg": 7.0,
                "sampler_name": "euler",
                "scheduler": "normal",
                "positive": ["6", 0],
                "negative": ["7", 0],
                "latent_image": ["5", 0],
                "denoise": 1.0,
            },
        },
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "farm"}},
    }
    if figure:
        wf["10"] = {"class_type": "LoadImage", "inputs": {"image": "example.png"}}
    return wf


def clip_workflow(save: str = "SaveAnimatedWEBP", length: int = 81) -> dict[str, Any]:
    wf = image_workflow()
    del wf["5"], wf["9"]
    wf.update(
        {
            "10": {"class_type": "LoadImage", "inputs": {"image": "start.png"}},
            "11": {"class_type": "LoadImage", "inputs": {"image": "end.png"}},
            "12": {
                "class_type": "WanFirstLastFrameToVideo",
                "inputs": {
                    "positive": ["6", 0],
                    "negative": ["7", 0],
                    "vae": ["4", 2],
                    "width": 832,
                    "height": 480,
                    "length": length,
                    "batch_size": 1,
                    "start_image": ["10", 0],
                    "end_image": ["11", 0],
                },
            },
        }
    )
    wf["3"]["inputs"].update(positive=["12", 0], negative=["12", 1], latent_image=["12", 2])
    if save == "SaveAnimatedWEBP":
        wf["9"] = {
            "class_type": save,
            "inputs": {
                "images": ["8", 0],
                "filename_prefix": "clip",
                "fps": 16.0,
                "lossless": False,
                "quality": 90,
                "method": "default",
            },
        }
    elif save == "SaveImage":
        wf["9"] = {"class_type": save, "inputs": {"images": ["8", 0], "filename_prefix": "frame"}}
    else:
        wf["9"] = {
            "class_type": "VHS_VideoCombine",
            "inputs": {
                "images": ["8", 0],
                "frame_rate": 16,
                "loop_count": 0,
                "filename_prefix": "clip",
                "format": "video/h264-mp4",
                "pingpong": False,
                "save_output": True,
            },
        }
    return wf


def write(folder: Path, name: str, workflow: Any) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(json.dumps(workflow, indent=1), encoding="utf-8")
    return str(path)


IMAGE_INPUTS = {"prompt": ["6", "text"], "seed": ["3", "seed"], "width": ["5", "width"], "height": ["5", "height"]}


def image_config(server: ComfyUIServer, folder: Path, **changes: Any) -> dict[str, Any]:
    config = {
        "kind": "comfyui",
        "stage": "image",
        "base_url": server.base_url,
        "poll_interval_s": 0.02,
        "workflows": {
            "sheet": write(folder, "sheet.json", image_workflow(768, 512)),
            "keyframe": write(folder, "keyframe.json", image_workflow(figure=True)),
        },
        "inputs": {
            "sheet": {"prompt": ["6", "text"], "seed": ["3", "seed"]},
            "keyframe": {**IMAGE_INPUTS, "figure1": ["10", "image"]},
        },
        "outputs": {"sheet": {"sheet": "9"}, "keyframe": {"keyframe": "9"}},
    }
    config.update(changes)
    return config


def clip_config(
    server: ComfyUIServer, folder: Path, save: str = "SaveAnimatedWEBP", frames_mapped: bool = True, length: int = 81
) -> dict[str, Any]:
    inputs = {
        "prompt": ["6", "text"],
        "seed": ["3", "seed"],
        "width": ["12", "width"],
        "height": ["12", "height"],
        "image": ["10", "image"],
        "last_image": ["11", "image"],
    }
    if frames_mapped:
        inputs["frames"] = ["12", "length"]
    return {
        "kind": "comfyui",
        "stage": "video",
        "base_url": server.base_url,
        "poll_interval_s": 0.02,
        "workflows": {"clip": write(folder, f"clip-{save}.json", clip_workflow(save, length))},
        "inputs": {"clip": inputs},
        "outputs": {"clip": {"clip": "9"}},
    }


def keyframe_params(
    shot: str = "s01-01",
    description: str = "Ana at the window",
    width: int = W,
    height: int = H,
    characters: tuple[str, ...] = ("ana",),
) -> dict[str, Any]:
    return {
        "style": STYLE,
        "width": width,
        "height": height,
        "seed": [7, shot],
        "location": "kitchen",
        "time_of_day": "night",
        "description": description,
        "framing": "medium",
        "characters": list(characters),
    }


CLIP_PARAMS = {"width": W, "height": H, "fps": FPS, "frames": 20, "camera": "push_in"}


def picture(path: Path, colour=(200, 70, 60), size=(W, H), mode: str = "RGB") -> Path:
    im = Image.new(mode, size, colour)
    ImageDraw.Draw(im).ellipse((size[0] * 0.2, size[1] * 0.3, size[0] * 0.8, size[1] * 0.7), fill=(20, 30, 120))
    im.save(path)
    return path


def digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def ffprobe(path: Path, *args: str) -> dict:
    out = subprocess.run(
        ["ffprobe", "-v", "error", *args, "-of", "json", str(path)], capture_output=True, check=True
    ).stdout
    return json.loads(out)


@pytest.fixture
def server(tmp_path):
    with comfyui_server(tmp_path / "comfyui") as s:
        yield s


@pytest.fixture
def figure(tmp_path) -> Path:
    return picture(tmp_path / "figure.png", (0, 0, 0, 0), (100, 200), "RGBA")


def run_in_thread(fn) -> tuple[threading.Thread, dict[str, Any]]:
    outcome: dict[str, Any] = {}

    def target():
        try:
            outcome["result"] = fn()
        except BaseException as exc:  # handed to the test
            outcome["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    return t, outcome


# -- images ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(W, H), (181, 333)])
def test_keyframe_is_exactly_the_asked_size(server, tmp_path, figure, size):
    """The latent is the size rounded up to a multiple of 8; the keyframe comes back exactly width x height."""
    server.delay_s = 0.2
    backend = ComfyUI("comfy", image_config(server, tmp_path / "wf"))
    result = backend.run(
        "keyframe", {"sheet:ana": figure}, keyframe_params(width=size[0], height=size[1]), tmp_path / "out"
    )
    with Image.open(result.files["keyframe"]) as im:
        assert (im.format, im.size) == ("PNG", size)
    sent = server.prompts[0]["prompt"]
    assert (sent["5"]["inputs"]["width"], sent["5"]["inputs"]["height"]) == (-(-size[0] // 8) * 8, -(-size[1] // 8) * 8)
    assert sent["3"]["inputs"]["seed"] == action_seed(keyframe_params())
    assert sent["10"]["inputs"]["image"] in server.uploads  # the character's figure, uploaded
    assert (result.meta["width"], result.meta["height"]) == size
    assert result.usage.provider_job_id == server.prompts[0]["prompt_id"]
    assert result.usage.model == "keyframe.json"
    assert result.usage.gpu_seconds >= 0.15  # execution_start .. execution_success, from ms timestamps


def test_seed_is_fixed_per_action(server, tmp_path, figure):
    """The same action sends the same seed every time; another shot sends another."""
    backend = ComfyUI("comfy", image_config(server, tmp_path / "wf"))
    for i, shot in enumerate(["s01-01", "s01-01", "s01-02"]):
        backend.run("keyframe", {"sheet:ana": figure}, keyframe_params(shot), tmp_path / f"o{i}")
    seeds = [p["prompt"]["3"]["inputs"]["seed"] for p in server.prompts]
    assert seeds[0] == seeds[1] != seeds[2]
    assert all(isinstance(s, int) and 0 <= s < 2**32 for s in seeds)


def test_keyframe_without_characters_removes_the_figure_node(server, tmp_path):
    """An establishing shot has no figure: its LoadImage node leaves the workflow instead of failing it."""
    backend = ComfyUI("comfy", image_config(server, tmp_path / "wf"))
    result = backend.run("keyframe", {}, keyframe_params(characters=()), tmp_path / "out")
    assert "10" not in server.prompts[0]["prompt"]
    assert result.meta["removed_nodes"] == ["10 (figure1)"]
    assert Image.open(result.files["keyframe"]).size == (W, H)


def test_sheet_yields_sheet_and_a_figure_derived_from_it(server, tmp_path):
    """A workflow making only the sheet still yields an RGBA figure: its front view, background keyed out."""
    backend = ComfyUI("comfy", image_config(server, tmp_path / "wf"))
    result = backend.run("sheet", {}, {"style": STYLE, "character": ANA, "seed": 3}, tmp_path / "out")
    assert set(result.files) == {"sheet", "figure"}
    assert Image.open(result.files["sheet"]).size == (768, 512)
    fig = Image.open(result.files["figure"])
    assert fig.mode == "RGBA"
    assert fig.getpixel((0, 0))[3] == 0  # background keyed out
    assert fig.getpixel((fig.width // 2, fig.height // 2))[3] == 255  # the body stays
    assert "derived from the sheet" in result.meta["figure"] and "outputs.sheet.figure" in result.meta["figure"]
    assert "Ana" in server.prompts[0]["prompt"]["6"]["inputs"]["text"]


# -- clips ----------------------------------------------------------------------------------------


@pytest.mark.media
@pytest.mark.parametrize("save", ["SaveAnimatedWEBP", "SaveImage", "VHS_VideoCombine"])
def test_clip_has_exact_frames_fps_size_and_concatenates_with_motion(server, tmp_path, save):
    """Whatever the server returns (animated WebP, PNG frames, MP4) becomes exactly frames at fps and
    width x height, encoded like motion.py's clips so the two join by stream copy."""
    backend = ComfyUI("comfy", clip_config(server, tmp_path / "wf", save))
    assert backend.features == ("last_frame",)
    kf = picture(tmp_path / "kf.png")
    result = backend.run(
        "clip", {"keyframe": kf, "last": picture(tmp_path / "next.png", (60, 160, 90))}, CLIP_PARAMS, tmp_path / "out"
    )
    sent = server.prompts[0]["prompt"]
    assert (sent["12"]["inputs"]["width"], sent["12"]["inputs"]["length"]) == (184, 20)
    assert sent["11"]["inputs"]["image"] in server.uploads
    clip = result.files["clip"]
    info = ffprobe(clip, "-count_frames", "-show_streams", "-show_format")
    (video,) = info["streams"]
    assert (video["codec_name"], video["profile"], video["pix_fmt"]) == ("h264", "High", "yuv420p")
    assert (video["width"], video["height"], int(video["nb_read_frames"])) == (W, H, 20)
    assert video["r_frame_rate"] == "12/1"
    assert float(info["format"]["duration"]) == pytest.approx(20 / FPS, abs=0.001)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["clip.mp4"]

    motion = MOTION.run(
        "clip", {"keyframe": kf}, {**CLIP_PARAMS, "frames": 13, "camera": "pan_left"}, tmp_path / "motion"
    ).files["clip"]
    listing = tmp_path / "list.txt"
    listing.write_text(f"file '{clip}'\nfile '{motion}'\n")
    joined = tmp_path / "joined.mp4"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-f", "concat", "-safe", "0", "-i", str(listing), "-c", "copy", str(joined)],
        check=True,
    )
    (video,) = ffprobe(joined, "-count_frames", "-show_streams")["streams"]
    assert int(video["nb_read_frames"]) == 33
    decode = subprocess.run(["ffmpeg", "-v", "error", "-i", str(joined), "-f", "null", "-"], capture_output=True)
    assert decode.returncode == 0 and decode.stderr == b""


@pytest.mark.media
def test_clip_of_another_length_is_retimed_and_last_frame_is_optional(server, tmp_path):
    """A workflow of fixed length (7 frames) still gives exactly `frames`; without a next keyframe the
    end-image node and its link leave the workflow."""
    backend = ComfyUI("comfy", clip_config(server, tmp_path / "wf", frames_mapped=False, length=7))
    result = backend.run("clip", {"keyframe": picture(tmp_path / "kf.png")}, CLIP_PARAMS, tmp_path / "out")
    (video,) = ffprobe(result.files["clip"], "-count_frames", "-show_streams")["streams"]
    assert (int(video["nb_read_frames"]), video["r_frame_rate"]) == (20, "12/1")
    assert result.meta["source"] == {"kind": "images", "files": 1, "frames": 7} and result.meta["retimed"]
    sent = server.prompts[0]["prompt"]
    assert "11" not in sent and "end_image" not in sent["12"]["inputs"]


# -- jobs that outlive the farm -------------------------------------------------------------------


def test_prompt_id_is_saved_before_waiting(server, tmp_path, figure):
    """The job record holds the accepted prompt id before the first /history poll, and during the wait."""
    record = FileJobRecord(tmp_path / "job.json")
    backend = ComfyUI("comfy", image_config(server, tmp_path / "wf"))
    server.hold()
    thread, outcome = run_in_thread(
        lambda: backend.run("keyframe", {"sheet:ana": figure}, keyframe_params(), tmp_path / "out", job=record)
    )
    server.wait_for(lambda: server.first_poll)
    ((polled, first_poll),) = server.first_poll.items()
    saved_at, state = next((t, s) for t, s in record.saves if s.get("submitted"))
    assert state["prompt_id"] == polled and saved_at < first_poll
    assert record.load()["prompt_id"] == polled  # durable while the job runs
    assert record.saves[0][1]["submitted"] is False  # the id is on record even before POST /prompt
    server.release()
    thread.join(20)
    assert "error" not in outcome, outcome.get("error")
    assert outcome["result"].usage.provider_job_id == polled


CHILD = r"""
import json, sys
from pathlib import Path
from tests.workers.test_comfyui import FileJobRecord
from workers.comfyui import ComfyUI
config, record, out_dir, params, figure = sys.argv[1:]
ComfyUI("comfy", json.loads(config)).run("keyframe", {"sheet:ana": Path(figure)}, json.loads(params), Path(out_dir),
                                         job=FileJobRecord(Path(record)))
"""


def test_job_outlives_a_restart_of_the_farm(server, tmp_path, figure):
    """A farm killed (SIGKILL) while waiting leaves the prompt id on record; a new backend with that
    record finishes the job without a second POST /prompt, with the outputs of an uninterrupted run."""
    config = image_config(server, tmp_path / "wf")
    record_path = tmp_path / "job.json"
    server.hold()
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            CHILD,
            json.dumps(config),
            str(record_path),
            str(tmp_path / "dead"),
            json.dumps(keyframe_params()),
            str(figure),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        server.wait_for(lambda: server.first_poll or child.poll() is not None, timeout=60)
        assert child.poll() is None, child.communicate()[1].decode()
        child.kill()  # the farm dies mid-wait
    finally:
        child.kill()
        child.communicate()
    assert child.returncode == -9
    state = FileJobRecord(record_path).load()
    assert state["submitted"] and state["prompt_id"] in server.first_poll and server.submits == 1

    release = threading.Timer(0.3, server.release)  # the job finishes while the new farm waits
    release.start()
    result = ComfyUI("comfy", config).run(
        "keyframe", {"sheet:ana": figure}, keyframe_params(), tmp_path / "out", job=FileJobRecord(record_path)
    )
    release.join()
    assert server.submits == 1
    assert result.usage.provider_job_id == state["prompt_id"]
    assert result.meta["resumed"] and "resubmitted" not in result.meta

    fresh = ComfyUI("comfy", config).run(
        "keyframe",
        {"sheet:ana": figure},
        keyframe_params(),
        tmp_path / "fresh",
        job=FileJobRecord(tmp_path / "other.json"),
    )
    assert server.submits == 2
    assert digest(fresh.files["keyframe"]) == digest(result.files["keyframe"])


def test_forgotten_prompt_is_submitted_anew(server, tmp_path, figure):
    """A saved prompt id the server no longer knows (neither history nor queue) is submitted again, and said so."""
    record = FileJobRecord(tmp_path / "job.json")
    record.save({"prompt_id": "lost-before-restart", "submitted": True, "base_url_host": "old:8188"})
    backend = ComfyUI("comfy", image_config(server, tmp_path / "wf"))
    result = backend.run("keyframe", {"sheet:ana": figure}, keyframe_params(), tmp_path / "out", job=record)
    assert server.submits == 1
    assert "lost-before-restart" in result.meta["resubmitted"] and result.meta["resumed"] is False
    assert record.load()["prompt_id"] == result.usage.provider_job_id != "lost-before-restart"


def test_server_forgetting_during_the_wait_resubmits(server, tmp_path, figure):
    """ComfyUI restarting while a job runs loses it; the waiting backend notices and submits again."""
    backend = ComfyUI("comfy", image_config(server, tmp_path / "wf"))
    server.hold()
    thread, outcome = run_in_thread(
        lambda: backend.run("keyframe", {"sheet:ana": figure}, keyframe_params(), tmp_path / "out")
    )
    server.wait_for(lambda: server.first_poll)
    server.forget()
    server.release()
    thread.join(20)
    assert "error" not in outcome, outcome.get("error")
    assert server.submits == 2 and "restarted" in outcome["result"].meta["resubmitted"]


def test_timeout_is_retryable_and_the_next_attempt_resumes(server, tmp_path, figure):
    """A job outlasting timeout_s fails retryably, keeping the record; the retry waits on the same job."""
    record = FileJobRecord(tmp_path / "job.json")
    server.hold()
    impatient = ComfyUI("comfy", image_config(server, tmp_path / "wf", timeout_s=0.3))
    with pytest.raises(StageError, match="timeout_s") as caught:
        impatient.run("keyframe", {"sheet:ana": figure}, keyframe_params(), tmp_path / "a", job=record)
    assert caught.value.retryable
    pid = record.load()["prompt_id"]
    server.release()
    result = ComfyUI("comfy", image_config(server, tmp_path / "wf")).run(
        "keyframe", {"sheet:ana": figure}, keyframe_params(), tmp_path / "b", job=record
    )
    assert server.submits == 1 and result.usage.provider_job_id == pid


# -- errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind,retryable", [("RuntimeError", False), ("torch.OutOfMemoryError", True)])
def test_node_execution_error_carries_the_node_message(server, tmp_path, figure, kind, retryable):
    """A node raising fails the action with its message; out of GPU memory may pass on a retry; the
    record no longer offers the failed job for resuming."""
    server.fail_node("8", "Expected all tensors to be on the same device", kind)
    record = FileJobRecord(tmp_path / "job.json")
    backend = ComfyUI("comfy", image_config(server, tmp_path / "wf"))
    message = r"node 8 \(VAEDecode\).*Expected all tensors to be on the same device"
    with pytest.raises(StageError, match=message) as caught:
        backend.run("keyframe", {"sheet:ana": figure}, keyframe_params(), tmp_path / "out", job=record)
    assert caught.value.retryable is retryable
    assert "prompt_id" not in record.load() and record.load()["failed_prompt_id"]


@pytest.mark.parametrize(
    "break_it,expected",
    [
        (lambda wf: wf["3"]["inputs"].pop("steps"), "Required input is missing"),
        (lambda wf: wf["8"].update(class_type="NoSuchNode"), "node NoSuchNode does not exist"),
    ],
)
def test_rejected_workflow_is_not_retryable(server, tmp_path, figure, break_it, expected):
    """ComfyUI's 400 (node_errors, unknown node types) fails the action for good, with its errors."""
    config = image_config(server, tmp_path / "wf")
    wf = image_workflow(figure=True)
    break_it(wf)
    config["workflows"]["keyframe"] = write(tmp_path / "wf", "broken.json", wf)
    with pytest.raises(StageError, match=expected) as caught:
        ComfyUI("comfy", config).run("keyframe", {"sheet:ana": figure}, keyframe_params(), tmp_path / "out")
    assert not caught.value.retryable and "broken.json" in str(caught.value)
    assert server.submits == 0


@pytest.mark.parametrize("path,times", [("/prompt", 1), ("/upload/image", 1), ("/history", 5)])
def test_server_errors_are_retryable(server, tmp_path, figure, path, times):
    """A 500 from any endpoint is retryable (polls tolerate a few); the retry succeeds, without a double submit."""
    record = FileJobRecord(tmp_path / "job.json")
    backend = ComfyUI("comfy", image_config(server, tmp_path / "wf"))
    server.fail_next(path, 500, times=times)
    with pytest.raises(StageError) as caught:
        backend.run("keyframe", {"sheet:ana": figure}, keyframe_params(), tmp_path / "a", job=record)
    assert caught.value.retryable and "500" in str(caught.value)
    result = backend.run("keyframe", {"sheet:ana": figure}, keyframe_params(), tmp_path / "b", job=record)
    assert server.submits == 1 and Image.open(result.files["keyframe"]).size == (W, H)
    if path == "/prompt":
        assert "before ComfyUI accepted it" in result.meta["resubmitted"]


def test_unreachable_server_is_retryable(tmp_path, figure):
    with comfyui_server(tmp_path / "gone") as gone:
        config = image_config(gone, tmp_path / "wf")
    backend = ComfyUI("comfy", config)
    with pytest.raises(StageError, match="cannot reach") as caught:
        backend.run("keyframe", {"sheet:ana": figure}, keyframe_params(), tmp_path / "out")
    assert caught.value.retryable
    with pytest.raises(StageError):
        backend.check()


def test_check_describes_the_server_and_finds_missing_nodes(server, tmp_path):
    config = image_config(server, tmp_path / "wf")
    assert ComfyUI("comfy", config).check() == (
        "ComfyUI 0.3.test at " + config["base_url"][7:] + ": cuda:0 Fake GPU 24 GiB; ops sheet, keyframe"
    )
    wf = image_workflow()
    wf["11"] = {"class_type": "IPAdapterAdvanced", "inputs": {}}
    config["workflows"]["sheet"] = write(tmp_path / "wf", "ip.json", wf)
    with pytest.raises(StageError, match="lacks node types IPAdapterAdvanced"):
        ComfyUI("comfy", config).check()


# -- settings -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change,field",
    [
        (lambda c: c["workflows"].update(keyframe="/nonexistent/keyframe.json"), "backends.comfy.workflows.keyframe"),
        (
            lambda c: c["inputs"]["keyframe"].update(seed=["99", "seed"]),
            "backends.comfy.inputs.keyframe.seed: node '99'",
        ),
        (
            lambda c: c["inputs"]["keyframe"].update(seed=["3", "noise"]),
            "backends.comfy.inputs.keyframe.seed: node 3 (KSampler) has no input 'noise'",
        ),
        (
            lambda c: c["inputs"]["keyframe"].update(strength=["3", "cfg"]),
            "backends.comfy.inputs.keyframe.strength: unknown input",
        ),
        (lambda c: c["outputs"].pop("keyframe"), "backends.comfy.outputs.keyframe.keyframe: missing"),
        (lambda c: c["workflows"].pop("sheet"), "backends.comfy.workflows.sheet: missing"),
        (
            lambda c: c["workflows"].update(clip=c["workflows"]["sheet"]),
            "backends.comfy.workflows.clip: a image backend",
        ),
        (lambda c: c.update(base_url="comfy:8188"), "backends.comfy.base_url"),
        (lambda c: c.update(poll_interval_s=0), "backends.comfy.poll_interval_s"),
    ],
)
def test_config_errors_name_the_setting(server, tmp_path, change, field):
    config = image_config(server, tmp_path / "wf")
    change(config)
    with pytest.raises(ConfigError) as caught:
        ComfyUI("comfy", config)
    assert field in str(caught.value)


def test_ui_format_workflow_is_refused_with_the_fix(server, tmp_path):
    config = image_config(server, tmp_path / "wf")
    config["workflows"]["sheet"] = write(tmp_path / "wf", "ui.json", {"nodes": [], "links": [], "version": 0.4})
    with pytest.raises(ConfigError, match=r"backends\.comfy\.workflows\.sheet: .*Export \(API\)"):
        ComfyUI("comfy", config)


def test_version_follows_workflow_content_not_server(server, tmp_path):
    config = image_config(server, tmp_path / "wf")
    version = ComfyUI("comfy", config).version
    assert ComfyUI("comfy", {**config, "base_url": "http://elsewhere:8188", "timeout_s": 60}).version == version
    path = Path(config["workflows"]["keyframe"])
    path.write_text(json.dumps(json.loads(path.read_text())))  # reformatted, same workflow
    assert ComfyUI("comfy", config).version == version
    wf = image_workflow(figure=True)
    wf["3"]["inputs"]["steps"] = 30
    path.write_text(json.dumps(wf))
    assert ComfyUI("comfy", config).version != version
    assert ComfyUI("comfy", config).features == () and ComfyUI("comfy", config).resumable


def test_hostile_text_reaches_the_server_only_inside_json_values(server, tmp_path, figure):
    """Quotes, newlines, paths and shell syntax from a script stay inside the prompt's JSON string."""
    hostile = "He said \"run\"\n../../etc/passwd $(rm -rf /) `id`; 'DROP' %2e%2e/"
    backend = ComfyUI("comfy", image_config(server, tmp_path / "wf"))
    result = backend.run("keyframe", {"sheet:ana": figure}, keyframe_params(description=hostile), tmp_path / "out")
    character = {**ANA, "id": "../../x", "name": hostile, "look": {"description": hostile}}
    backend.run("sheet", {}, {"style": STYLE, "character": character, "seed": 1}, tmp_path / "sheet")
    assert hostile in server.prompts[0]["prompt"]["6"]["inputs"]["text"]
    assert server.prompts[1]["prompt"]["6"]["inputs"]["text"].count(hostile) == 2
    for request in server.requests:
        seen = urllib.parse.unquote(request.path)
        assert not any(s in seen for s in ("passwd", "$(", "`", "..", "DROP", "\n", '"')), request.path
    assert all(re.fullmatch(r"farm-[0-9a-f]{40}\.png", name) for name in server.uploads)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["keyframe.png"]
    assert result.files["keyframe"].parent == tmp_path / "out"


def test_gpu_seconds_from_comfyui_status_messages():
    status = {
        "status_str": "success",
        "completed": True,
        "messages": [
            ["execution_start", {"prompt_id": "p", "timestamp": 1_700_000_000_000}],
            ["execution_cached", {"nodes": [], "prompt_id": "p", "timestamp": 1_700_000_000_010}],
            ["execution_success", {"prompt_id": "p", "timestamp": 1_700_000_012_500}],
        ],
    }
    assert gpu_seconds(status) == 12.5
    assert gpu_seconds({"messages": []}) == 0.0
