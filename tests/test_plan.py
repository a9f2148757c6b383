"""The pure planner: content-addressed keys, a graph that grows with facts, exact invalidation."""

from __future__ import annotations

import copy

from farm.core.plan import BackendChoice, EpisodeJob, action_key, layout_shot, plan_episode, script_params
from farm.core.script import Script, Shot
from farm.core.spec import Episode, Series
from tests.conftest import SMALL_SCRIPT, SMALL_SERIES

BACKENDS = {
    s: BackendChoice(n, "1")
    for s, n in {
        "script": "outline",
        "image": "pillow",
        "video": "ffmpeg-motion",
        "dubbing": "espeak-ng",
        "assembly": "ffmpeg",
    }.items()
}


def job(series=None, script=None, namespace="studio-a", **episode):
    ep = {"series": "series.yaml", "number": 1, "title": "T", "script": script or SMALL_SCRIPT} | episode
    return EpisodeJob(
        "studio-a", namespace, Series.model_validate(series or SMALL_SERIES), Episode.model_validate(ep), BACKENDS
    )


def full(j, samples_of=lambda text: 24_000 + 100 * len(text)):
    """Plan to completion, with line lengths given by a deterministic function of the text."""
    plan = plan_episode(j, None, {})
    samples = {a.key: samples_of(a.params["text"]) for a in plan.actions if a.op == "line"}
    return plan_episode(j, None, samples)


def labels(plan):
    return {a.key: a.label for a in plan.actions}


def changed(before, after):
    return sorted(label for key, label in labels(after).items() if key not in labels(before))


def test_keys_are_deterministic():
    """Planning the same episode twice gives the same keys in the same order."""
    assert [a.key for a in full(job()).actions] == [a.key for a in full(job()).actions]


def test_graph_grows_as_lines_are_voiced():
    """Before its lines have lengths, a shot's clip and mux (and the assembly) are not planned."""
    plan = plan_episode(job(), None, {})
    assert plan.final_key is None
    assert sorted(a.label for a in plan.actions if a.op in ("clip", "mux")) == ["clip s01-01", "mux s01-01"]
    done = full(job())
    assert done.final_key is not None
    assert sorted(a.op for a in done.actions).count("clip") == 3


def test_outline_episode_starts_with_the_script():
    """An outline episode plans only the script action until the script exists."""
    j = job(script=None, outline=[{"beat": "b", "lines": [{"speaker": "ana", "text": "hi"}]}])
    j = EpisodeJob(j.studio, j.namespace, j.series, j.episode.model_copy(update={"script": None}), BACKENDS)
    plan = plan_episode(j, None, {})
    assert [a.op for a in plan.actions] == ["script"] and plan.script_key == plan.actions[0].key


def test_editing_one_line_replans_exactly_its_audio_clip_mux_and_assembly():
    """One changed line touches that line, its shot's clip (length changed), mux and the episode only."""
    script = copy.deepcopy(SMALL_SCRIPT)
    script["scenes"][1]["shots"][0]["lines"][1]["text"] = "Then who rang the bell at midnight?"
    assert changed(full(job()), full(job(script=script))) == [
        "clip s02-01",
        "episode ep001",
        "line s02-01#1",
        "mux s02-01",
    ]


def test_same_length_line_keeps_the_clip():
    """When the new line is exactly as long, the clip is reused and only line, mux and episode change."""
    script = copy.deepcopy(SMALL_SCRIPT)
    script["scenes"][1]["shots"][0]["lines"][1]["text"] = "Then who sang?"  # same length, same samples below
    assert changed(full(job()), full(job(script=script))) == ["episode ep001", "line s02-01#1", "mux s02-01"]


def test_style_change_keeps_every_line():
    """A new visual style re-plans sheets, keyframes, clips, muxes and the episode, but no audio."""
    series = copy.deepcopy(SMALL_SERIES)
    series["style"]["palette"] = ["#000000", "#ffffff"]
    diff = changed(full(job()), full(job(series=series)))
    assert not [d for d in diff if d.startswith("line")]
    assert {d.split()[0] for d in diff} == {"sheet", "keyframe", "clip", "mux", "episode"}


def test_voice_change_keeps_the_pictures():
    """A new voice for Bo re-plans his lines, not sheets or keyframes."""
    series = copy.deepcopy(SMALL_SERIES)
    series["characters"][1]["voice"]["pitch"] = 20
    diff = changed(full(job()), full(job(series=series)))
    assert "line s02-01#0" in diff and not [d for d in diff if d.startswith(("sheet", "keyframe", "line s01"))]


def test_episode_title_only_touches_assembly():
    """Renaming an episode reuses every shot."""
    assert changed(full(job()), full(job(title="Another"))) == ["episode ep001"]


def test_namespace_separates_studios():
    """Two studios share no keys."""
    a, b = full(job()), full(job(namespace="studio-b"))
    assert not set(labels(a)) & set(labels(b))


def test_sheets_are_shared_across_episodes():
    """Another episode of the series reuses the character sheets and identical lines."""
    other = job(number=2, title="Two", seed=9)
    a, b = labels(full(job())), labels(full(other))
    shared = sorted(label for key, label in a.items() if key in b)
    assert shared == ["line s01-02#0", "line s02-01#0", "line s02-01#1", "sheet ana", "sheet bo"]


def test_key_covers_backend_version_and_inputs():
    """The key changes with the backend's version, parameters and input keys."""
    from farm.core.plan import Ref

    base = action_key("video", "clip", BackendChoice("m", "1"), {"a": 1}, {"k": Ref("x" * 64, "o")}, "ns")
    assert base != action_key("video", "clip", BackendChoice("m", "2"), {"a": 1}, {"k": Ref("x" * 64, "o")}, "ns")
    assert base != action_key("video", "clip", BackendChoice("m", "1"), {"a": 2}, {"k": Ref("x" * 64, "o")}, "ns")
    assert base != action_key("video", "clip", BackendChoice("m", "1"), {"a": 1}, {"k": Ref("y" * 64, "o")}, "ns")
    assert len(base) == 64 and int(base, 16) >= 0


def test_layout_fits_lines_in_whole_frames_and_samples():
    """A shot is stretched to hold its lines; its audio is exactly its frames' length."""
    shot = Shot(id="s", description="d", duration=0.5)
    layout = layout_shot(shot, [48_000, 24_000], fps=12)
    spf = 48_000 // 12
    assert layout.total_samples == layout.frames * spf
    assert layout.offsets == (12_000, 12_000 + 48_000 + 14_400)
    assert layout.offsets[-1] + 24_000 <= layout.total_samples < layout.offsets[-1] + 24_000 + 21_600 + spf
    assert layout_shot(shot, [], fps=12).frames == 6


def test_cues_match_line_windows():
    """Each subtitle cue spans exactly its line's audio, offset by the shots before it."""
    plan = full(job())
    final = plan.by_key()[plan.final_key]
    shots, cues = final.params["shots"], final.params["cues"]
    assert [c["text"] for c in cues] == ["Is anyone there?", "Only me.", "Then who rang?"]
    first_shot_seconds = shots[0]["frames"] / 12
    assert abs(cues[0]["start"] - (first_shot_seconds + 0.25)) < 1e-9
    assert abs((cues[0]["end"] - cues[0]["start"]) - (24_000 + 100 * len("Is anyone there?")) / 48_000) < 1e-9
    assert all(a["end"] <= b["start"] for a, b in zip(cues, cues[1:]))


def test_script_params_carry_the_outline():
    """The script action sees the series bible and the outline, and nothing machine-specific."""
    j = job(outline=[{"beat": "b", "lines": [{"speaker": "ana", "text": "hi"}]}])
    params = script_params(j)
    assert params["episode"]["outline"][0]["lines"][0]["text"] == "hi"
    assert [c["id"] for c in params["series"]["characters"]] == ["ana", "bo"]
    assert "voice" not in params["series"]["characters"][0]


def test_written_script_roundtrips():
    """A Script validates from its own JSON."""
    script = Script.model_validate(SMALL_SCRIPT)
    assert Script.model_validate_json(script.model_dump_json()) == script
