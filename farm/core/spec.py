"""What users write: a Series (look, characters, voices) and its Episodes.

Pure models (pydantic v2). Reading files and turning validation errors into messages that name
the file, the line, the field path and the fix is ``farm.loader``'s job.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints, model_validator

from farm.core.script import Line, Script, Slug, Text

Color = Annotated[str, StringConstraints(pattern=r"^#[0-9a-fA-F]{6}$")]
VoiceName = Annotated[str, StringConstraints(pattern=r"^[a-z]{2,3}(-[a-z0-9]{1,8})*(\+[a-z0-9]{1,12})?$")]
Name = Annotated[str, StringConstraints(min_length=1, max_length=80)]
Stage = Literal["script", "image", "video", "dubbing", "assembly"]
BackendName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9._-]{0,62}$")]
# stage -> backend name (embedded, or configured in settings); names only: URLs and keys live in settings
BackendNames = dict[Stage, BackendName]

# fps values that divide 48 kHz exactly, so every shot's audio is a whole number of samples.
FRAME_RATES = (12, 15, 24, 25, 30, 48, 50, 60)
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
    pitch: int = Field(50, ge=0, le=99)
    rate: int = Field(175, ge=80, le=450, description="words per minute")


class Look(_Spec):
    description: Text
    hair: Color | None = None
    outfit: Color | None = None
    skin: Color | None = None


class Character(_Spec):
    id: Slug
    name: Name
    look: Look
    voice: Voice


class Style(_Spec):
    description: Text = Field(description="the series' visual style, in words")
    palette: list[Color] = Field(min_length=2, max_length=6, description="background to accent colours")


class Resolution(_Spec):
    width: int = Field(1080, ge=144, le=4096, multiple_of=2)
    height: int = Field(1920, ge=144, le=4096, multiple_of=2)


class Series(_Spec):
    id: Slug
    title: Name
    language: str = "en"
    style: Style
    resolution: Resolution = Resolution()
    fps: int = 30
    seed: int = Field(0, ge=0)
    characters: list[Character] = Field(min_length=1)
    backends: BackendNames = Field(default_factory=dict, description="stage -> backend name for this series")

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
    characters: list[Slug] = Field(default_factory=list, description="who is present besides the speakers")
    lines: list[Line] = Field(default_factory=list)


class Episode(_Spec):
    series: Annotated[str, StringConstraints(min_length=1)] = Field(
        description="path of the series YAML, relative to this file"
    )
    number: int = Field(ge=1, le=9999)
    title: Name
    target_seconds: float = Field(60, ge=30, le=180)
    seed: int = Field(0, ge=0)
    outline: list[Beat] | None = Field(None, min_length=1)
    script: Script | None = Field(None, description="a hand-written script; skips the script stage")

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


PRIORITY_CLASSES = {"low": 0, "normal": 1, "high": 2, "urgent": 3}


class BudgetSpec(_Spec):
    tokens: int | None = Field(None, ge=0)
    gpu_seconds: float | None = Field(None, ge=0)
    money: float | None = Field(None, ge=0, description="in the price table's currency (settings)")


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
    episodes: list[Annotated[str, StringConstraints(min_length=1)]] = Field(
        min_length=1, description="episode files or globs, relative to the batch file"
    )
    webhook: Webhook | None = None
    backends: BackendNames = Field(default_factory=dict, description="stage -> backend name; wins over the series'")


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
        )
        for name in model.model_fields
    }
    | {"scenes", "shots", "framing", "camera", "duration", "description", "location", "time_of_day", "schema_version"}
)
