"""The embedded script writer: deterministic, valid, faithful to the outline, near the target length."""

from __future__ import annotations

import json

from farm.core.plan import BackendChoice, EpisodeJob, script_params
from farm.core.script import Script, check_against
from farm.core.spec import Episode, Series
from tests.conftest import SMALL_SERIES
from workers.script.outline import BACKEND, write_script

OUTLINE = [
    {
        "beat": "Ana hears a knock",
        "location": "kitchen",
        "time_of_day": "night",
        "lines": [{"speaker": "ana", "text": "Who's there?"}, {"speaker": "bo", "text": "It's me, open up."}],
    },
    {
        "beat": "They talk in the hallway",
        "location": "hallway",
        "characters": ["bo"],
        "lines": [{"speaker": "ana", "text": "你好，世界。"}],
    },
]


def _params(target=45, seed=3):
    episode = Episode.model_validate(
        {"series": "s.yaml", "number": 1, "title": "T", "target_seconds": target, "seed": seed, "outline": OUTLINE}
    )
    job = EpisodeJob("s", "s", Series.model_validate(SMALL_SERIES), episode, {"script": BackendChoice("outline", "1")})
    return script_params(job)


def test_same_outline_same_script():
    """The writer is deterministic."""
    assert write_script(_params()) == write_script(_params())


def test_every_outline_line_is_in_the_script_in_order():
    """Every line of the outline appears once, in order, with its speaker."""
    script = write_script(_params())
    lines = [(l.speaker, l.text) for s in script.shots() for l in s.lines]
    assert lines == [(l["speaker"], l["text"]) for b in OUTLINE for l in b["lines"]]
    assert check_against(script, {"ana", "bo"}) == []


def test_scenes_follow_beats_and_open_wide():
    """Each beat becomes a scene that opens on a wide establishing shot with everyone present."""
    script = write_script(_params())
    assert [s.location for s in script.scenes] == ["kitchen", "hallway"]
    assert script.scenes[1].shots[0].framing.value == "wide"
    assert script.scenes[1].shots[0].characters == ["bo", "ana"]


def test_length_lands_on_target():
    """Establishing shots fill what nominal-length lines leave of the target."""
    from workers.script.outline import _NOMINAL_LINE_S

    for target in (30, 60):
        script = write_script(_params(target=target))
        wide = [s.duration for s in script.shots() if not s.lines]
        assert abs(sum(wide) + 3 * _NOMINAL_LINE_S - target) < 0.05
        assert len(set(wide)) == 1


def test_line_text_does_not_move_other_shots():
    """Editing a line's words changes only that line: every shot's duration and picture stay."""
    params = _params()
    edited = _params()
    edited["episode"]["outline"][0]["lines"][1]["text"] = "It is me, and I have been out here in the rain for an hour."
    a, b = write_script(params).shots(), write_script(edited).shots()
    assert [s.model_copy(update={"lines": []}) for s in a] == [s.model_copy(update={"lines": []}) for s in b]


def test_seed_changes_camera_moves():
    """A different seed draws different camera moves."""
    moves = lambda seed: [s.camera for s in write_script(_params(seed=seed)).shots()]  # noqa: E731
    assert any(moves(1) != moves(s) for s in range(2, 6))


def test_backend_writes_valid_json(tmp_path):
    """The backend writes script.json that validates as a Script."""
    result = BACKEND.run("script", {}, _params(), tmp_path)
    script = Script.model_validate(json.loads(result.files["script"].read_text(encoding="utf-8")))
    assert result.meta["shots"] == len(script.shots()) == 5
