"""What users write: a Series (look, characters, voices) and its Episodes.

Pure models (pydantic v2). Reading files and turning validation errors into messages that name
the file, the line, the field path and the fix is ``farm.loader``'s job.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)

from farm.core.script import Line, Script, Slug, Text

# Bounds on what one spec may ask for, so that what validates also renders (and in a bounded time).
MAX_CHARACTERS = 50  # characters of a series
MAX_SCENES = 100  # beats of an outline, scenes of a hand-written script
MAX_SHOTS = 360  # shots of a hand-written script (180 s of 0.5 s shots)
MAX_LINES = 360  # dialogue lines of an episode
MAX_EPISODE_SECONDS = 180.0  # the longest target_seconds; bounds a script's shots and an episode's speech
MAX_BATCH_EPISODES = 500  # episode files (or globs) of one batch
TEXT_MAX = 2000  # farm.core.script.Text: what a Shot's description may hold


def _not_bool(value: Any) -> Any:
    """YAML reads yes/no/true/false as booleans, and a bool is an int to Python: refuse it where a number
    is expected rather than read ``number: true`` as 1."""
    if isinstance(value, bool):
        raise ValueError(f"is {str(value).lower()} (a yes/no value) but must be a number; write a number")
    return value


Int = Annotated[int, BeforeValidator(_not_bool)]
Float = Annotated[float, BeforeValidator(_not_bool)]


def _no_control(value: Any) -> Any:
    if isinstance(value, str) and any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError(
            f"{value[:80]!r} contains a control character (NUL, tab, newline...); write a plain relative path"
        )
    return value


# a file name or glob in a spec, relative to that spec's folder
SpecPath = Annotated[str, StringConstraints(min_length=1, max_length=1024), BeforeValidator(_no_control)]

Color = Annotated[str, StringConstraints(pattern=r"^#[0-9a-fA-F]{6}$")]
VoiceName = Annotated[str, StringConstraints(pattern=r"^[a-z]{2,3}(-[a-z0-9]{1,8})*(\+[a-z0-9]{1,12})?$")]
Name = Annotated[str, StringConstraints(min_length=1, max_length=80)]
Stage = Literal["script", "image", "video", "dubbing", "lipsync", "assembly"]
BackendName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9._-]{0,62}$")]
# stage -> backend name (embedded, or configured in settings); names only: URLs and keys live in settings
BackendNames = dict[Stage, BackendName]

# What a judge may judge (farm.core.plan): a take of a keyframe, a clip or a line, or the finished episode.
JudgedOp = Literal["keyframe", "clip", "line", "lipsync", "episode"]
MAX_TAKES = 10  # takes of one keyframe, clip or line a spec may allow
MAX_JUDGES = 4  # judges of one op
ThresholdName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,62}$")]

# fps values that divide 48 kHz exactly, so every shot's audio is a whole number of samples.
FRAME_RATES = (12, 15, 16, 24, 25, 30, 48, 50, 60)
SAMPLE_RATE = 48_000


class Language(BaseModel):
    espeak_voice: str
    iso639_2: str
    units_per_second: float  # words (or CJK characters) spoken per second, for length estimates
    cjk: bool = False


LANGUAGES: dict[str, Language] = {
    "en": Language(espeak_voice="en-us", iso639_2="eng", units_per_second=2.6),
    "zh": Language(espeak_voice="cmn", iso639_2="chi", units_per_second=4.5, cjk=True),
    "es": Language(espeak_voice="es", iso639_2="spa", units_per_second=2.8),
    "fr": Language(espeak_voice="fr-fr", iso639_2="fre", units_per_second=2.8),
    "de": Language(espeak_voice="de", iso639_2="ger", units_per_second=2.4),
}


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Voice(_Spec):
    voice: VoiceName = Field(description="espeak-ng voice, optionally with a variant: en-us+f3, cmn+m2")
    pitch: Int = Field(50, ge=0, le=99)
    rate: Int = Field(175, ge=80, le=450, description="words per minute")
    description: Text | None = Field(
        None, description="how the voice sounds, in words, for voice models that take one: 'a low, warm alto'"
    )


class Look(_Spec):
    description: Text
    hair: Color | None = None
    outfit: Color | None = None
    skin: Color | None = None

    @field_validator("hair", "outfit", "skin", mode="before")
    @classmethod
    def _not_empty(cls, value: Any, info: ValidationInfo) -> Any:
        # given but empty in a spec file: most often an unquoted colour, which YAML reads as a comment
        # (a model dumped and read back has None for a colour not given: that stays valid)
        if value is None and isinstance(info.context, dict) and info.context.get("yaml"):
            raise ValueError(
                f'is empty (YAML reads an unquoted #... as a comment); quote it: {info.field_name}: "#111111", '
                "or leave the field out"
            )
        return value


class Character(_Spec):
    id: Slug
    name: Name
    look: Look
    voice: Voice


class Style(_Spec):
    description: Text = Field(description="the series' visual style, in words")
    palette: list[Color] = Field(min_length=2, max_length=6, description="background to accent colours")

    @field_validator("palette", mode="before")
    @classmethod
    def _no_empty_colour(cls, value: Any) -> Any:
        if isinstance(value, list) and any(c is None for c in value):
            raise ValueError(
                'has an empty colour (YAML reads an unquoted #... as a comment); quote each one: - "#0b1030"'
            )
        return value


class Resolution(_Spec):
    width: Int = Field(1080, ge=144, le=4096, multiple_of=2)
    height: Int = Field(1920, ge=144, le=4096, multiple_of=2)


class Takes(_Spec):
    max: Int = Field(
        3, ge=1, le=MAX_TAKES, description="takes of a judged keyframe, clip or line before the best one is used"
    )


class Judge(_Spec):
    """One judge of an op, with threshold overrides (a bare name in a spec means no overrides)."""

    name: BackendName
    thresholds: dict[ThresholdName, Float] = Field(
        default_factory=dict, description="threshold name -> value, e.g. {max_black_ratio: 0.05}"
    )


def _judge_entry(value: Any) -> Any:
    return {"name": value} if isinstance(value, str) else value


JudgeEntry = Annotated[Judge, BeforeValidator(_judge_entry)]
# judged op -> its judges; an op not named keeps the default, [] judges nothing
Judges = dict[JudgedOp, Annotated[list[JudgeEntry], Field(max_length=MAX_JUDGES)]]


class Series(_Spec):
    id: Slug
    title: Name
    language: str = "en"
    style: Style
    resolution: Resolution = Resolution()
    fps: Int = 30
    seed: Int = Field(0, ge=0)
    characters: list[Character] = Field(min_length=1, max_length=MAX_CHARACTERS)
    backends: BackendNames = Field(default_factory=dict, description="stage -> backend name for this series")
    judges: Judges = Field(
        default_factory=dict, description="judged op -> judges, e.g. {clip: [frames], line: [audio]}; [] judges none"
    )
    takes: Takes | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Series:
        if self.language not in LANGUAGES:
            raise ValueError(f"language {self.language!r} is not supported; use one of {', '.join(LANGUAGES)}")
        if self.fps not in FRAME_RATES:
            raise ValueError(f"fps {self.fps} is not supported; use one of {', '.join(map(str, FRAME_RATES))}")
        ids = [c.id for c in self.characters]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"character ids must be unique; {', '.join(dupes)} is used more than once")
        voices: dict[tuple[str, int, int], str] = {}
        for c in self.characters:
            sig = (c.voice.voice, c.voice.pitch, c.voice.rate)
            if sig in voices:
                raise ValueError(
                    f"characters {voices[sig]!r} and {c.id!r} have the same voice; "
                    "change the voice, pitch or rate of one so each character sounds distinct"
                )
            voices[sig] = c.id
        return self

    def character(self, cid: str) -> Character:
        return next(c for c in self.characters if c.id == cid)

    @property
    def lang(self) -> Language:
        return LANGUAGES[self.language]


class Beat(_Spec):
    beat: Text = Field(description="what happens, in a sentence")
    location: Text = "unspecified"
    time_of_day: Annotated[str, StringConstraints(max_length=40)] = "day"
    characters: list[Slug] = Field(
        default_factory=list, max_length=MAX_CHARACTERS, description="who is present besides the speakers"
    )
    lines: list[Line] = Field(default_factory=list, max_length=MAX_LINES)


def _split(what: str) -> str:
    return f"{what}; split the story into more episodes"


def _bounded_outline(outline: list[Beat] | None) -> list[Beat] | None:
    lines = sum(len(beat.lines) for beat in outline or [])
    if lines > MAX_LINES:
        raise ValueError(_split(f"has {lines} lines; an episode may have at most {MAX_LINES}"))
    return outline


def _script_numbers(value: Any) -> Any:
    """A hand-written script's numbers (its model lives in farm.core.script) are not yes/no values either."""
    if not isinstance(value, dict):
        return value
    _not_bool(value.get("schema_version"))
    scenes = value.get("scenes")
    for si, scene in enumerate(scenes if isinstance(scenes, list) else []):
        shots = scene.get("shots") if isinstance(scene, dict) else None
        for hi, shot in enumerate(shots if isinstance(shots, list) else []):
            if isinstance(shot, dict) and isinstance(shot.get("duration"), bool):
                raise ValueError(
                    f"scenes[{si}].shots[{hi}].duration is {str(shot['duration']).lower()} (a yes/no value) "
                    "but must be a number of seconds; write a number"
                )
    return value


def _bounded_script(script: Script | None) -> Script | None:
    if script is None:
        return None
    shots = script.shots()
    lines = sum(len(shot.lines) for shot in shots)
    seconds = sum(shot.duration for shot in shots)
    if len(script.scenes) > MAX_SCENES:
        raise ValueError(_split(f"has {len(script.scenes)} scenes; an episode may have at most {MAX_SCENES}"))
    if len(shots) > MAX_SHOTS:
        raise ValueError(_split(f"has {len(shots)} shots; an episode may have at most {MAX_SHOTS}"))
    if lines > MAX_LINES:
        raise ValueError(_split(f"has {lines} lines; an episode may have at most {MAX_LINES}"))
    if seconds > MAX_EPISODE_SECONDS:
        raise ValueError(
            _split(
                f"its shots last {seconds:.1f} s together; an episode lasts at most {MAX_EPISODE_SECONDS:.0f} s: "
                "shorten the shots' durations"
            )
        )
    return script


class Episode(_Spec):
    series: SpecPath = Field(description="path of the series YAML, relative to this file")
    number: Int = Field(ge=1, le=9999)
    title: Name
    target_seconds: Float = Field(60, ge=30, le=MAX_EPISODE_SECONDS)
    seed: Int = Field(0, ge=0)
    outline: Annotated[list[Beat] | None, AfterValidator(_bounded_outline)] = Field(
        None, min_length=1, max_length=MAX_SCENES
    )
    script: Annotated[Script | None, BeforeValidator(_script_numbers), AfterValidator(_bounded_script)] = Field(
        None, description="a hand-written script; skips the script stage"
    )

    @model_validator(mode="after")
    def _one_source(self) -> Episode:
        if self.outline is None and self.script is None:
            raise ValueError("an episode needs an outline (beats with lines) or a hand-written script")
        return self

    @property
    def slug(self) -> str:
        return f"ep{self.number:03d}"


def check_episode(series: Series, episode: Episode) -> list[tuple[str, str]]:
    """Cross-file problems (field path, message): speakers and characters must belong to the series."""
    from farm.core.script import check_against

    known = {c.id for c in series.characters}
    names = ", ".join(sorted(known))
    problems: list[tuple[str, str]] = []
    if episode.outline is not None and episode.script is not None:  # refused here: plans may carry both
        problems.append(
            (
                "outline",
                "is given together with a hand-written script, and would be ignored; keep one: remove outline: to "
                "render the script as written, or remove script: to have one written from the outline",
            )
        )
    problems += _silent_lines(episode)
    problems += _outline_fits(series, episode)
    problems += _spoken_length(series, episode)
    if episode.script is not None:
        if episode.script.language != series.language:
            problems.append(
                ("script.language", f"is {episode.script.language!r} but the series speaks {series.language!r}")
            )
        problems += [(f"script.{path}", msg) for path, msg in check_against(episode.script, known)]
    for bi, beat in enumerate(episode.outline or []):
        for ci, who in enumerate(beat.characters):
            if who not in known:
                problems.append(
                    (f"outline[{bi}].characters[{ci}]", f"{who!r} is not a character of the series (known: {names})")
                )
        for li, line in enumerate(beat.lines):
            if line.speaker not in known:
                problems.append(
                    (
                        f"outline[{bi}].lines[{li}].speaker",
                        f"{line.speaker!r} is not a character of the series (known: {names})",
                    )
                )
    return problems


def _lines(episode: Episode) -> list[tuple[str, Line]]:
    """Every dialogue line of an episode with its field path."""
    out = [
        (f"outline[{bi}].lines[{li}]", line)
        for bi, beat in enumerate(episode.outline or [])
        for li, line in enumerate(beat.lines)
    ]
    for si, scene in enumerate(episode.script.scenes if episode.script else []):
        for hi, shot in enumerate(scene.shots):
            out += [(f"script.scenes[{si}].shots[{hi}].lines[{li}]", line) for li, line in enumerate(shot.lines)]
    return out


def _silent_lines(episode: Episode) -> list[tuple[str, str]]:
    return [
        (f"{where}.text", "is only whitespace, which would be a moment of silence; write the words, or remove the line")
        for where, line in _lines(episode)
        if not line.text.strip()
    ]


def spoken_seconds(text: str, lang: Language) -> float:
    """About how long a line takes to say (as farm.core.plan.spoken_samples estimates it)."""
    units = len(text) if lang.cjk else max(1, len(text.split()))
    return 0.3 + units / lang.units_per_second


def _spoken_length(series: Series, episode: Episode) -> list[tuple[str, str]]:
    lines = _lines(episode)
    seconds = sum(spoken_seconds(line.text, series.lang) for _, line in lines)
    if seconds <= MAX_EPISODE_SECONDS:
        return []
    field = "script" if episode.script is not None else "outline"
    return [
        (
            field,
            _split(
                f"its {len(lines)} lines take about {seconds:.0f} s to say; an episode lasts at most "
                f"{MAX_EPISODE_SECONDS:.0f} s: cut or shorten lines"
            ),
        )
    ]


def _outline_fits(series: Series, episode: Episode) -> list[tuple[str, str]]:
    """The embedded script writer (workers/script/outline.py) composes shot descriptions from a beat, its
    location and time of day and the series' style; each must fit a Shot's description."""
    problems: list[tuple[str, str]] = []
    names = {c.id: c.name for c in series.characters}
    style = series.style.description
    for bi, beat in enumerate(episode.outline or []):
        wide = len(f"{beat.location}, {beat.time_of_day}. {beat.beat} ({style})")
        close = max((len(f"{names.get(line.speaker, '')} speaks. {beat.beat}") for line in beat.lines), default=0)
        if max(wide, close) > TEXT_MAX:
            problems.append(
                (
                    f"outline[{bi}].beat",
                    f"together with its location, time of day and the series' style description it makes a shot "
                    f"description of {max(wide, close)} characters, over the {TEXT_MAX} a shot may have; shorten "
                    f"the beat ({len(beat.beat)}) or the location ({len(beat.location)})",
                )
            )
    return problems


PRIORITY_CLASSES = {"low": 0, "normal": 1, "high": 2, "urgent": 3}


class BudgetSpec(_Spec):
    tokens: Int | None = Field(None, ge=0)
    gpu_seconds: Float | None = Field(None, ge=0)
    money: Float | None = Field(None, ge=0, description="in the price table's currency (settings)")


class Webhook(_Spec):
    url: Annotated[str, StringConstraints(pattern=r"^https?://[^\s]+$", max_length=2000)]
    secret_env: Annotated[str, StringConstraints(pattern=r"^[A-Z_][A-Z0-9_]{0,63}$")] | None = Field(
        None, description="name of the environment variable holding the HMAC secret (never the secret itself)"
    )


class BatchSpec(_Spec):
    """A nightly batch: whose it is, how urgent, by when, for how much, and which episodes."""

    studio: Slug
    name: Annotated[str, StringConstraints(min_length=1, max_length=120)] | None = None
    priority: Literal["low", "normal", "high", "urgent"] = "normal"
    deadline: AwareDatetime | None = None
    budget: BudgetSpec = BudgetSpec()
    episodes: list[SpecPath] = Field(
        min_length=1, max_length=MAX_BATCH_EPISODES, description="episode files or globs, relative to the batch file"
    )
    webhook: Webhook | None = None
    backends: BackendNames = Field(default_factory=dict, description="stage -> backend name; wins over the series'")
    judges: Judges = Field(default_factory=dict, description="judged op -> judges; wins over the series'")
    takes: Takes | None = None
    strict: bool = Field(
        False, description="an episode with a shot whose every take failed fails, instead of delivering for review"
    )


SPEC_FIELDS = sorted(
    {
        name
        for model in (
            Voice,
            Look,
            Character,
            Style,
            Resolution,
            Series,
            Beat,
            Episode,
            Line,
            BatchSpec,
            BudgetSpec,
            Webhook,
            Judge,
            Takes,
        )
        for name in model.model_fields
    }
    | {"scenes", "shots", "framing", "camera", "duration", "description", "location", "time_of_day", "schema_version"}
)
