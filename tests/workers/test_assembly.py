"""The ffmpeg assembly backend, fed by the real dubbing and video backends at 180x320, 12 fps."""

from __future__ import annotations

import json
import re
import struct
import subprocess
import wave
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from workers.api import StageError
from workers.assembly import _storyboard
from workers.assembly._subtitles import build_cues
from workers.assembly.ffmpeg import BACKEND
from workers.dubbing.espeak import BACKEND as DUBBING
from workers.video.motion import BACKEND as VIDEO

W, H, FPS, SR = 180, 320, 12, 48000
SPF = SR // FPS
LEAD, GAP = SR // 5, SR // 4
ANA = {"voice": "en-us+f3", "pitch": 70, "rate": 190}
BO = {"voice": "en-us+m3", "pitch": 35, "rate": 160}
LI = {"voice": "cmn", "pitch": 50, "rate": 170}
TITLE = '第一集: "Midnight" {\\an8} 100% C:\\tea\\n 🍵'

# (id, camera, [(speaker, voice, text)]): every kind of hostile subtitle text, and a silent shot.
SHOTS = [
    ("s01-01", "push_in", [("Ana", ANA, 'He said "no": 100% {\\an8} C:\\path\\n')]),
    (
        "s01-02",
        "pan_left",
        [("Bo", BO, "<b>tags</b> --> 😀 مرحبا שלום"), ("Ana", ANA, "first line\n\n\nsecond line  ")],
    ),
    ("s01-03", "static", []),
    (
        "s02-01",
        "pull_out",
        [("李", LI, "你好，今天天气很好。"), ("Bo", BO, "{\\b1}bold{\\b0} \\N 50%: {braces} 'quote' <i>x</i>")],
    ),
]


def ffprobe(path: Path, *args: str) -> dict:
    out = subprocess.run(
        ["ffprobe", "-v", "error", *args, "-of", "json", str(path)], capture_output=True, check=True
    ).stdout
    return json.loads(out)


def keyframe(path: Path, colour: tuple[int, int, int]) -> Path:
    im = Image.new("RGB", (W, H), colour)
    ImageDraw.Draw(im).rectangle([40, 90, 140, 230], fill=(235, 225, 205))
    im.save(path)
    return path


def make_shot(root: Path, n: int, camera: str, lines: list) -> dict:
    """Dub the lines, lay them out like the planner, render the clip and mux it."""
    kf = keyframe(root / f"kf{n}.png", (40 + 50 * n, 90, 170 - 30 * n))
    wavs, offsets, lengths, cursor = [], [], [], LEAD
    for i, (_, voice, text) in enumerate(lines):
        result = DUBBING.run("line", {}, {"text": text, "voice": voice, "sample_rate": SR}, root / f"line{n}-{i}")
        wavs.append(result.files["audio"])
        offsets.append(cursor)
        lengths.append(result.meta["samples"])
        cursor += result.meta["samples"] + GAP
    frames = max(12, -(-(cursor + LEAD) // SPF))
    clip = VIDEO.run(
        "clip",
        {"keyframe": kf},
        {"width": W, "height": H, "fps": FPS, "frames": frames, "camera": camera},
        root / f"clip{n}",
    ).files["clip"]
    params = {
        "fps": FPS,
        "frames": frames,
        "sample_rate": SR,
        "total_samples": frames * SPF,
        "lines": [{"input": f"line{i}", "offset_samples": o} for i, o in enumerate(offsets)],
    }
    inputs = {"clip": clip} | {f"line{i}": w for i, w in enumerate(wavs)}
    mux = BACKEND.run("mux", inputs, params, root / f"mux{n}")
    return {
        "frames": frames,
        "offsets": offsets,
        "lengths": lengths,
        "wavs": wavs,
        "keyframe": kf,
        "mux": mux,
        "mux_params": params,
        "mux_inputs": inputs,
    }


def episode_params(made: list[dict], shots=SHOTS, title=TITLE, language="en") -> tuple[dict, dict]:
    inputs, plan_shots, cues, start = {}, [], [], 0
    for n, ((shot_id, camera, lines), m) in enumerate(zip(shots, made)):
        inputs[f"shot{n}"], inputs[f"keyframe{n}"] = m["mux"].files["shot"], m["keyframe"]
        plan_shots.append(
            {
                "input": f"shot{n}",
                "keyframe": f"keyframe{n}",
                "id": shot_id,
                "frames": m["frames"],
                "camera": camera,
                "description": f"shot {shot_id}",
                "lines": [{"speaker": s, "text": t} for s, _, t in lines],
            }
        )
        for (speaker, _, text), offset, length in zip(lines, m["offsets"], m["lengths"]):
            cues.append(
                {
                    "start": (start + offset) / SR,
                    "end": (start + offset + length) / SR,
                    "speaker": speaker,
                    "text": text,
                }
            )
        start += m["frames"] * SPF
    params = {
        "title": title,
        "language": language,
        "width": W,
        "height": H,
        "fps": FPS,
        "sample_rate": SR,
        "loudness_lufs": -14.0,
        "true_peak_db": -1.5,
        "shots": plan_shots,
        "cues": cues,
    }
    return params, inputs


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    root = tmp_path_factory.mktemp("shots")
    return [make_shot(root, n, camera, lines) for n, (_, camera, lines) in enumerate(SHOTS)]


@pytest.fixture(scope="module")
def episode(made, tmp_path_factory):
    params, inputs = episode_params(made)
    result = BACKEND.run("episode", inputs, params, tmp_path_factory.mktemp("episode"))
    return result, params


def pcm(path: Path, stream: str = "0:a:0") -> bytes:
    return subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(path), "-map", stream, "-f", "s16le", "-"], capture_output=True, check=True
    ).stdout


def wav_pcm(path: Path) -> bytes:
    with wave.open(str(path), "rb") as w:
        return w.readframes(w.getnframes())


def parse_srt(text: str) -> list[tuple[int, int, str]]:
    """A strict SRT reader: number, timing line, text lines up to a blank line."""

    def ms(stamp: str) -> int:
        h, m, s, f = map(int, re.fullmatch(r"(\d\d):(\d\d):(\d\d),(\d\d\d)", stamp).groups())
        return ((h * 60 + m) * 60 + s) * 1000 + f

    cues = []
    for n, block in enumerate(text.replace("\r\n", "\n").split("\n\n")[:-1], start=1):
        number, timing, *body = block.split("\n")
        assert number == str(n)
        start, arrow, end = timing.split(" ")
        assert arrow == "-->"
        cues.append((ms(start), ms(end), "\n".join(body)))
    return cues


def parse_srt_loosely(text: str) -> list[tuple[int, int, str]]:
    """Cues from an SRT whose texts may hold blank lines: each timing line starts a cue."""
    timing = re.compile(r"(\d\d):(\d\d):(\d\d),(\d\d\d) --> (\d\d):(\d\d):(\d\d),(\d\d\d)")
    cues: list[list] = []
    for line in text.replace("\r\n", "\n").split("\n"):
        found = timing.fullmatch(line)
        if found:
            if cues:
                cues[-1][2].pop()  # the number line of this cue
            v = list(map(int, found.groups()))
            cues.append(
                [((v[0] * 60 + v[1]) * 60 + v[2]) * 1000 + v[3], ((v[4] * 60 + v[5]) * 60 + v[6]) * 1000 + v[7], []]
            )
        elif cues:
            cues[-1][2].append(line)
    return [(start, end, "\n".join(body).strip("\n")) for start, end, body in cues]


def expected_cues(params: dict) -> list[tuple[int, int, str]]:
    """The cues the writer makes of the planner's: ms-rounded, wrapped and timed by the conventions
    (tested on their own below), as (start ms, end ms, text)."""
    duration = round(sum(s["frames"] for s in params["shots"]) * 1000 / params["fps"])
    return [(c.start_ms, c.end_ms, c.text) for c in build_cues(params["cues"], duration)]


def mov_text_samples(path: Path) -> list[tuple[int, int, str]]:
    """The mov_text track's non-empty samples as (start ms, end ms, text), read from the packets."""
    packets = ffprobe(path, "-select_streams", "s:0", "-show_packets", "-show_data")["packets"]
    samples = []
    for p in packets:
        raw = bytes.fromhex(
            "".join(line.split(":", 1)[1][:40].replace(" ", "") for line in p["data"].strip().splitlines())
        )
        text = raw[2 : 2 + int.from_bytes(raw[:2], "big")].decode("utf-8")
        if text:
            start = round(float(p["pts_time"]) * 1000)
            samples.append((start, start + round(float(p["duration_time"]) * 1000), text))
    return samples


def top_level_atoms(path: Path) -> list[str]:
    names, data = [], path.read_bytes()
    pos = 0
    while pos + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[pos : pos + 8])
        if size == 1:
            size = struct.unpack(">Q", data[pos + 8 : pos + 16])[0]
        names.append(kind.decode("latin-1"))
        pos += size if size else len(data)
    return names


# --- op "mux" ---------------------------------------------------------------------------------


@pytest.mark.media
def test_mux_copies_the_clip_and_adds_pcm_of_exact_length(made):
    """A muxed shot has the clip's H.264 frames and a mono PCM track of exactly total_samples."""
    m = made[1]
    info = ffprobe(m["mux"].files["shot"], "-count_packets", "-show_streams")
    video, audio = info["streams"]
    assert (video["codec_name"], int(video["nb_read_packets"])) == ("h264", m["frames"])
    assert (audio["codec_name"], int(audio["sample_rate"]), audio["channels"]) == ("pcm_s16le", SR, 1)
    assert len(pcm(m["mux"].files["shot"])) == 2 * m["frames"] * SPF
    assert m["mux"].meta == {"frames": m["frames"], "duration": m["frames"] / FPS}


@pytest.mark.media
def test_mux_places_each_line_at_its_offset(made):
    """Each line's samples sit exactly at offset_samples, with silence everywhere else."""
    m = made[1]
    track = pcm(m["mux"].files["shot"])
    expected = bytearray(len(track))
    for wav, offset in zip(m["wavs"], m["offsets"]):
        line = wav_pcm(wav)
        assert track[2 * offset : 2 * offset + len(line)] == line
        expected[2 * offset : 2 * offset + len(line)] = line
    assert track == bytes(expected)


@pytest.mark.media
def test_mux_refuses_a_line_that_overflows_the_shot(made, tmp_path):
    """A line that would run past total_samples raises StageError instead of being cut."""
    m = made[0]
    params = dict(m["mux_params"], lines=[{"input": "line0", "offset_samples": m["frames"] * SPF - 100}])
    with pytest.raises(StageError, match="does not fit"):
        BACKEND.run("mux", m["mux_inputs"], params, tmp_path)


@pytest.mark.media
def test_mux_refuses_total_samples_that_disagree_with_the_frames(made, tmp_path):
    """total_samples that is not frames/fps*sample_rate raises StageError."""
    m = made[0]
    with pytest.raises(StageError, match="total_samples"):
        BACKEND.run("mux", m["mux_inputs"], dict(m["mux_params"], total_samples=m["frames"] * SPF + 50), tmp_path)


# --- op "episode" -----------------------------------------------------------------------------


@pytest.mark.media
def test_episode_streams_are_h264_aac_and_mov_text_in_the_language(episode):
    """The episode has copied H.264 yuv420p, 48 kHz AAC and a mov_text track tagged "eng"."""
    result, _ = episode
    video, audio, subs = ffprobe(result.files["video"], "-show_streams")["streams"]
    assert (video["codec_name"], video["pix_fmt"], video["width"], video["height"]) == ("h264", "yuv420p", W, H)
    assert (audio["codec_name"], int(audio["sample_rate"])) == ("aac", SR)
    assert subs["codec_name"] == "mov_text"
    assert subs["tags"]["language"] == audio["tags"]["language"] == "eng"


@pytest.mark.media
def test_episode_lasts_exactly_the_sum_of_its_shots(episode, made):
    """The episode's duration is sum(frames)/fps (to the millisecond) and every frame is there."""
    result, _ = episode
    frames = sum(m["frames"] for m in made)
    info = ffprobe(result.files["video"], "-count_packets", "-show_streams", "-show_format")
    assert float(info["format"]["duration"]) == pytest.approx(frames / FPS, abs=0.002)
    assert result.meta["duration"] == pytest.approx(frames / FPS, abs=0.002)
    assert int(info["streams"][0]["nb_read_packets"]) == frames
    assert float(info["streams"][1]["duration"]) == pytest.approx(frames / FPS, abs=0.002)


@pytest.mark.media
def test_episode_video_is_the_shots_copied_in_order(episode, made):
    """The episode's video packets are the shots' packets in order, unchanged but for the SPS/PPS
    the concat demuxer repeats in-band on keyframes."""
    result, _ = episode

    def packets(path: Path) -> list[str]:
        # framemd5 of each packet with parameter-set NAL units (types 7, 8) removed: size and hash.
        out = subprocess.run(
            [
                "ffmpeg",
                "-v",
                "error",
                "-i",
                str(path),
                "-map",
                "0:v:0",
                "-c",
                "copy",
                "-bsf:v",
                "filter_units=remove_types=7|8",
                "-f",
                "framemd5",
                "-",
            ],
            capture_output=True,
            check=True,
        ).stdout.decode()
        return [line.split(",", 4)[4].strip() for line in out.splitlines() if not line.startswith("#")]

    assert packets(result.files["video"]) == [h for m in made for h in packets(m["mux"].files["shot"])]


@pytest.mark.media
def test_episode_loudness_is_within_1_lu_of_the_target(episode):
    """ffmpeg's ebur128 meter reads the episode's integrated loudness within 1 LU of -14 LUFS."""
    result, _ = episode
    log = subprocess.run(
        ["ffmpeg", "-nostats", "-i", str(result.files["video"]), "-map", "0:a:0", "-af", "ebur128", "-f", "null", "-"],
        capture_output=True,
        check=True,
    ).stderr.decode()
    integrated = float(re.findall(r"I:\s+(-?[\d.]+) LUFS", log)[-1])
    assert integrated == pytest.approx(-14.0, abs=1.0)
    assert result.meta["loudness_lufs"] == pytest.approx(integrated, abs=0.2)


@pytest.mark.media
def test_srt_holds_every_cue_exactly(episode):
    """The SRT parses back to the given cues: ms-rounded times and the literal (normalised) text."""
    result, params = episode
    parsed = parse_srt(result.files["subtitles"].read_text(encoding="utf-8"))
    assert parsed == expected_cues(params)
    assert [(s, e) for s, e, _ in parsed] == [
        (round(c["start"] * 1000), round(c["end"] * 1000)) for c in params["cues"]
    ]
    assert parsed[0][2] == 'He said "no": 100% {\\an8} C:\\path\\n'
    assert parsed[2][2] == "first line\nsecond line"
    assert parsed[4][2] == "{\\b1}bold{\\b0} \\N 50%:\n{braces} 'quote' <i>x</i>"  # 48 characters: wrapped
    assert result.meta["cues"] == len(params["cues"])


@pytest.mark.media
def test_mov_text_track_carries_the_literal_text_and_times(episode):
    """The soft track's samples hold each cue's exact text (hostile ones included) at its exact ms times."""
    result, params = episode
    assert mov_text_samples(result.files["video"]) == expected_cues(params)


@pytest.mark.media
def test_mov_text_extracted_as_srt_has_every_cue(episode):
    """ffmpeg's own extraction to SRT gives every cue, with identical text wherever the text has no
    ASS-like sequence ({\\...}, \\n, \\N) for ffmpeg's mov_text decoder to reinterpret."""
    result, params = episode
    out = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(result.files["video"]), "-map", "0:s:0", "-f", "srt", "-"],
        capture_output=True,
        check=True,
    ).stdout.decode("utf-8")
    extracted, expected = parse_srt_loosely(out), expected_cues(params)
    assert len(extracted) == len(expected)
    plain = [(got, want) for got, want in zip(extracted, expected) if not re.search(r"\{\\|\\[nN]", want[2])]
    assert len(plain) == 3
    assert all(got == want for got, want in plain)


@pytest.mark.media
def test_title_is_stored_verbatim(episode):
    """The title metadata equals params["title"], quotes, braces, backslashes and emoji included."""
    result, _ = episode
    assert ffprobe(result.files["video"], "-show_format")["format"]["tags"]["title"] == TITLE


@pytest.mark.media
def test_moov_precedes_mdat_for_fast_start(episode):
    """The top-level `moov` atom comes before `mdat`, so playback can start while downloading."""
    result, _ = episode
    atoms = top_level_atoms(result.files["video"])
    assert atoms.index("moov") < atoms.index("mdat")


@pytest.mark.media
def test_storyboard_is_a_grid_of_the_keyframes(episode, made):
    """The storyboard is 4 columns of 240 px thumbnails, each showing its shot's keyframe."""
    result, _ = episode
    sheet = Image.open(result.files["storyboard"]).convert("RGB")
    thumb_h = round(240 * H / W)
    assert sheet.size == (16 + 4 * 256, _storyboard.HEADER_HEIGHT + thumb_h + _storyboard.CAPTION_HEIGHT + 32)
    for n, m in enumerate(made):
        corner = Image.open(m["keyframe"]).convert("RGB").getpixel((2, 2))
        got = sheet.getpixel((16 + n * 256 + 3, _storyboard.HEADER_HEIGHT + 3))
        assert all(abs(a - b) <= 3 for a, b in zip(got, corner))


@pytest.mark.media
def test_storyboard_is_deterministic(episode, made, tmp_path):
    """Drawing the same storyboard twice gives byte-identical PNGs."""
    _, params = episode
    keyframes = [m["keyframe"] for m in made]
    for name in ("a.png", "b.png"):
        _storyboard.render(tmp_path / name, params["title"], params["shots"], keyframes, W, H, FPS)
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()


@pytest.mark.media
def test_meta_counts_shots_and_cues(episode):
    """meta reports the shot and cue counts and the usage the CPU spent."""
    result, params = episode
    assert (result.meta["shots"], result.meta["cues"]) == (4, 5)
    assert result.usage.cpu_seconds > 0


@pytest.mark.media
def test_silent_mandarin_episode_renders(made, tmp_path):
    """A Mandarin episode without dialogue has no subtitle track, an empty SRT and a drawn CJK storyboard."""
    shots = [("场景-01", "static", [])]
    params, inputs = episode_params([made[2]], shots, title="午夜茶馆 第一集", language="zh-CN")
    params["shots"][0]["lines"] = [{"speaker": "李", "text": "（无声）你好，今天天气很好。"}]
    result = BACKEND.run("episode", inputs, params, tmp_path)
    streams = ffprobe(result.files["video"], "-show_streams")["streams"]
    assert [s["codec_type"] for s in streams] == ["video", "audio"]
    assert streams[1]["tags"]["language"] == "zho"
    assert result.files["subtitles"].read_text() == ""
    assert result.meta["loudness_lufs"] is None
    sheet = Image.open(result.files["storyboard"]).convert("RGB")
    caption_top = _storyboard.HEADER_HEIGHT + round(240 * H / W)
    caption = sheet.crop((16, caption_top, 256, caption_top + _storyboard.CAPTION_HEIGHT))
    header = sheet.crop((0, 0, sheet.width, _storyboard.HEADER_HEIGHT))
    for area in (caption, header):
        assert any(colour != _storyboard.BACKGROUND for _, colour in area.getcolors(1 << 20))
