"""Talking shots on ComfyUI: lip-sync workflows and speech-native clips, against a real local server
speaking ComfyUI's HTTP API (tests.support.comfyui_server), with the example workflows and the
settings of deploy/comfyui/README.md.

The fake LatentSync node re-encodes the uploaded clip with ffmpeg (a real MP4 of the frames asked
for); the fake Wan S2V graph draws its frames and muxes the uploaded dialogue back in as AAC;
``misshape`` makes either come back with other figures.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
import threading
import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from farm.catalog import Catalog
from tests.support.comfyui_server import ComfyUIServer, comfyui_server
from tests.workers.test_comfyui import FileJobRecord, ffprobe, picture, run_in_thread
from workers.api import ConfigError, StageError
from workers.comfyui import ComfyUI
from workers.video.motion import BACKEND as MOTION

pytestmark = pytest.mark.media

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "deploy" / "comfyui"
W, H, FPS, FRAMES, SR = 64, 112, 12, 20, 48_000
TOTAL = FRAMES * SR // FPS  # the clip's length in samples


def documented(server: ComfyUIServer) -> dict[str, dict[str, Any]]:
    """The FARM_BACKENDS blocks of deploy/comfyui/README.md, pointed at this server and these files."""
    text = (EXAMPLES / "README.md").read_text(encoding="utf-8")
    configs: dict[str, dict[str, Any]] = {}
    for block in re.findall(r"```json\n(.*?)```", text, re.S):
        configs |= json.loads(block)
    for config in configs.values():
        config["base_url"] = server.base_url
        config["poll_interval_s"] = 0.02
        config["workflows"] = {op: str(EXAMPLES / Path(p).name) for op, p in config["workflows"].items()}
    return configs


def tone(path: Path, seconds: float, hz: float, rate: int = SR) -> Path:
    t = np.arange(int(seconds * rate)) / rate
    pcm = (0.4 * np.sin(2 * np.pi * hz * t) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return path


def samples(data: bytes) -> np.ndarray:
    """The 16-bit mono samples of a WAV's bytes."""
    head = data.index(b"data") + 8
    return np.frombuffer(data[head:], "<i2")


@pytest.fixture
def server(tmp_path):
    with comfyui_server(tmp_path / "comfyui") as s:
        yield s


@pytest.fixture
def shot(tmp_path) -> dict[str, Any]:
    """A shot's clip (the embedded motion backend's) and two lines, ana's then ben's."""
    kf = picture(tmp_path / "kf.png", size=(W, H))
    params = {"width": W, "height": H, "fps": FPS, "frames": FRAMES, "camera": "push_in"}
    clip = MOTION.run("clip", {"keyframe": kf}, params, tmp_path / "motion").files["clip"]
    lines = {"line0": tone(tmp_path / "l0.wav", 0.5, 220), "line1": tone(tmp_path / "l1.wav", 0.4, 330)}
    return {"keyframe": kf, "clip": clip, "lines": lines, "offsets": (4_800, 36_000)}


def lip_params(shot: dict[str, Any], speakers=("ana", "ben")) -> dict[str, Any]:
    lines = [
        {"input": f"line{i}", "offset_samples": o, "speaker": who, "off_screen": False}
        for i, (o, who) in enumerate(zip(shot["offsets"], speakers))
    ]
    return {"width": W, "height": H, "fps": FPS, "frames": FRAMES, "sample_rate": SR, "camera": "push_in"} | {
        "faces": {},
        "lines": lines,
        "take": 1,
    }


def speech_params(shot: dict[str, Any], texts=("Where were you?", "Out.")) -> dict[str, Any]:
    said = [
        {"text": text, "speaker": who, "name": who.title(), "voice": {"rate": 175}, "off_screen": False}
        | {"offset_samples": o, "input": f"line{i}"}
        for i, (text, who, o) in enumerate(zip(texts, ("ana", "ben"), shot["offsets"]))
    ]
    return {"width": W, "height": H, "fps": FPS, "frames": FRAMES, "camera": "static", "take": 1} | {
        "sample_rate": SR,
        "lines": said,
    }


def run_lipsync(backend: ComfyUI, shot: dict[str, Any], out: Path, job=None, **changes: Any):
    inputs = {"clip": shot["clip"], **shot["lines"]}
    return backend.run("lipsync", inputs, lip_params(shot) | changes, out, job=job)


def run_speech(backend: ComfyUI, shot: dict[str, Any], out: Path, params: dict[str, Any] | None = None):
    inputs = {"keyframe": shot["keyframe"], **shot["lines"]}
    return backend.run("clip", inputs, params or speech_params(shot), out)


def video_stream(path: Path) -> dict[str, Any]:
    (video,) = [s for s in ffprobe(path, "-count_frames", "-show_streams")["streams"] if s["codec_type"] == "video"]
    return video


# -- the examples and their settings --------------------------------------------------------------


def test_examples_load_and_check_with_the_documented_settings(server):
    """Each example workflow loads with the README's mapping (load_templates), the fake server knows
    every node class it uses, and the farm sees the stage and features the README describes."""
    configs = documented(server)
    assert set(configs) == {"comfy-lipsync", "comfy-s2v"}
    lip, s2v = ComfyUI("comfy-lipsync", configs["comfy-lipsync"]), ComfyUI("comfy-s2v", configs["comfy-s2v"])
    assert lip.check().endswith("ops lipsync") and s2v.check().endswith("ops clip")
    assert (lip.stage, lip.ops, lip.features, lip.tools) == ("lipsync", ("lipsync",), (), ("ffmpeg", "ffprobe"))
    assert s2v.features == ("speech", "voice_reference")
    catalog = Catalog(configs)
    assert (catalog.load_stage("comfy-lipsync"), catalog.load_stage("comfy-s2v")) == ("lipsync", "video")
    assert catalog.load("lipsync", "comfy-lipsync").ops == ("lipsync",)
    estimate = lip.estimate("lipsync", {"frames": 60, "fps": 12})
    assert (estimate.seconds, estimate.gpu_seconds) == (25.0, 25.0)
    assert lip.resources.num_gpus == 0  # the GPU is the ComfyUI server's


# -- lip-sync -------------------------------------------------------------------------------------


def test_lipsync_returns_the_exact_clip_encoded_as_clips_are(server, tmp_path, shot):
    """The shot's clip and its dialogue (every line at its offset, the clip's length) are uploaded by
    digest; the clip comes back exactly 64x112 at 12 fps with 20 frames, encoded as motion's clips
    are, so the two join by stream copy."""
    backend = ComfyUI("comfy-lipsync", documented(server)["comfy-lipsync"])
    result = run_lipsync(backend, shot, tmp_path / "out")
    sent = server.prompts[0]["prompt"]
    assert server.uploads[sent["1"]["inputs"]["video"]] == shot["clip"].read_bytes()
    assert (sent["1"]["inputs"]["frame_load_cap"], sent["4"]["inputs"]["frame_rate"]) == (FRAMES, FPS)
    assert all(re.fullmatch(r"farm-[0-9a-f]{40}\.(mp4|wav)", name) for name in server.uploads)
    heard = samples(server.uploads[sent["2"]["inputs"]["audio"]])
    assert len(heard) == TOTAL  # the dialogue is as long as the clip
    assert not heard[: shot["offsets"][0]].any() and heard[shot["offsets"][0] : shot["offsets"][0] + 2400].any()
    assert heard[shot["offsets"][1] + 100] != 0 and not heard[-2000:].any()

    clip, reference = video_stream(result.files["clip"]), video_stream(shot["clip"])
    assert (clip["width"], clip["height"], clip["r_frame_rate"], int(clip["nb_read_frames"])) == (W, H, "12/1", 20)
    keys = ("codec_name", "profile", "pix_fmt", "time_base", "color_space")
    assert {k: clip.get(k) for k in keys} == {k: reference.get(k) for k in keys}
    assert [s["codec_type"] for s in ffprobe(result.files["clip"], "-show_streams")["streams"]] == ["video"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["clip.mp4"]
    assert result.meta["frames"] == FRAMES and result.meta["prompt_id"] == server.prompts[0]["prompt_id"]
    assert result.meta["sound"].startswith("dropped") and result.meta["resumed"] is False
    assert result.usage.provider_job_id == result.meta["prompt_id"]
    listing = tmp_path / "list.txt"
    listing.write_text(f"file '{result.files['clip']}'\nfile '{shot['clip']}'\n")
    joined = tmp_path / "joined.mp4"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-f", "concat", "-safe", "0", "-i", str(listing), "-c", "copy", str(joined)]
    )
    assert int(video_stream(joined)["nb_read_frames"]) == 2 * FRAMES


def test_speaker_tracks_fill_their_slots_and_a_missing_speaker_leaves(server, tmp_path, shot):
    """A multi-speaker template gets each on-screen speaker's lines alone; a slot the shot has no
    speaker for loses its LoadAudio node and the links to it."""
    config = documented(server)["comfy-lipsync"]
    wf = json.loads(Path(config["workflows"]["lipsync"]).read_text())
    wf["20"] = {"class_type": "AudioEncoderLoader", "inputs": {"audio_encoder_name": "wav2vec2.safetensors"}}
    for nid in ("21", "22"):  # each speaker's track, encoded for an optional input of the lip-sync node
        wf[nid] = {"class_type": "LoadAudio", "inputs": {"audio": "speaker.wav"}}
        wf[f"3{nid}"] = {"class_type": "AudioEncoderEncode", "inputs": {"audio_encoder": ["20", 0], "audio": [nid, 0]}}
        wf["3"]["inputs"][f"speaker_{nid[1]}"] = [f"3{nid}", 0]
    path = tmp_path / "multi.json"
    path.write_text(json.dumps(wf))
    config = copy.deepcopy(config) | {"workflows": {"lipsync": str(path)}}
    config["inputs"]["lipsync"] |= {"speaker1": ["21", "audio"], "speaker2": ["22", "audio"]}
    backend = ComfyUI("comfy-lipsync", config)

    both = run_lipsync(backend, shot, tmp_path / "both")
    sent = server.prompts[0]["prompt"]
    first, second = (samples(server.uploads[sent[n]["inputs"]["audio"]]) for n in ("21", "22"))
    a, b = shot["offsets"]
    assert first[a + 100] != 0 and not first[b:].any()  # ana's line only
    assert second[b + 100] != 0 and not second[:b].any()  # ben's line only
    assert both.meta["speakers"] == ["ana", "ben"] and "removed_nodes" not in both.meta

    alone = run_lipsync(backend, shot, tmp_path / "alone", lines=lip_params(shot, ("ana", "ana"))["lines"])
    sent = server.prompts[1]["prompt"]
    # the encoder left without its required audio goes too; the lip-sync node keeps speaker 1 only
    assert "22" not in sent and "322" not in sent and sent["3"]["inputs"]["speaker_1"] == ["321", 0]
    assert "speaker_2" not in sent["3"]["inputs"] and alone.meta["speakers"] == ["ana"]
    assert alone.meta["removed_nodes"] == ["22 (speaker2)", "322 (needs audio)"]
    assert int(video_stream(alone.files["clip"])["nb_read_frames"]) == FRAMES


CHILD = r"""
import json, sys
from pathlib import Path
from tests.workers.test_comfyui import FileJobRecord
from workers.comfyui import ComfyUI
config, record, out_dir, params, inputs = sys.argv[1:]
ComfyUI("comfy-lipsync", json.loads(config)).run(
    "lipsync", {k: Path(v) for k, v in json.loads(inputs).items()}, json.loads(params), Path(out_dir),
    job=FileJobRecord(Path(record)))
"""


def test_lipsync_job_outlives_a_farm_killed_mid_job(server, tmp_path, shot):
    """A farm killed (SIGKILL) while ComfyUI runs its lip-sync leaves the prompt id on record; a new
    backend with that record waits on the same prompt (no second POST /prompt) and finishes it."""
    config = documented(server)["comfy-lipsync"]
    record_path = tmp_path / "job.json"
    inputs = {"clip": str(shot["clip"])} | {k: str(v) for k, v in shot["lines"].items()}
    server.hold()
    argv = [json.dumps(config), str(record_path), str(tmp_path / "dead"), json.dumps(lip_params(shot))]
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, *argv, json.dumps(inputs)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        server.wait_for(lambda: server.first_poll or child.poll() is not None, timeout=60)
        assert child.poll() is None, child.communicate()[1].decode()
        child.kill()
    finally:
        child.kill()
        child.communicate()
    assert child.returncode == -9
    state = FileJobRecord(record_path).load()
    assert state["submitted"] and state["op"] == "lipsync" and server.submits == 1
    assert state["prompt_id"] in server.first_poll

    release = threading.Timer(0.3, server.release)  # the job finishes while the new farm waits
    release.start()
    result = run_lipsync(ComfyUI("comfy-lipsync", config), shot, tmp_path / "out", job=FileJobRecord(record_path))
    release.join()
    assert server.submits == 1 and result.meta["prompt_id"] == state["prompt_id"]
    assert result.meta["resumed"] and "resubmitted" not in result.meta
    assert int(video_stream(result.files["clip"])["nb_read_frames"]) == FRAMES


def test_lipsync_resubmits_when_comfyui_restarts_mid_job(server, tmp_path, shot):
    """ComfyUI restarting while it runs the job loses it; the waiting backend uploads and submits again."""
    backend = ComfyUI("comfy-lipsync", documented(server)["comfy-lipsync"])
    server.hold()
    thread, outcome = run_in_thread(lambda: run_lipsync(backend, shot, tmp_path / "out"))
    server.wait_for(lambda: server.first_poll)
    server.forget()
    server.release()
    thread.join(30)
    assert "error" not in outcome, outcome.get("error")
    assert server.submits == 2 and "restarted" in outcome["result"].meta["resubmitted"]
    assert server.prompts[0]["prompt_id"] != outcome["result"].meta["prompt_id"] == server.prompts[1]["prompt_id"]


@pytest.mark.parametrize(
    "shape,found",
    [
        ({"frames": -3}, "64x112 at 12 fps with 17 frames"),
        ({"size": (80, 112)}, "80x112 at 12 fps with 20 frames"),
        ({"fps": 15}, "64x112 at 15 fps with 20 frames"),
    ],
)
def test_lipsync_of_another_shape_fails_with_both_figures(server, tmp_path, shot, shape, found):
    """A lip-sync clip is never retimed or rescaled: other figures fail the action for good, naming both."""
    server.misshape(**shape)
    backend = ComfyUI("comfy-lipsync", documented(server)["comfy-lipsync"])
    with pytest.raises(StageError) as caught:
        run_lipsync(backend, shot, tmp_path / "out")
    assert not caught.value.retryable
    assert found in str(caught.value) and "64x112 at 12 fps with 20 frames was asked for" in str(caught.value)
    assert not (tmp_path / "out" / "clip.mp4").exists() and not (tmp_path / "out" / "comfyui-talk").exists()


def test_lipsync_output_of_frames_is_refused_with_the_fix(server, tmp_path, shot):
    """PNG frames carry no frame rate to check: a lip-sync output must be a video, and the error says how."""
    config = documented(server)["comfy-lipsync"]
    wf = json.loads(Path(config["workflows"]["lipsync"]).read_text())
    wf["4"] = {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "frame"}}
    path = tmp_path / "frames.json"
    path.write_text(json.dumps(wf))
    config = copy.deepcopy(config) | {"workflows": {"lipsync": str(path)}}
    del config["inputs"]["lipsync"]["fps"]
    with pytest.raises(StageError, match=r"not a video.*outputs\.lipsync\.clip.*VHS_VideoCombine") as caught:
        run_lipsync(ComfyUI("comfy-lipsync", config), shot, tmp_path / "out")
    assert not caught.value.retryable


# -- speech-native clips --------------------------------------------------------------------------


def test_speech_clip_returns_clip_sound_and_where_each_line_is_said(server, tmp_path, shot):
    """The S2V workflow is driven by the dialogue track; the clip comes back exact, its own sound as
    the shot's WAV (the clip's length at the plan's rate) and each line's start and end."""
    backend = ComfyUI("comfy-s2v", documented(server)["comfy-s2v"])
    result = run_speech(backend, shot, tmp_path / "out")
    sent = server.prompts[0]["prompt"]
    assert len(samples(server.uploads[sent["5"]["inputs"]["audio"]])) == TOTAL
    assert sent["7"]["inputs"]["image"] in server.uploads
    # a length Wan S2V makes (frame_step [4, 1]): 21 asked, the first 20 kept
    assert (sent["10"]["inputs"]["width"], sent["10"]["inputs"]["length"], sent["14"]["inputs"]["fps"]) == (W, 21, 12)
    assert '"speaker":"Ana","text":"Where were you?"' in sent["8"]["inputs"]["text"]
    assert set(result.files) == {"clip", "audio"}
    clip = video_stream(result.files["clip"])
    assert (clip["width"], clip["height"], clip["r_frame_rate"], int(clip["nb_read_frames"])) == (W, H, "12/1", 20)
    assert [s["codec_type"] for s in ffprobe(result.files["clip"], "-show_streams")["streams"]] == ["video"]
    with wave.open(str(result.files["audio"])) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()) == (1, 2, SR, TOTAL)
    assert result.meta["audio"] == "the workflow's own sound"
    a, b = shot["offsets"]
    assert result.meta["lines"] == [
        {"start": a / SR, "end": (a + 24_000) / SR},
        {"start": b / SR, "end": (b + 19_200) / SR},
    ]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["audio.wav", "clip.mp4"]


def test_speech_clip_without_sound_returns_the_dialogue_it_was_driven_by(server, tmp_path, shot):
    config = documented(server)["comfy-s2v"]
    wf = json.loads(Path(config["workflows"]["clip"]).read_text())
    del wf["14"]["inputs"]["audio"]  # CreateVideo makes a silent video
    path = tmp_path / "silent.json"
    path.write_text(json.dumps(wf))
    result = run_speech(ComfyUI("comfy-s2v", config | {"workflows": {"clip": str(path)}}), shot, tmp_path / "out")
    uploaded = server.uploads[server.prompts[0]["prompt"]["5"]["inputs"]["audio"]]
    assert result.files["audio"].read_bytes() == uploaded and result.meta["audio"].startswith("the dialogue track")


def test_speech_clip_of_another_length_fails_with_both_figures(server, tmp_path, shot):
    """A speech clip 3 frames short of what was asked is a failed action, not a retimed one."""
    server.misshape(frames=-3)
    backend = ComfyUI("comfy-s2v", documented(server)["comfy-s2v"])
    with pytest.raises(StageError, match="with 18 frames; 64x112 at 12 fps with 21 frames was asked for") as caught:
        run_speech(backend, shot, tmp_path / "out")
    assert not caught.value.retryable


def test_a_model_of_4n_plus_1_lengths_is_asked_for_the_next_and_its_first_frames_are_kept(server, tmp_path, shot):
    """frame_step [4, 1] (Wan S2V): a 20-frame shot asks for 21 and keeps the first 20, sound cut to match."""
    backend = ComfyUI("comfy-s2v", documented(server)["comfy-s2v"] | {"frame_step": [4, 1]})
    result = run_speech(backend, shot, tmp_path / "out")
    assert server.prompts[0]["prompt"]["10"]["inputs"]["length"] == 21
    assert int(video_stream(result.files["clip"])["nb_read_frames"]) == 20
    with wave.open(str(result.files["audio"])) as w:
        assert w.getnframes() == TOTAL
    with pytest.raises(ConfigError, match="frame_step"):
        ComfyUI("comfy-s2v", documented(server)["comfy-s2v"] | {"frame_step": [0, 1]})


def test_clip_without_lines_on_a_speech_backend_is_an_ordinary_clip(server, tmp_path, shot):
    """A shot nobody speaks in is driven by silence and comes back as any clip (retimed if need be)."""
    server.misshape(frames=-3)
    backend = ComfyUI("comfy-s2v", documented(server)["comfy-s2v"])
    params = {"width": W, "height": H, "fps": FPS, "frames": FRAMES, "camera": "static", "take": 1}
    result = backend.run("clip", {"keyframe": shot["keyframe"]}, params, tmp_path / "out")
    assert set(result.files) == {"clip"} and result.meta["retimed"]
    assert int(video_stream(result.files["clip"])["nb_read_frames"]) == FRAMES
    silence = samples(server.uploads[server.prompts[0]["prompt"]["5"]["inputs"]["audio"]])
    assert len(silence) == FRAMES * 16_000 // FPS and not silence.any()


def test_hostile_line_text_reaches_the_prompt_only_as_a_json_value(server, tmp_path, shot):
    hostile = 'He said "run"\n]}, {"speaker": "ben"} ../../etc/passwd $(rm -rf /)'
    backend = ComfyUI("comfy-s2v", documented(server)["comfy-s2v"])
    run_speech(backend, shot, tmp_path / "out", speech_params(shot, (hostile, "Out.")))
    text = server.prompts[0]["prompt"]["8"]["inputs"]["text"]
    said = json.loads(text[text.index("[") : text.rindex("]") + 1])
    assert [line["text"] for line in said] == [hostile, "Out."] and len(said) == 2
    assert all(re.fullmatch(r"farm-[0-9a-f]{40}\.(png|wav)", name) for name in server.uploads)


def test_speech_lines_that_do_not_make_a_shot_fail_naming_the_field(server, tmp_path, shot):
    backend = ComfyUI("comfy-s2v", documented(server)["comfy-s2v"])
    params = speech_params(shot)
    params["lines"][1]["offset_samples"] = 10_000  # inside line 0
    with pytest.raises(StageError, match=r"params.lines\[0\] and params.lines\[1\] overlap"):
        run_speech(backend, shot, tmp_path / "a", params)
    params = speech_params(shot)
    del params["lines"][0]["input"]
    with pytest.raises(StageError, match=r"params.lines\[0\].input = None.*voice_reference"):
        run_speech(backend, shot, tmp_path / "b", params)
    assert server.submits == 0


# -- settings -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "which,change,field",
    [
        ("comfy-lipsync", lambda c: c["inputs"]["lipsync"].update(video=["99", "video"]), "lipsync.video: node '99'"),
        ("comfy-lipsync", lambda c: c["inputs"]["lipsync"].update(mouth=["3", "seed"]), "lipsync.mouth: unknown input"),
        ("comfy-lipsync", lambda c: c["inputs"]["lipsync"].update(audio=["3", "audio"]), "is a link"),
        ("comfy-lipsync", lambda c: c["inputs"]["lipsync"].pop("video"), "inputs.lipsync.video: missing"),
        ("comfy-lipsync", lambda c: c["inputs"]["lipsync"].pop("audio"), "inputs.lipsync.audio: missing"),
        ("comfy-lipsync", lambda c: c["outputs"].pop("lipsync"), "outputs.lipsync.clip: missing"),
        ("comfy-lipsync", lambda c: c.update(speech=True), "comfy-lipsync.speech: only a video backend"),
        ("comfy-s2v", lambda c: c["inputs"]["clip"].pop("audio"), "comfy-s2v.inputs.clip.audio: missing"),
        ("comfy-s2v", lambda c: c.pop("speech"), "inputs.clip.audio: only a speech-native backend"),
    ],
)
def test_bad_mappings_name_the_setting(server, which, change, field):
    config = copy.deepcopy(documented(server)[which])
    change(config)
    with pytest.raises(ConfigError) as caught:
        ComfyUI(which, config)
    assert f"backends.{which}." in str(caught.value) and field in str(caught.value)
