"""The replicate lip-sync backend against a real local server speaking Replicate's HTTP API, whose
"model" writes real MP4s with ffmpeg. Shots are 64x112 at 12 fps, 24 frames, two lines at 16 kHz.
Predictions are held on the server (``hold``/``release``) rather than timed."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import threading
import time
import urllib.request
import wave
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from farm.catalog import Catalog
from tests.conftest import need
from tests.support.replicate_server import VERSION, replicate_server
from workers.api import ConfigError, StageError
from workers.jobs.replicate import Replicate
from workers.video.motion import BACKEND as MOTION

ROOT = Path(__file__).resolve().parents[2]
W, H, FPS, FRAMES, SR = 64, 112, 12, 24, 16000
TOTAL = FRAMES * SR // FPS  # samples in the shot
LINES = [(1600, 0.5, "ana", 220.0), (16000, 0.4, "ben", 330.0)]  # offset, seconds, speaker, pitch
PARAMS = {
    "width": W,
    "height": H,
    "fps": FPS,
    "frames": FRAMES,
    "sample_rate": SR,
    "camera": "static",
    "faces": {},
    "lines": [{"input": f"line{i}", "offset_samples": o, "speaker": who} for i, (o, _, who, _) in enumerate(LINES)],
    "take": 0,
}


class FileJobRecord:
    """A JobRecord in one local file, replaced atomically; ``saves``: (time.monotonic(), state) of each save."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.saves: list[tuple[float, dict[str, Any]]] = []

    def load(self) -> dict[str, Any] | None:
        return json.loads(self.path.read_text()) if self.path.exists() else None

    def save(self, state: Mapping[str, Any]) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w") as f:
            json.dump(dict(state), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        self.saves.append((time.monotonic(), dict(state)))


class StoreDownOnId(FileJobRecord):
    """Saves the nonce, then fails the save of the prediction id, as a store going down would."""

    def save(self, state: Mapping[str, Any]) -> None:
        if "prediction_id" in state:
            raise OSError(5, "Input/output error", str(self.path))
        super().save(state)


@pytest.fixture(scope="module")
def shot(tmp_path_factory) -> dict[str, Path]:
    need(None if all(map(__import__("shutil").which, ("ffmpeg", "ffprobe"))) else "not installed: ffmpeg")
    folder = tmp_path_factory.mktemp("shot")
    clip = folder / "clip.mp4"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-f", "lavfi", "-i", f"testsrc=size={W}x{H}:rate={FPS}", "-frames:v", str(FRAMES)]
        + ["-c:v", "libx264", "-pix_fmt", "yuv420p", str(clip)],
        check=True,
    )
    files = {"clip": clip}
    for i, (_, seconds, _, pitch) in enumerate(LINES):
        t = np.arange(int(seconds * SR)) / SR
        files[f"line{i}"] = write_wav(folder / f"line{i}.wav", 0.3 * np.sin(2 * math.pi * pitch * t))
    return files


def write_wav(path: Path, samples: np.ndarray) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SR)
        w.writeframes((np.clip(samples, -1, 1) * 32767).round().astype("<i2").tobytes())
    return path


def read_wav(data: bytes, path: Path) -> tuple[int, np.ndarray]:
    path.write_bytes(data)
    with wave.open(str(path), "rb") as w:
        return w.getframerate(), np.frombuffer(w.readframes(w.getnframes()), "<i2")


@pytest.fixture
def server(tmp_path):
    with replicate_server(tmp_path / "replicate") as s:
        yield s


def config(server, **over: Any) -> dict[str, Any]:
    base = {"kind": "replicate", "stage": "lipsync", "base_url": server.base_url, "model": "acme/lipsync"}
    return {**base, "api_key": server.api_key, "poll_interval_s": 0.05, "timeout_s": 30, **over}


def ffprobe(path: Path) -> dict:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-count_frames", "-show_streams", "-show_format", "-of", "json", str(path)],
        capture_output=True,
        check=True,
    ).stdout
    return json.loads(out)


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


def api(server, method: str, path: str, body: Any = None) -> Any:
    """A request of the test's own to the server (as another client of the account)."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        f"{server.base_url}/{path}",
        data=data,
        method=method,
        headers={"Authorization": f"Bearer {server.api_key}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


# -- the clip -------------------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["model", "version"])
def test_clip_is_exact_encoded_as_clips_are_and_audio_is_the_dialogue(server, shot, tmp_path, target):
    """The returned clip becomes exactly 64x112 at 12 fps, 24 frames, H.264 High without sound, joins a
    motion clip by stream copy; the model was given the whole shot's dialogue as one track."""
    pick = {"model": "acme/lipsync"} if target == "model" else {"model": None, "version": f"acme/lipsync:{VERSION}"}
    inputs = {"video": "video", "audio": "audio", "fps": "fps", "frames": "frames", "seed": "seed"}
    backend = Replicate("lips", config(server, inputs=inputs, input={"guidance_scale": 1.5}, **pick))
    result = backend.run("lipsync", shot, PARAMS, tmp_path / "out")

    (created,) = [r for r in server.requests if r.method == "POST" and r.path.endswith("/predictions")]
    assert created.path == ("/v1/models/acme/lipsync/predictions" if target == "model" else "/v1/predictions")
    assert created.body.get("version") == (None if target == "model" else VERSION)
    given = created.body["input"]
    assert (given["fps"], given["frames"], given["guidance_scale"], type(given["seed"])) == (12, 24, 1.5, int)
    assert server.file_of(given["video"]).data == shot["clip"].read_bytes()
    rate, audio = read_wav(server.file_of(given["audio"]).data, tmp_path / "sent.wav")
    assert (rate, len(audio)) == (SR, TOTAL)  # exactly the shot's length
    for i, (offset, _, _, _) in enumerate(LINES):
        _, line = read_wav(shot[f"line{i}"].read_bytes(), tmp_path / f"l{i}.wav")
        assert np.array_equal(audio[offset : offset + len(line)], line)
    assert not audio[:1600].any() and not audio[9600:16000].any()

    clip = result.files["clip"]
    info = ffprobe(clip)
    (video,) = info["streams"]  # no sound: the mux lays the dubbed lines under it
    assert (video["codec_name"], video["profile"], video["pix_fmt"]) == ("h264", "High", "yuv420p")
    assert (video["width"], video["height"], int(video["nb_read_frames"]), video["r_frame_rate"]) == (W, H, 24, "12/1")
    assert video["time_base"] == "1/90000"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["clip.mp4"]

    ((pid, p),) = server.predictions.items()
    assert result.usage.provider_job_id == pid == result.meta["prediction_id"] and server.creates == 1
    assert result.usage.gpu_seconds == p["metrics"]["predict_time"] > 0
    assert result.usage.model == backend.settings.target and not result.meta["resumed"]
    assert all(r.headers["authorization"] == f"Bearer {server.api_key}" for r in server.requests)
    assert [r.path for r in server.delivered] == [f"/{pid}/output.mp4"]
    assert "authorization" not in server.delivered[0].headers  # another origin never sees the key

    keyframe = tmp_path / "kf.png"
    Image.new("RGB", (W, H), (90, 40, 30)).save(keyframe)
    motion_params = {"width": W, "height": H, "fps": FPS, "frames": 12, "camera": "pan_left"}
    motion = MOTION.run("clip", {"keyframe": keyframe}, motion_params, tmp_path / "motion").files["clip"]
    listing = tmp_path / "list.txt"
    listing.write_text(f"file '{clip}'\nfile '{motion}'\n")
    joined = tmp_path / "joined.mp4"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-f", "concat", "-safe", "0", "-i", str(listing), "-c", "copy", str(joined)],
        check=True,
    )
    assert int(ffprobe(joined)["streams"][0]["nb_read_frames"]) == 36


@pytest.mark.parametrize("form", ["list", "object", "behind the key"])
def test_output_is_the_mp4_and_the_key_stays_on_the_api_origin(server, shot, tmp_path, form):
    """The MP4 of a list or object is fetched; one on the API's origin gets the key, and its redirect
    to the output server does not."""
    server.output_form, server.output_via_api = form, form == "behind the key"
    result = Replicate("lips", config(server)).run("lipsync", shot, PARAMS, tmp_path / "out")
    assert [r.path.rsplit("/", 1)[1] for r in server.delivered] == ["output.mp4"]
    assert "authorization" not in server.delivered[0].headers and result.meta["output"].endswith("/output.mp4")
    fetched = [r for r in server.requests if "/outputs/" in r.path]
    assert [r.headers["authorization"] for r in fetched] == (
        [f"Bearer {server.api_key}"] if server.output_via_api else []
    )


@pytest.mark.parametrize(
    "output, message", [("file:///etc/passwd", r"not an http\(s\) URL"), ({"n": 3}, "without a file")]
)
def test_output_that_is_no_http_url_is_refused(server, shot, tmp_path, output, message):
    server.output_override = output
    with pytest.raises(StageError, match=message) as caught:
        Replicate("lips", config(server)).run("lipsync", shot, PARAMS, tmp_path / "out")
    assert not caught.value.retryable and not server.delivered


def test_output_gone_from_the_server_is_made_anew_next_time(server, shot, tmp_path):
    record = FileJobRecord(tmp_path / "job.json")
    server.output_override = f"{server.delivery_url}/removed/output.mp4"
    with pytest.raises(StageError, match="404") as caught:
        Replicate("lips", config(server)).run("lipsync", shot, PARAMS, tmp_path / "a", job=record)
    assert caught.value.retryable and "expired_prediction_id" in record.load()
    server.output_override = None
    Replicate("lips", config(server)).run("lipsync", shot, PARAMS, tmp_path / "b", job=record)
    assert server.creates == 2


def test_speaker_tracks_carry_only_their_speaker(server, shot, tmp_path):
    """speaker1 gets Ana's line alone; Ben, beyond the one mapped speaker field, is named in meta."""
    inputs = {"video": "video", "speaker1": "speaker_1"}
    result = Replicate("lips", config(server, inputs=inputs)).run("lipsync", shot, PARAMS, tmp_path / "out")
    (p,) = server.predictions.values()
    assert sorted(p["input"]) == ["speaker_1", "video"]
    _, track = read_wav(server.file_of(p["input"]["speaker_1"]).data, tmp_path / "s1.wav")
    assert len(track) == TOTAL and track[1600:9600].any() and not track[9600:].any()
    assert result.meta["speakers"] == ["ana"] and result.meta["speakers_left_out"] == ["ben"]


@pytest.mark.parametrize(
    "reshape, found",
    [
        ({"extra_frames": 2}, "64x112 at 12 fps with 26 frames"),
        ({"width": 66, "height": 112}, "66x112 at 12 fps with 24 frames"),
        ({"fps": 24}, "64x112 at 24 fps with 48 frames"),
    ],
)
def test_wrong_shape_is_refused_with_both_figures(server, shot, tmp_path, reshape, found):
    server.reshape = reshape
    with pytest.raises(StageError) as caught:
        Replicate("lips", config(server)).run("lipsync", shot, PARAMS, tmp_path / "out")
    assert not caught.value.retryable
    assert found in str(caught.value) and "64x112 at 12 fps with 24 frames was asked for" in str(caught.value)


def test_output_over_the_cap_is_refused(server, shot, tmp_path):
    server.output_body = bytes(3 * 2**20)
    with pytest.raises(StageError, match="max_output_mb") as caught:
        Replicate("lips", config(server, max_output_mb=2)).run("lipsync", shot, PARAMS, tmp_path / "out")
    assert not caught.value.retryable


# -- predictions that outlive the farm ------------------------------------------------------------


def test_prediction_id_is_saved_before_waiting(server, shot, tmp_path):
    record = FileJobRecord(tmp_path / "job.json")
    backend = Replicate("lips", config(server))
    server.hold()
    thread, outcome = run_in_thread(lambda: backend.run("lipsync", shot, PARAMS, tmp_path / "out", job=record))
    server.wait_for(lambda: server.first_poll)
    ((pid, first_poll),) = server.first_poll.items()
    creating, created = record.saves[0][1], record.saves[1]
    assert set(creating) >= {"creating", "input_digest", "saved_at"} and "prediction_id" not in creating
    assert created[1]["prediction_id"] == pid and created[0] < first_poll
    server.release()
    thread.join(30)
    assert outcome["result"].usage.provider_job_id == pid


CHILD = r"""
import json, sys
from pathlib import Path
from tests.workers.test_replicate import PARAMS, FileJobRecord
from workers.jobs.replicate import Replicate
config, record, out_dir, shot = sys.argv[1:]
Replicate("lips", json.loads(config)).run("lipsync", {k: Path(v) for k, v in json.loads(shot).items()}, PARAMS,
                                          Path(out_dir), job=FileJobRecord(Path(record)))
"""


def test_farm_killed_while_waiting_resumes_the_same_prediction(server, shot, tmp_path):
    """A farm killed (SIGKILL) mid-wait leaves the prediction id on record; a new run waits on it."""
    cfg, record_path = config(server), tmp_path / "job.json"
    server.hold()
    args = [json.dumps(cfg), str(record_path), str(tmp_path / "dead"), json.dumps({k: str(v) for k, v in shot.items()})]
    child = subprocess.Popen([sys.executable, "-c", CHILD, *args], cwd=ROOT, stderr=subprocess.PIPE)
    try:
        server.wait_for(lambda: server.first_poll or child.poll() is not None, timeout=60)
        assert child.poll() is None, child.communicate()[1].decode()
        child.kill()  # the farm dies mid-wait
    finally:
        child.kill()
        child.communicate()
    state = FileJobRecord(record_path).load()
    assert state["prediction_id"] in server.first_poll and server.creates == 1

    threading.Timer(0.3, server.release).start()  # it finishes while the new farm waits
    result = Replicate("lips", cfg).run("lipsync", shot, PARAMS, tmp_path / "out", job=FileJobRecord(record_path))
    assert server.creates == 1 and result.usage.provider_job_id == state["prediction_id"]
    assert result.meta["resumed"] and "recreated" not in result.meta


def test_died_between_create_and_recording_finds_it_by_listing(server, shot, tmp_path):
    """The id's save fails after the create: retryable; a fresh run finds the prediction among the
    account's recent ones (past a newer prediction of other input, one per page) and creates none."""
    backend = Replicate("lips", config(server))
    server.hold()
    with pytest.raises(StageError) as caught:
        backend.run("lipsync", shot, PARAMS, tmp_path / "dead", job=StoreDownOnId(tmp_path / "job.json"))
    ((pid, _),) = server.predictions.items()
    assert caught.value.retryable and pid in str(caught.value)
    assert set(FileJobRecord(tmp_path / "job.json").load()) >= {"creating", "input_digest", "saved_at"}
    other = api(server, "POST", "models/acme/lipsync/predictions", {"input": {"video": "https://x.test/v.mp4"}})
    server.page_size = 1
    creates = server.creates
    server.release()
    record = FileJobRecord(tmp_path / "job.json")
    result = Replicate("lips", config(server)).run("lipsync", shot, PARAMS, tmp_path / "out", job=record)
    assert server.creates == creates and result.usage.provider_job_id == pid != other["id"]
    assert pid in result.meta["found_by_listing"] and record.load()["prediction_id"] == pid
    listed = [r.path for r in server.requests if r.path.startswith("/v1/predictions?")]
    assert len(listed) == 2 and "created_after=" in listed[0] and "cursor=1" in listed[1]


def test_create_that_never_happened_is_made_after_listing(server, shot, tmp_path):
    """A create answered 503 leaves only the nonce; the next run lists, finds nothing, creates once."""
    record = FileJobRecord(tmp_path / "job.json")
    server.answer("POST", "/v1/models/acme/lipsync/predictions", 503, {"title": "busy", "detail": "", "status": 503})
    with pytest.raises(StageError) as caught:
        Replicate("lips", config(server)).run("lipsync", shot, PARAMS, tmp_path / "dead", job=record)
    assert caught.value.retryable and server.creates == 0 and "creating" in record.load()
    result = Replicate("lips", config(server)).run("lipsync", shot, PARAMS, tmp_path / "out", job=record)
    assert server.creates == 1 and "none of the 0 predictions" in result.meta["recreated"]


def test_timeout_keeps_the_record_and_the_next_attempt_resumes(server, shot, tmp_path):
    record = FileJobRecord(tmp_path / "job.json")
    server.hold()
    with pytest.raises(StageError, match="timeout_s") as caught:
        Replicate("lips", config(server, timeout_s=0.3)).run("lipsync", shot, PARAMS, tmp_path / "a", job=record)
    assert caught.value.retryable
    server.release()
    result = Replicate("lips", config(server)).run("lipsync", shot, PARAMS, tmp_path / "b", job=record)
    assert server.creates == 1 and result.meta["resumed"]


def test_prediction_the_server_forgot_is_created_anew(server, shot, tmp_path):
    server.hold()
    thread, outcome = run_in_thread(
        lambda: Replicate("lips", config(server)).run("lipsync", shot, PARAMS, tmp_path / "out")
    )
    server.wait_for(lambda: server.first_poll)
    server.forget()
    server.release()
    thread.join(30)
    assert server.creates == 2 and "created anew" in outcome["result"].meta["recreated"]


# -- failures -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "error, retryable",
    [("No face detected in the first frame", False), ("CUDA out of memory. Tried to allocate 2.00 GiB", True)],
)
def test_failed_prediction_carries_the_model_error(server, shot, tmp_path, error, retryable):
    record = FileJobRecord(tmp_path / "job.json")
    server.fail_with = error
    with pytest.raises(StageError) as caught:
        Replicate("lips", config(server)).run("lipsync", shot, PARAMS, tmp_path / "a", job=record)
    assert error in str(caught.value) and caught.value.retryable is retryable
    assert "failed_prediction_id" in record.load()
    server.fail_with = None
    Replicate("lips", config(server)).run("lipsync", shot, PARAMS, tmp_path / "b", job=record)
    assert server.creates == 2  # a failed prediction is not resumed


def test_canceled_prediction_is_retryable_and_clears_the_record(server, shot, tmp_path):
    record = FileJobRecord(tmp_path / "job.json")
    server.hold()
    thread, outcome = run_in_thread(
        lambda: Replicate("lips", config(server)).run("lipsync", shot, PARAMS, tmp_path / "out", job=record)
    )
    (pid,) = server.wait_for(lambda: list(server.first_poll))
    assert api(server, "POST", f"predictions/{pid}/cancel", {})["status"] == "canceled"
    thread.join(30)
    assert isinstance(outcome["error"], StageError) and outcome["error"].retryable
    assert "canceled" in str(outcome["error"]) and record.load() == {}


@pytest.mark.parametrize("through_env", [False, True])
def test_refused_key_is_a_clear_error_without_the_key(server, shot, tmp_path, monkeypatch, through_env):
    wrong = "r8_wrongSECRET0123456789"
    keys: dict[str, Any] = {"api_key": wrong}
    if through_env:
        monkeypatch.setenv("LIPS_TOKEN", wrong)
        keys = {"api_key": None, "api_key_env": "LIPS_TOKEN"}
    backend = Replicate("lips", config(server, **keys))
    for attempt in (lambda: backend.run("lipsync", shot, PARAMS, tmp_path / "out"), backend.check):
        with pytest.raises(StageError) as caught:
            attempt()
        message = str(caught.value)
        assert "401" in message and "api_key" in message and not caught.value.retryable
        assert wrong not in message and "[api key]" in message  # the server quoted it; it is cut out
    assert server.creates == 0


def test_throttled_create_is_retryable_after_the_wait_asked(server, shot, tmp_path):
    throttled = {"title": "Request was throttled.", "detail": "Expected available in 7 seconds.", "status": 429}
    server.answer("POST", "/v1/models/acme/lipsync/predictions", 429, throttled, {"Retry-After": "7"})
    with pytest.raises(StageError, match="429") as caught:
        Replicate("lips", config(server)).run("lipsync", shot, PARAMS, tmp_path / "out")
    assert caught.value.retryable and caught.value.retry_after == 7


def test_input_the_model_refuses_is_not_retryable(server, shot, tmp_path):
    with pytest.raises(StageError, match="strength: not allowed") as caught:
        Replicate("lips", config(server, input={"strength": 0.5})).run("lipsync", shot, PARAMS, tmp_path / "out")
    assert not caught.value.retryable and "422" in str(caught.value) and "backends.lips.inputs" in str(caught.value)


# -- settings -------------------------------------------------------------------------------------


def test_check_names_the_model_or_version(server):
    assert "acme/lipsync" in Replicate("lips", config(server)).check()
    pinned = Replicate("lips", config(server, model=None, version=f"acme/lipsync:{VERSION}"))
    assert "Cog 0.9.4" in pinned.check()
    with pytest.raises(StageError, match=r"backends\.lips\.model") as caught:
        Replicate("lips", config(server, model="acme/other")).check()
    assert not caught.value.retryable


@pytest.mark.parametrize(
    "change, field",
    [
        ({"version": f"acme/lipsync:{VERSION}"}, "backends.lips.model, backends.lips.version"),
        ({"model": None}, "backends.lips.model, backends.lips.version"),
        ({"inputs": {"video": "video", "mouth": "mouth"}}, "backends.lips.inputs"),
        ({"inputs": {"audio": "audio"}}, "backends.lips.inputs"),
        ({"inputs": {"video": "v", "audio": "v"}}, "backends.lips.inputs"),
        ({"base_url": "ftp://replicate.test/v1"}, "backends.lips.base_url"),
        ({"stage": "video"}, "backends.lips.stage"),
        ({"model": "acme/lip sync"}, "backends.lips.model"),
        ({"model": None, "version": "acme/lipsync"}, "backends.lips.version"),
        ({"input": {"scale": [1, 2]}}, "backends.lips.input.scale"),
        ({"input": {"video": "x"}}, "backends.lips.input.video"),
        ({"nonsense": 1}, "backends.lips.nonsense"),
    ],
)
def test_settings_errors_name_the_field(server, change, field):
    with pytest.raises(ConfigError) as caught:
        Replicate("lips", config(server, **change))
    assert field in str(caught.value)


def test_catalog_builds_it_for_the_lipsync_stage(server):
    catalog = Catalog({"lips": config(server)})
    assert catalog.load_stage("lips") == "lipsync" and isinstance(catalog.load("lipsync", "lips"), Replicate)
    assert catalog.outlives("lips")
    assert "backends.lips.stage" in " ".join(Catalog({"lips": config(server, stage="video")}).problems())


def test_version_follows_model_and_inputs_not_url_or_key(server):
    one = Replicate("lips", config(server)).version
    assert one == Replicate("lips", config(server, base_url="https://gw.test/v1", api_key="other")).version
    assert one == Replicate("lips", config(server, inputs={"video": "video", "audio": "audio"})).version
    assert one != Replicate("lips", config(server, input={"guidance_scale": 2})).version
    assert one != Replicate("lips", config(server, model="acme/lipsync-2")).version
    est = Replicate("lips", config(server)).estimate("lipsync", PARAMS)
    assert (est.seconds, est.gpu_seconds) == (22.0, 2.0)
