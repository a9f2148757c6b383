"""The embedded picture judge ``frames``: is a keyframe or a clip the picture it should be?

Checks, in this order (clip-only ones marked)::

    size                  exact width x height (keyframe: Pillow; clip: ffprobe)
    fps, frame_count      clip: exact frame rate; exact frame count (ffprobe's packet count)
    codec                 clip: H.264 High, yuv420p
    black_frames          share of black pictures (ffmpeg blackdetect; a keyframe: the same test on it)
    frozen_frames         clip: share of the clip frozen (ffmpeg freezedetect); a static camera is
                          meant to be still, so there it is not measured (and says so)
    character:<id>        per character in ``expect.characters``: colour similarity to its sheet figure

Character similarity is location-free, so it works for any image model: the figure's colour
histogram (CIE Lab, coarse soft bins, over its alpha mask) is compared with every window of the
figure's shape (its bounding box) at SCALES of the downscaled frame's height, by histogram
intersection in [0, 1]; the best window counts, and for a clip the worst of SAMPLES frames (first
to last, evenly spaced).

Measured (2 CPUs) on the embedded backends' output: ``farm examples``, midnight-tea and west-lake
ep001, 17 shots at 1080x1920 and 30 fps, 24 appearances of a character, each judged on its
keyframe and on the 5 sampled frames of its clip:

- character similarity of the embedded pictures: 0.52 (the smallest figure, three characters in a
  wide shot) to 0.88. The same keyframes redrawn with one character's hair and outfit in another
  palette: another character's colours 0.08-0.27, hair #a52a2a and outfit #1e90ff 0.08-0.37; the
  recoloured takes of tests.support.defect_video 0.03-0.17. Hence min_character_similarity 0.45.
  Not caught: hair and outfit colours swapped with each other (the same colours in other shares,
  0.23-0.71).
- frozen share (freeze at least FREEZE_SECONDS, noise FREEZE_NOISE_DB, on the downscaled frames):
  at most 0.054 on the examples; the slowest moves, 30 s (the longest shot) push_in and pan_up
  over the same keyframe at 1080x1920, 0.10 and 0.11: zoompan steps whole pixels, so the eased
  ends stand still for a while. At -65 dB the 30 s push_in was 0.25, at -60 dB 0.54. A clip of one
  still frame: 1.0 at every level down to -80 dB. Hence max_frozen_ratio 0.3. A nearly still clip
  with grain or flicker (above -75 dB) is not caught.
- black share: 0 on every keyframe and clip; an all-black clip 1.0.
- cost: a clip of 90-150 frames (3-5 s) 0.55-0.95 CPU-seconds, 315 frames (10.5 s) 1.5-2.0,
  900 frames (30 s) 3.2-4.0; a keyframe 0.07-0.13. One ffmpeg pass decodes the clip once,
  downscaled to ANALYSIS_HEIGHT, through blackdetect and freezedetect, and hands back only the
  sampled frames.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from itertools import product
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from PIL import Image, ImageDraw

from workers.api import Estimate, Resources, StageError, StageResult, ToolMissing, Usage, children_cpu, run_tool
from workers.judge.common import Check, judged_op, probe, rate, thresholds, verdict

THRESHOLDS = {
    "max_black_ratio": (0.02, 0.0, 1.0),
    "max_frozen_ratio": (0.3, 0.0, 1.0),
    "min_character_similarity": (0.45, 0.0, 1.0),
}

# blackdetect's own defaults: a pixel is black under 10% luma, a picture when 98% of its pixels are.
BLACK_PIXEL = 0.10
BLACK_PICTURE = 0.98
# freezedetect: frames differing by less than this (mean absolute difference, dB) count as the
# same; a freeze counts once it lasts this long. Low, so the slowest eased moves pass (see above).
FREEZE_NOISE_DB = -75
FREEZE_SECONDS = 0.25
ANALYSIS_HEIGHT = 256  # frames are measured at this height (sides kept even)
SAMPLES = 5  # sampled frames of a clip: character checks and the evidence strip
STRIP_HEIGHT = 160
# Judging a 1080x1920 30 fps clip (see above): ~400 Mpixel/s decoded on one thread, plus ~0.3 s.
DECODE_PIXELS_PER_SECOND = 400e6

# CIE Lab histogram bins: lightness 0..100 and a, b over -BIN_AB..BIN_AB (beyond: the end bins).
BINS_L, BINS_AB, BIN_AB = 5, 5, 50.0
# The figure's height in the frame, as a share of the frame's height, tried when looking for it.
SCALES = (0.24, 0.27, 0.3, 0.34, 0.39, 0.45, 0.52, 0.6, 0.69, 0.8, 0.92, 1.0)
SEARCH_HEIGHT = 128  # the frame's height while searching (windows step one pixel of it)
_SRGB_TO_XYZ = np.array(
    [[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]], dtype=np.float32
)
_T = TypeVar("_T")
_WHITE = np.array([0.9505, 1.0, 1.089], dtype=np.float32)


def lab_bins(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each pixel's histogram bins by its CIE Lab colour (sRGB, D65), soft: a pixel shares its
    weight between the two nearest bin centres on each axis, so a colour near a bin edge (a slight
    tint, compression) does not jump bins. Returns (bins, weights), each shaped (8, *pixels)."""
    c = rgb[..., :3].astype(np.float32) / 255.0
    c = np.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)
    xyz = (c @ _SRGB_TO_XYZ.T) / _WHITE
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    axes = []
    for value, low, high, n in (
        (116 * f[..., 1] - 16, 0.0, 100.0, BINS_L),
        (500 * (f[..., 0] - f[..., 1]), -BIN_AB, BIN_AB, BINS_AB),
        (200 * (f[..., 1] - f[..., 2]), -BIN_AB, BIN_AB, BINS_AB),
    ):
        u = np.clip((value - low) / (high - low) * n - 0.5, 0, n - 1)
        i0 = np.minimum(u.astype(np.int32), n - 2)
        t = u - i0
        axes.append(((i0, 1 - t), (i0 + 1, t)))
    bins, weights = [], []
    for (li, lw), (ai, aw), (bi, bw) in product(*axes):
        bins.append((li * BINS_AB + ai) * BINS_AB + bi)
        weights.append(lw * aw * bw)
    return np.stack(bins), np.stack(weights)


class Figure:
    """A character's sheet figure as the search needs it: its colour histogram over its mask (alpha
    of at least 3/4) and its shape (height / width of the mask's bounding box)."""

    def __init__(self, path: Path, what: str):
        try:
            with Image.open(path) as im:
                rgba = im.convert("RGBA")
        except OSError as exc:
            raise StageError(f"{what}: the sheet figure is not a readable image: {exc}", retryable=True) from exc
        box = rgba.getchannel("A").point(lambda v: 255 if v >= 128 else 0).getbbox()
        if box is None:
            raise StageError(f"{what}: the sheet figure has no opaque pixel (its alpha is its mask)", retryable=True)
        rgba = rgba.crop(box)
        self.aspect = rgba.height / rgba.width
        small = rgba.resize((max(1, round(128 / self.aspect)), 128), Image.Resampling.BOX)
        pixels = np.asarray(small)
        bins, weights = lab_bins(pixels)
        mask = pixels[..., 3] >= 192
        counts = np.bincount(bins[:, mask].ravel(), weights[:, mask].ravel(), minlength=BINS_L * BINS_AB * BINS_AB)
        self.hist = counts / max(1.0, counts.sum())


def similarity(frame: np.ndarray, figure: Figure) -> float:
    """The histogram intersection (0..1) of ``figure`` with its best-matching window of ``frame``
    (RGB, any size): windows of the figure's shape at SCALES of the frame's height, every position."""
    h, w = frame.shape[:2]
    sh, sw = SEARCH_HEIGHT, max(8, round(w * SEARCH_HEIGHT / h))
    small = np.asarray(Image.fromarray(frame[..., :3]).resize((sw, sh), Image.Resampling.BOX))
    bins, weights = lab_bins(small)
    # integral images of the figure's bins only: a bin it lacks adds nothing to sum(min(figure, window))
    wanted = np.flatnonzero(figure.hist > 0.002)
    maps = np.zeros((len(wanted), sh, sw))
    for b, wt in zip(bins, weights):
        maps += (b[None, :, :] == wanted[:, None, None]) * wt[None, :, :]
    integral = np.zeros((len(wanted), sh + 1, sw + 1))
    integral[:, 1:, 1:] = maps.cumsum(1).cumsum(2)
    share = figure.hist[wanted][:, None, None]
    best = 0.0
    for scale in SCALES:
        wh = min(sh, max(4, round(sh * scale)))
        ww = min(sw, max(2, round(sh * scale / figure.aspect)))
        sums = integral[:, wh:, ww:] - integral[:, :-wh, ww:] - integral[:, wh:, :-ww] + integral[:, :-wh, :-ww]
        best = max(best, float(np.minimum(sums / (wh * ww), share).sum(0).max()))
    return best


def _measuring(call: Callable[..., _T], *args: Any) -> _T:
    """Run one measurement: the judge failing to measure (ffmpeg failed, the file is unreadable)
    is retryable; a missing program stays as it is (installing it is the fix)."""
    try:
        return call(*args)
    except ToolMissing:
        raise
    except StageError as exc:
        raise StageError(str(exc), retryable=True) from exc


def _analysis_size(width: int, height: int) -> tuple[int, int]:
    ah = min(ANALYSIS_HEIGHT, height - height % 2) or 2
    aw = max(2, round(width * ah / height / 2) * 2)
    return aw, ah


def _sample_indices(frames: int) -> list[int]:
    if frames <= 0:
        return []
    return sorted({round(i * (frames - 1) / (SAMPLES - 1)) for i in range(SAMPLES)})


_BLACK = re.compile(r"black_start:\s*([-\d.e+]+)\s+black_end:\s*([-\d.e+]+)")
_FREEZE = re.compile(r"lavfi\.freezedetect\.freeze_(start|end):\s*([-\d.e+]+)")


def _decode(subject: Path, size: tuple[int, int], indices: Sequence[int], frozen: bool) -> tuple[str, list[np.ndarray]]:
    """One pass over the clip, downscaled to ``size``: blackdetect and (if ``frozen``) freezedetect
    log their findings to stderr; the frames at ``indices`` come back as RGB arrays."""
    aw, ah = size
    pick = "+".join(f"eq(n\\,{int(i)})" for i in indices) or "0"
    chain = [
        f"scale={aw}:{ah}:flags=area",
        f"blackdetect=d=0:pic_th={BLACK_PICTURE}:pix_th={BLACK_PIXEL}",
        *([f"freezedetect=n={FREEZE_NOISE_DB}dB:d={FREEZE_SECONDS}"] if frozen else []),
        f"select={pick}",
        "format=rgb24",  # YUV to RGB by the matrix the clip is tagged with (BT.709 here)
    ]
    proc = run_tool(
        ["ffmpeg", "-nostdin", "-hide_banner", "-nostats", "-v", "info", "-threads", "1", "-i", str(subject)]
        + ["-map", "0:v:0", "-vf", ",".join(chain), "-fps_mode", "passthrough", "-f", "rawvideo", "-"],
        what="judge frames: decode the clip",
        timeout=300,
    )
    raw = np.frombuffer(proc.stdout, dtype=np.uint8)
    n = len(raw) // (aw * ah * 3)
    pictures = [raw[i * aw * ah * 3 : (i + 1) * aw * ah * 3].reshape(ah, aw, 3) for i in range(n)]
    return proc.stderr.decode("utf-8", "replace"), pictures


def _is_black(rgb: np.ndarray) -> bool:
    """blackdetect's picture test on an RGB picture: at least BLACK_PICTURE of its pixels darker than BLACK_PIXEL."""
    luma = rgb[..., :3].astype(np.float32) @ np.array([0.2126, 0.7152, 0.0722], dtype=np.float32)
    return float((luma <= BLACK_PIXEL * 255).mean()) >= BLACK_PICTURE


def _black_frames(log: str, frames: int, fps: float) -> int:
    """Frames inside the black periods blackdetect logged. It ends a period still black at the end
    of the clip at the last frame's start, so such a period is taken to the clip's end."""
    last, total = (frames - 1) / fps, 0.0
    for match in _BLACK.finditer(log):
        start, end = float(match.group(1)), float(match.group(2))
        total += max(0.0, (frames / fps if end >= last - 0.5 / fps else end) - start)
    return min(frames, round(total * fps))


def _frozen_seconds(log: str, seconds: float) -> float:
    """Seconds inside the freezes freezedetect logged; a freeze still on at the end runs to ``seconds``."""
    total, start = 0.0, None
    for match in _FREEZE.finditer(log):
        if match.group(1) == "start":
            start = float(match.group(2))
        elif start is not None:
            total += max(0.0, float(match.group(2)) - start)
            start = None
    if start is not None:
        total += max(0.0, seconds - start)
    return min(seconds, total)


def _number(expect: Mapping[str, Any], name: str) -> int:
    value = expect.get(name)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
        raise StageError(f"judge frames: params.expect.{name} must be a positive number, not {value!r}")
    return int(value)


_Figures = Sequence[tuple[str, Figure]]


def _characters(inputs: Mapping[str, Path], expect: Mapping[str, Any]) -> list[tuple[str, Figure]]:
    out = []
    for cid in list(expect.get("characters") or []):
        path = inputs.get(f"sheet:{cid}")
        if path is None:
            raise StageError(f"judge frames: input 'sheet:{cid}' (the sheet figure of character {cid}) is missing")
        out.append((str(cid), Figure(path, f"judge frames: sheet:{cid}")))
    return out


def _character_checks(
    figures: _Figures, pictures: Sequence[np.ndarray], labels: Sequence[str], least: float
) -> tuple[list[Check], set[int]]:
    """One check per character: its worst similarity over ``pictures``; and which pictures failed."""
    checks, failed = [], set()
    for cid, figure in figures:
        scores = [similarity(p, figure) for p in pictures]
        if not scores:
            checks.append(Check(f"character:{cid}", None, least, False, "no picture to look for the character in"))
            continue
        worst = min(range(len(scores)), key=scores.__getitem__)
        failed |= {i for i, s in enumerate(scores) if s < least}
        where = f" (worst of {len(scores)} frames: {labels[worst]})" if len(scores) > 1 else ""
        checks.append(
            Check(
                f"character:{cid}",
                scores[worst],
                least,
                scores[worst] >= least,
                f"colours match the sheet figure {scores[worst]:.2f}{where}, at least {least:.2f} wanted",
                score=scores[worst] / least if least else None,
            )
        )
    return checks, failed


def _size_check(width: int, height: int, want_w: int, want_h: int) -> Check:
    ok = (width, height) == (want_w, want_h)
    return Check("size", None, None, ok, f"{width}x{height}, {want_w}x{want_h} wanted")


def _framed(picture: np.ndarray, height: int, bad: bool) -> Image.Image:
    im = Image.fromarray(picture[..., :3])
    im = im.resize((max(1, round(im.width * height / im.height)), height), Image.Resampling.BOX)
    if bad:
        ImageDraw.Draw(im).rectangle((0, 0, im.width - 1, im.height - 1), outline=(230, 20, 20), width=4)
    return im


class FramesJudge:
    """Judges keyframes and clips: size, (clip) fps, frame count, codec, black and frozen frames,
    and each character's colours against its sheet figure.

    op "judge": params ``{"target": {"op": "keyframe"|"clip", ...}, "thresholds": {...overrides},
    "expect": {"width", "height", "characters", (clip) "fps", "frames", "camera"}}``; inputs
    ``{"subject": PNG or MP4, "sheet:<id>": RGBA figure per character}``. Returns the verdict
    (``workers.judge.common.verdict``) with ``evidence``: a thumbnail (keyframe) or a strip of
    sampled frames (clip), failing ones framed in red.

    Raises StageError (retryable) when it cannot measure: an unreadable subject or figure, an
    ffmpeg failure; StageError (not retryable) for bad params or an unknown threshold.

    Example::

        BACKEND.run("judge", {"subject": clip, "sheet:mei": figure}, {"target": {"op": "clip"},
                    "thresholds": {}, "expect": {"width": 1080, "height": 1920, "fps": 30,
                    "frames": 90, "camera": "push_in", "characters": ["mei"]}}, out_dir).meta["verdict"]
    """

    stage, name, version = "judge", "frames", "1"
    ops = ("judge",)
    judges = ("keyframe", "clip")
    thresholds = THRESHOLDS
    resources = Resources(num_cpus=1)
    tools = ("ffmpeg", "ffprobe")

    def estimate(self, op: str, params: Mapping[str, Any]) -> Estimate:
        expect = dict(params.get("expect") or {})
        pixels = float(expect.get("width") or 1080) * float(expect.get("height") or 1920)
        frames = float(expect.get("frames") or 1) if (params.get("target") or {}).get("op") == "clip" else 1.0
        return Estimate(seconds=0.3 + frames * pixels / DECODE_PIXELS_PER_SECOND)

    def run(self, op: str, inputs: Mapping[str, Path], params: Mapping[str, Any], out_dir: Path) -> StageResult:
        judged = judged_op(self, op, params)
        limits = thresholds(THRESHOLDS, params, "frames")
        expect = dict(params.get("expect") or {})
        subject = inputs.get("subject")
        if subject is None:
            raise StageError("judge frames: input 'subject' is missing")
        figures = _characters(inputs, expect)
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        cpu0 = children_cpu()
        if judged == "keyframe":
            checks, evidence = self._keyframe(Path(subject), expect, figures, limits, out_dir)
        else:
            checks, evidence = self._clip(Path(subject), expect, figures, limits, out_dir)
        return verdict(
            checks, out_dir, {"evidence": evidence}, Usage(cpu_seconds=children_cpu() - cpu0, model="frames")
        )

    def _keyframe(
        self, subject: Path, expect: Mapping[str, Any], figures: _Figures, limits: Mapping[str, float], out_dir: Path
    ) -> tuple[list[Check], Path]:
        want_w, want_h = _number(expect, "width"), _number(expect, "height")
        try:
            with Image.open(subject) as im:
                picture = np.asarray(im.convert("RGB"))
        except OSError as exc:
            raise StageError(f"judge frames: the keyframe is not a readable image: {exc}", retryable=True) from exc
        h, w = picture.shape[:2]
        black = _is_black(picture)
        checks = [
            _size_check(w, h, want_w, want_h),
            Check(
                "black_frames",
                1.0 if black else 0.0,
                limits["max_black_ratio"],
                (1.0 if black else 0.0) <= limits["max_black_ratio"],
                "the picture is black" if black else "the picture is not black",
            ),
        ]
        small = np.asarray(Image.fromarray(picture).resize(_analysis_size(w, h), Image.Resampling.BOX))
        character_checks, failed = _character_checks(
            figures, [small], ["the keyframe"], limits["min_character_similarity"]
        )
        checks += character_checks
        path = out_dir / "evidence.png"
        _framed(small, 2 * STRIP_HEIGHT, bool(failed) or black).save(path)
        return checks, path

    def _clip(
        self, subject: Path, expect: Mapping[str, Any], figures: _Figures, limits: Mapping[str, float], out_dir: Path
    ) -> tuple[list[Check], Path]:
        want_w, want_h = _number(expect, "width"), _number(expect, "height")
        want_fps, want_frames = _number(expect, "fps"), _number(expect, "frames")
        camera = str(expect.get("camera") or "static")
        info = _measuring(probe, subject, "judge frames: probe the clip")
        video = next((s for s in info.get("streams") or [] if s.get("codec_type") == "video"), None)
        if video is None:
            return [Check("size", None, None, False, "the clip has no video stream")], self._strip(out_dir, [], set())
        w, h = int(video.get("width") or 0), int(video.get("height") or 0)
        fps = rate(video.get("r_frame_rate"))
        frames = int(video.get("nb_read_packets") or 0)
        codec = (video.get("codec_name"), video.get("profile"), video.get("pix_fmt"))
        checks = [
            _size_check(w, h, want_w, want_h),
            Check("fps", fps, float(want_fps), abs(fps - want_fps) < 1e-6, f"{fps:g} fps, {want_fps} wanted"),
            Check(
                "frame_count",
                frames,
                float(want_frames),
                frames == want_frames,
                f"{frames} frames, {want_frames} wanted",
            ),
            Check(
                "codec",
                None,
                None,
                codec == ("h264", "High", "yuv420p"),
                "{} {} {}, h264 High yuv420p wanted".format(*codec),
            ),
        ]
        if frames <= 0 or w <= 0 or h <= 0 or fps <= 0:
            why = "the clip has no frame to measure"
            checks += [Check("black_frames", None, limits["max_black_ratio"], False, why)]
            checks += [
                Check(f"character:{cid}", None, limits["min_character_similarity"], False, why) for cid, _ in figures
            ]
            return checks, self._strip(out_dir, [], set())
        indices = _sample_indices(frames)
        moving = camera != "static"
        log, pictures = _measuring(_decode, subject, _analysis_size(w, h), indices, moving)
        seconds = frames / fps
        black_frames = _black_frames(log, frames, fps)
        checks.append(
            Check(
                "black_frames",
                black_frames / frames,
                limits["max_black_ratio"],
                black_frames / frames <= limits["max_black_ratio"],
                f"{black_frames} of {frames} frames black",
                score=1 - black_frames / frames,
            )
        )
        if moving:
            frozen = _frozen_seconds(log, seconds)
            checks.append(
                Check(
                    "frozen_frames",
                    frozen / seconds,
                    limits["max_frozen_ratio"],
                    frozen / seconds <= limits["max_frozen_ratio"],
                    f"frozen {frozen:.2f} s of {seconds:.2f} s (camera {camera})",
                    score=1 - frozen / seconds,
                )
            )
        else:
            checks.append(
                Check("frozen_frames", None, limits["max_frozen_ratio"], True, "not measured: the camera is static")
            )
        labels = [f"frame {i}" for i in indices[: len(pictures)]]
        character_checks, failed = _character_checks(figures, pictures, labels, limits["min_character_similarity"])
        checks += character_checks
        failed |= {i for i, p in enumerate(pictures) if _is_black(p)}
        return checks, self._strip(out_dir, pictures, failed)

    @staticmethod
    def _strip(out_dir: Path, pictures: Sequence[np.ndarray], failed: set[int]) -> Path:
        """The sampled frames side by side, STRIP_HEIGHT high, failing ones framed in red."""
        tiles = [_framed(p, STRIP_HEIGHT, i in failed) for i, p in enumerate(pictures)]
        width = sum(t.width for t in tiles) + 4 * max(0, len(tiles) - 1)
        strip = Image.new("RGB", (max(1, width), STRIP_HEIGHT), (0, 0, 0))
        x = 0
        for tile in tiles:
            strip.paste(tile, (x, 0))
            x += tile.width + 4
        path = out_dir / "evidence.png"
        strip.save(path)
        return path


BACKEND = FramesJudge()
