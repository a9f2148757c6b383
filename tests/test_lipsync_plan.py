"""Lip-sync in the plan: every shot with dialogue gets a ``lipsync`` action between its clip and its mux,
which reads the clip, its lines' audio and offsets, and who speaks; an edit re-renders exactly what it
touches; shots without dialogue and journals from before the stage skip it.

On the noop backends in this process (the embedded lip-sync on real media has tests of its own:
tests/workers/test_lipsync.py, tests/workers/test_judge_sync.py).
"""

from __future__ import annotations

import copy

from farm.core.plan import STAGES, BackendChoice, EpisodeJob, plan_episode, sketch
from farm.settings import Settings
from tests.conftest import SMALL_SCRIPT, write_specs
from tests.test_takes import NOOP, _render

NOOP_ALL = dict(NOOP, backend_lipsync="noop")


def _episode(script):
    return {"series": "series.yaml", "number": 1, "title": "Test Episode", "target_seconds": 30, "script": script}


def _long_shots():
    """SMALL_SCRIPT with 4 s shots: a line's length then never changes a shot's."""
    script = copy.deepcopy(SMALL_SCRIPT)
    for scene in script["scenes"]:
        for shot in scene["shots"]:
            shot["duration"] = 4.0
    return script


def test_every_shot_with_dialogue_is_lip_synced_between_its_clip_and_its_mux(tmp_path):
    settings = Settings(store=str(tmp_path / "store"), **NOOP_ALL)
    result = _render(write_specs(tmp_path / "a", episode=_episode(_long_shots())), settings)
    by_label = {m.label: m for m in result.ran}
    assert sorted(label for label in by_label if label.startswith("lipsync")) == ["lipsync s01-02", "lipsync s02-01"]
    assert "lipsync s01-01" not in by_label  # no dialogue: its clip goes to the mux as it is


def test_a_line_edit_re_renders_its_audio_lipsync_mux_and_assembly_and_not_the_picture(tmp_path):
    """The shot is long enough for either text, so neither its keyframe nor its clip is made again."""
    settings = Settings(store=str(tmp_path / "store"), **NOOP_ALL)
    _render(write_specs(tmp_path / "a", episode=_episode(_long_shots())), settings)
    script = _long_shots()
    script["scenes"][0]["shots"][1]["lines"][0]["text"] = "Is somebody there?"
    edited = _render(write_specs(tmp_path / "b", episode=_episode(script)), settings)
    assert sorted(m.label for m in edited.ran) == ["episode ep001", "line s01-02#0", "lipsync s01-02", "mux s01-02"]


def test_an_off_screen_line_keeps_its_speaker_out_of_the_frame_and_is_marked_for_the_lipsync(tmp_path):
    """s02-01 lists no characters: its speakers are in frame, but Bo's line comes from outside it."""
    from farm.loader import load_episode

    script = _long_shots()
    script["scenes"][1]["shots"][0]["lines"][0]["off_screen"] = True
    loaded = load_episode(write_specs(tmp_path / "a", episode=_episode(script)))
    job = EpisodeJob(
        "default", "default", loaded.series, loaded.episode, {s: BackendChoice("noop", "1") for s in STAGES}
    )
    script_, samples, fixed = sketch(job, keyed=False)  # a sketch: lengths from the text, every take passed
    plan = plan_episode(job, script_, samples, fixed, keyed=False)
    keyframe = next(a for a in plan.actions if a.label == "keyframe s02-01")
    assert keyframe.params["characters"] == ["ana"]
    lip = next(a for a in plan.actions if a.label == "lipsync s02-01")
    assert [(x["speaker"], x["off_screen"]) for x in lip.params["lines"]] == [("bo", True), ("ana", False)]


def test_a_journal_from_before_lip_sync_plans_none():
    """A batch submitted before the stage existed names no lipsync backend: its episodes have no lipsync."""
    from tests.test_controller import BACKENDS, Harness

    assert "lipsync" not in BACKENDS
    h = Harness()
    h.submit()
    h.run()
    assert h.c.batch_status("b1", h.now)["episodes"]["delivered"] == 1
    assert not any(s.action.stage == "lipsync" for s in h.c.actions.values())


def test_a_lip_sync_model_is_judged_on_the_keyframes_faces_once_they_are_known(tmp_path):
    """A model finds faces itself (no "faces" feature): its params carry none, so its key does not wait on
    the keyframe; its sync judge is planned again with the keyframe's faces once they are known."""
    from farm.core.takes import JudgeChoice, Judging
    from farm.loader import load_episode

    loaded = load_episode(write_specs(tmp_path / "a", episode=_episode(_long_shots())))
    backends = {s: BackendChoice("noop", "1") for s in STAGES} | {"lipsync": BackendChoice("lips", "1")}
    judging = Judging(judges={"lipsync": (JudgeChoice("sync", "1", ()),)}, takes=1, strict=False)
    job = EpisodeJob("default", "default", loaded.series, loaded.episode, backends, judging=judging)
    fixed = plan_script_of(job)
    samples = {a.key: 24000 for a in fixed.actions if a.op == "line"}
    before = plan_episode(job, None, samples, fixed)
    lip = next(a for a in before.actions if a.label == "lipsync s01-02")
    kf = next(a for a in before.actions if a.label == "keyframe s01-02")
    judge = next(a for a in before.actions if a.op == "judge" and a.inputs["subject"].key == lip.key)
    assert lip.params["faces"] == {} and judge.params["expect"]["faces"] == {}
    face = {"box": [10, 10, 60, 60], "mouth": [35, 50], "mouth_width": 12}
    after = plan_episode(job, None, samples, fixed, faces={kf.key: {"ana": face}})
    assert next(a for a in after.actions if a.label == "lipsync s01-02").key == lip.key
    judged = next(a for a in after.actions if a.op == "judge" and a.inputs["subject"].key == lip.key)
    assert judged.params["expect"]["faces"] == {"ana": face} and judged.key != judge.key


def plan_script_of(job):
    from farm.core.plan import plan_script

    return plan_script(job, None)
