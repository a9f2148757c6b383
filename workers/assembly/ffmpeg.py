"""Assembly with ffmpeg: shots muxed with their dialogue, then the episode's deliverables.

op "mux" puts one clip (video copied) with its dialogue, built sample-exactly from the dubbed
lines, into a QuickTime file. op "episode" joins the shots by stream copy (concat demuxer),
normalises the loudness of the whole dialogue track (_audio), encodes it once to AAC, adds a
soft mov_text subtitle track and writes the SRT sidecar (_subtitles) and the storyboard
(_storyboard). User text never reaches a filtergraph: subtitles and captions are files we write,
the title is a single argv element.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from workers import scratch
from workers.api import Estimate, Resources, StageError, StageResult, Usage, children_cpu, run_tool
from workers.assembly import _audio, _storyboard, _subtitles
from workers.video.motion import TIMESCALE_ARGS, VIDEO_TIMESCALE

# ISO 639-1 -> ISO 639-2/T, the form MP4's mdhd box defines ("zho", not the bibliographic "chi").
LANGUAGES = {
    "ar": "ara",
    "de": "deu",
    "en": "eng",
    "es": "spa",
    "fr": "fra",
    "he": "heb",
    "hi": "hin",
    "id": "ind",
    "it": "ita",
    "ja": "jpn",
    "ko": "kor",
    "pt": "por",
    "ru": "rus",
    "th": "tha",
    "tr": "tur",
    "vi": "vie",
    "yue": "yue",
    "zh": "zho",
    "cmn": "zho",
}
AAC_ARGS = ("-c:a", "aac", "-b:a", "128k", "-ar", "48000", "-ac", "2")
# No encoder strings, creation times or copied tags: the same inputs give the same file.
BITEXACT_ARGS = ("-map_metadata", "-1", "-map_chapters", "-1", "-fflags", "+bitexact", "-flags", "+bitexact")


def language_code(language: str) -> str:
    """ISO 639-2/T code for a language tag such as "en", "zh-CN" or "eng"; "und" if unknown."""
    primary = re.split(r"[-_]", str(language).strip().lower())[0]
    if primary in LANGUAGES:
        return LANGUAGES[primary]
    return primary if re.fullmatch(r"[a-z]{3}", primary) else "und"


def concat_list(files: list[tuple[Path, float]]) -> str:
    """A concat demuxer script for (path, duration) pairs.

    Paths are single-quoted with ffmpeg's quoting rules (a quote becomes '\\''). Each file's
    duration is stated so the next file starts exactly there, not at the container's rounded one.
    """
    lines = ["ffconcat version 1.0"]
    for path, duration in files:
        if "\n" in str(path) or "\r" in str(path):
            raise StageError(f"assembly: input path {str(path)!r} holds a line break")
        quoted = "'" + str(Path(path).resolve()).replace("'", "'\\''") + "'"
        lines += [f"file {quoted}", f"duration {duration:.6f}"]
    return "\n".join(lines) + "\n"


def probe(path: Path) -> dict[str, Any]:
    proc = run_tool(
        ["ffprobe", "-v", "error", "-count_packets", "-show_streams", "-show_format", "-of", "json", str(path)],
        what="assembly: probe",
    )
    return json.loads(proc.stdout)


def _int(params: Mapping[str, Any], name: str, low: int = 1) -> int:
    value = params.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise StageError(f"assembly: params.{name} = {value!r} must be an integer >= {low}")
    return value


def _input(inputs: Mapping[str, Path], name: Any) -> Path:
    if not isinstance(name, str) or name not in inputs:
        raise StageError(f"assembly: input {name!r} is missing")
    return Path(inputs[name])


class FfmpegAssembly:
    """Muxes shots and assembles episodes with ffmpeg.

    op "mux": params ``{"fps", "frames", "sample_rate", "total_samples", "lines": [{"input",
    "offset_samples"}]}``, inputs ``{"clip", <each line's input>: WAV}``. Writes ``shot.mov``:
    the clip's video copied + one mono pcm_s16le track of exactly total_samples with each line at
    its offset. meta ``{"frames", "duration"}``.

    op "episode": params ``{"title", "language", "width", "height", "fps", "sample_rate",
    "loudness_lufs", "true_peak_db", "shots": [{"input", "keyframe", "id", "frames", "camera",
    "description", "lines": [{"speaker", "text"}]}], "cues": [{"start", "end", "speaker",
    "text"}]}``. Writes ``episode.mp4`` (H.264 copied, AAC stereo at loudness_lufs, mov_text,
    faststart), ``episode.srt`` and ``storyboard.png``. meta ``{"duration", "loudness_lufs",
    "shots", "cues"}``: the duration and integrated loudness measured on the written file
    (loudness None when the episode is silent) and the counts of shots and cues written.

    Raises StageError for inputs that do not fit the params (a line past its shot, overlapping
    cues, a clip with the wrong frame count) or when ffmpeg fails; ToolMissing without ffmpeg.
    """

    # 2: the storyboard draws every script; 3: subtitles keep the conventions (wrapped, split, 5/6 s minimum);
    # 4: the storyboard shows each shot's description (the keyframes no longer carry it)
    stage, name, version = "assembly", "ffmpeg", "4"
    ops = ("mux", "episode")
    tools = ("ffmpeg", "ffprobe")
    resources = Resources(num_cpus=1)

    def estimate(self, op: str, params: Mapping[str, Any]) -> Estimate:
        if op == "mux":
            return Estimate(seconds=0.3 + int(params.get("frames", 0)) / 3000)
        frames = sum(int(s.get("frames", 0)) for s in params.get("shots", []))
        seconds = frames / max(1, int(params.get("fps", 30)))
        # Four passes over the audio (two measurements, the encode, a check) and a remux.
        return Estimate(seconds=1.0 + 0.05 * seconds + 0.1 * len(params.get("shots", [])))

    def run(self, op: str, inputs: Mapping[str, Path], params: Mapping[str, Any], out_dir: Path) -> StageResult:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        cpu0 = children_cpu()
        with scratch.scratch_dir("assembly-") as tmp:
            if op == "mux":
                files, meta = self._mux(inputs, params, out_dir, Path(tmp))
            elif op == "episode":
                files, meta = self._episode(inputs, params, out_dir, Path(tmp))
            else:
                raise StageError(f"assembly: unknown op {op!r}; ffmpeg does {self.ops}")
        return StageResult(files=files, meta=meta, usage=Usage(cpu_seconds=children_cpu() - cpu0, model="ffmpeg"))

    def _mux(self, inputs, params, out_dir: Path, tmp: Path):
        fps, frames = _int(params, "fps"), _int(params, "frames")
        sample_rate, total = _int(params, "sample_rate"), _int(params, "total_samples")
        if abs(total - frames * sample_rate / fps) > 1:
            raise StageError(
                f"assembly: total_samples {total} does not match {frames} frames at {fps} fps "
                f"({frames * sample_rate / fps:.1f} samples at {sample_rate} Hz)"
            )
        clip = _input(inputs, "clip")
        video = [s for s in probe(clip)["streams"] if s.get("codec_type") == "video"]
        if not video or int(video[0].get("nb_read_packets", -1)) != frames:
            got = video[0].get("nb_read_packets") if video else "no video"
            raise StageError(f"assembly: clip has {got} frames, expected {frames}")
        lines = []
        for i, line in enumerate(params.get("lines") or []):
            offset = line.get("offset_samples")
            if not isinstance(offset, int) or isinstance(offset, bool):
                raise StageError(f"assembly: lines[{i}].offset_samples must be an integer")
            name = line.get("input")
            lines.append((name, offset, _audio.read_pcm(_input(inputs, name), sample_rate, f"line {name!r}")))
        audio = tmp / "dialogue.wav"
        _audio.write_wav(audio, _audio.place_lines(total, lines), sample_rate)
        out = out_dir / "shot.mov"
        # QuickTime, not Matroska: Matroska stores times in whole milliseconds, which would turn
        # 1/12 s or 1/30 s frames into uneven 83/84 or 33/34 ms steps in the final MP4.
        run_tool(
            [
                "ffmpeg",
                "-nostdin",
                "-v",
                "error",
                "-y",
                "-i",
                str(clip),
                "-i",
                str(audio),
                "-map",
                "0:v:0",
                "-map",
                "1:a:0",
                "-c:v",
                "copy",
                "-c:a",
                "pcm_s16le",
                *TIMESCALE_ARGS,
                *BITEXACT_ARGS,
                "-f",
                "mov",
                str(out),
            ],
            what="assembly: mux shot",
        )
        return {"shot": out}, {"frames": frames, "duration": frames / fps}

    def _episode(self, inputs, params, out_dir: Path, tmp: Path):
        fps, sample_rate = _int(params, "fps"), _int(params, "sample_rate")
        width, height = _int(params, "width"), _int(params, "height")
        if VIDEO_TIMESCALE % fps:
            raise StageError(f"assembly: fps {fps} must divide {VIDEO_TIMESCALE}")
        try:
            target_i = float(params.get("loudness_lufs", -14.0))
            target_tp = float(params.get("true_peak_db", -1.5))
        except (TypeError, ValueError) as exc:
            raise StageError(f"assembly: loudness_lufs and true_peak_db must be numbers: {exc}") from exc
        if not (-70 <= target_i <= -5 and -9 <= target_tp <= 0):
            raise StageError(f"assembly: loudness {target_i} LUFS / {target_tp} dBTP is outside -70..-5 / -9..0")
        shots = list(params.get("shots") or [])
        if not shots:
            raise StageError("assembly: an episode needs at least one shot")
        frames = [_int(s, "frames") for s in shots]
        pieces = [(_input(inputs, s.get("input")), n / fps) for s, n in zip(shots, frames)]
        keyframes = [_input(inputs, s.get("keyframe")) for s in shots]
        total_frames = sum(frames)
        duration_ms = round(total_frames * 1000 / fps)
        cues = _subtitles.build_cues(params.get("cues") or [], duration_ms)

        srt_path = out_dir / "episode.srt"
        srt_path.write_text(_subtitles.srt(cues), encoding="utf-8", newline="\n")
        storyboard = out_dir / "storyboard.png"
        _storyboard.render(storyboard, str(params.get("title", "")), shots, keyframes, width, height, fps)

        listing = tmp / "shots.ffconcat"
        listing.write_text(concat_list(pieces), encoding="utf-8")
        concat = ["-f", "concat", "-safe", "0", "-i", str(listing)]
        # The shots' PCM, copied end to end: the dialogue track, sample-exact, to measure and encode.
        dialogue = tmp / "dialogue.wav"
        run_tool(
            [
                "ffmpeg",
                "-nostdin",
                "-v",
                "error",
                "-y",
                *concat,
                "-map",
                "0:a:0",
                "-c:a",
                "copy",
                *BITEXACT_ARGS,
                "-f",
                "wav",
                str(dialogue),
            ],
            what="assembly: join dialogue",
        )
        expected = total_frames * sample_rate / fps
        samples = _audio.wav_frames(dialogue)
        if abs(samples - expected) > len(shots):  # each shot may round by up to one sample
            raise StageError(f"assembly: the shots hold {samples} audio samples, expected {expected:.0f}")
        chain, normalised = _audio.normalise_chain(dialogue, target_i, target_tp)

        args = ["ffmpeg", "-nostdin", "-v", "error", "-y", *concat, "-i", str(dialogue)]
        maps = ["-map", "0:v:0", "-map", "[audio]"]
        language = language_code(str(params.get("language", "")))
        # The title is one argv element; argv cannot hold NUL, so control characters go.
        title = _subtitles.without_controls(str(params.get("title", "")))
        tags = ["-metadata", f"title={title}", "-metadata:s:a:0", f"language={language}"]
        if cues:
            subs = tmp / "subtitles.mkv"
            subs.write_bytes(_subtitles.ass_matroska(cues))
            args += ["-i", str(subs)]
            maps += ["-map", "2:s:0", "-c:s", "mov_text"]
            tags += ["-metadata:s:s:0", f"language={language}"]
        video = out_dir / "episode.mp4"
        run_tool(
            [
                *args,
                "-filter_complex",
                "[1:a:0]" + ",".join(chain) + "[audio]",
                *maps,
                "-c:v",
                "copy",
                *AAC_ARGS,
                *TIMESCALE_ARGS,
                *BITEXACT_ARGS,
                *tags,
                "-movflags",
                "+faststart",
                "-f",
                "mp4",
                str(video),
            ],
            what="assembly: episode",
        )

        info = probe(video)
        packets = [int(s.get("nb_read_packets", -1)) for s in info["streams"] if s.get("codec_type") == "video"]
        if packets != [total_frames]:
            raise StageError(f"assembly: episode.mp4 has {packets} video frames, expected {total_frames}")
        loudness = _audio.integrated_loudness(video, target_i, target_tp) if normalised else None
        meta = {
            "duration": float(info["format"]["duration"]),
            "loudness_lufs": loudness,
            "shots": len(shots),
            "cues": len(cues),
        }
        return {"video": video, "subtitles": srt_path, "storyboard": storyboard}, meta


BACKEND = FfmpegAssembly()
