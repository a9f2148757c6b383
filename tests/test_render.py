"""Rendering whole episodes on a real local Ray with real ffmpeg and espeak-ng.

The properties a studio cares about: the output plays with the right size, codecs and length; one
subtitle cue per line, exactly; a rerender costs nothing; an edit re-renders exactly what it touches.
"""

from __future__ import annotations

import copy
import subprocess

import ffmpeg
import pytest

from farm.loader import load_episode
from farm.runtime.ray_runtime import RayRuntime
from farm.service.local import render_episode
from farm.settings import Settings
from tests.conftest import SMALL_SCRIPT, SMALL_SERIES, write_specs

pytestmark = [pytest.mark.ray, pytest.mark.media, pytest.mark.e2e]


def render(episode_path, store, ray_local, **settings):
    cfg = Settings(store=str(store), studio="test-studio", **settings)
    return render_episode(load_episode(episode_path), cfg, RayRuntime(cfg.store_spec(), catalog=cfg.catalog()))


def streams(path):
    info = ffmpeg.probe(str(path))
    by_type = {}
    for s in info["streams"]:
        by_type.setdefault(s["codec_type"], s)
    return info, by_type


def srt_cues(path):
    blocks = [b for b in path.read_text(encoding="utf-8").strip().split("\n\n") if b.strip()]
    return [b.split("\n", 2)[2] for b in blocks]


def subtitle_track_cues(path):
    out = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(path), "-map", "0:s:0", "-f", "srt", "-"], capture_output=True, check=True
    ).stdout.decode("utf-8")
    return [b.split("\n", 2)[2] for b in out.strip().replace("\r\n", "\n").split("\n\n") if b.strip()]


@pytest.fixture(scope="module")
def first(tmp_path_factory, ray_local):
    """The small episode rendered once into a fresh store, shared by the tests that only read it."""
    folder = tmp_path_factory.mktemp("small")
    store = folder / "store"
    result = render(write_specs(folder / "specs"), store, ray_local)
    return folder, store, result


def test_output_plays_with_the_right_shape(first):
    """The MP4 is H.264 yuv420p + AAC + a soft subtitle track at the series' size, as long as its shots."""
    folder, store, result = first
    info, s = streams(result.video)
    assert (s["video"]["codec_name"], s["video"]["pix_fmt"]) == ("h264", "yuv420p")
    assert (s["video"]["width"], s["video"]["height"]) == (180, 320)
    assert s["audio"]["codec_name"] == "aac" and s["subtitle"]["codec_name"] == "mov_text"
    shot_frames = sum(m.meta["frames"] for m in result.ran if m.op == "mux")
    assert int(s["video"]["nb_frames"]) == shot_frames
    assert abs(float(info["format"]["duration"]) - shot_frames / 12) < 0.1
    subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(result.video), "-f", "null", "-"], check=True, capture_output=True
    )


def test_one_cue_per_line_exactly(first):
    """The sidecar SRT and the MP4's subtitle track both hold one cue per dialogue line, verbatim."""
    _, _, result = first
    lines = [l["text"] for sc in SMALL_SCRIPT["scenes"] for sh in sc["shots"] for l in sh.get("lines", [])]
    assert srt_cues(result.subtitles) == lines
    assert subtitle_track_cues(result.video) == lines


def test_deliverables_have_readable_paths(first):
    """The deliverables sit under studio/episodes/series/episode in the store."""
    _, store, result = first
    assert result.video == store / "test-studio" / "episodes" / "test-series" / "ep001" / "episode.mp4"
    assert result.storyboard.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result.subtitles.name == "episode.srt"


def test_every_action_ran_once(first):
    """A first render runs every action of the graph and caches none."""
    _, _, result = first
    ops = sorted(m.op for m in result.ran)
    assert ops.count("line") == 3 and ops.count("clip") == 3 and ops.count("sheet") == 2
    assert ops.count("episode") == 1 and result.cached == []
    # the embedded backends make good takes: each keyframe, clip, line and the episode judged once, and passed
    judged = sorted(m.label.split(" ")[1] for m in result.ran if m.stage == "judge")
    assert judged == ["audio"] * 3 + ["delivery"] + ["frames"] * 6 + ["sync"] * 2
    # the two shots with dialogue are lip-synced, and their speakers' mouths move in time (the sync judge)
    assert sorted(m.label for m in result.ran if m.op == "lipsync") == ["lipsync s01-02", "lipsync s02-01"]
    assert result.flagged == [] and all(len(t["takes"]) == 1 for t in result.takes)
    assert all(m.usage.cpu_seconds >= 0 for m in result.ran)


def test_rerender_runs_nothing(first, ray_local):
    """Rendering the same episode again runs zero actions."""
    folder, store, first_result = first
    again = render(folder / "specs" / "ep001.yaml", store, ray_local)
    assert again.ran == [] and len(again.cached) == len(first_result.ran)
    assert again.video.read_bytes() == first_result.video.read_bytes()


def test_one_line_edit_reruns_exactly_what_it_touches(tmp_path, ray_local):
    """Changing one line re-runs that line's audio, its shot's clip and mux, and the assembly."""
    store = tmp_path / "store"
    render(write_specs(tmp_path / "a"), store, ray_local)
    script = copy.deepcopy(SMALL_SCRIPT)
    script["scenes"][1]["shots"][0]["lines"][1]["text"] = "Then who rang the bell at midnight, in all this rain?"
    ep = {"series": "series.yaml", "number": 1, "title": "Test Episode", "target_seconds": 30, "script": script}
    edited = render(write_specs(tmp_path / "b", episode=ep), store, ray_local)
    assert sorted(m.label for m in edited.ran) == [
        "clip s02-01",
        "episode ep001",
        "judge audio line s02-01#1",
        "judge delivery episode ep001",
        "judge frames clip s02-01",
        "judge sync lipsync s02-01",
        "line s02-01#1",
        "lipsync s02-01",
        "mux s02-01",
    ]
    # (52 characters: wrapped into two lines of at most 42)
    assert srt_cues(edited.subtitles)[-1].replace("\n", " ") == script["scenes"][1]["shots"][0]["lines"][1]["text"]


def test_style_change_rerenders_pictures_not_audio(tmp_path, ray_local):
    """A new palette re-renders sheets, keyframes and clips, and no line of audio."""
    store = tmp_path / "store"
    render(write_specs(tmp_path / "a"), store, ray_local)
    series = copy.deepcopy(SMALL_SERIES)
    series["style"]["palette"] = ["#300000", "#600000", "#ffffff"]
    changed = render(write_specs(tmp_path / "b", series=series), store, ray_local)
    ops = sorted({m.op for m in changed.ran})
    assert ops == ["clip", "episode", "judge", "keyframe", "lipsync", "mux", "sheet"]


def test_outline_episode_and_line_edit(tmp_path, ray_local):
    """An outline is scripted, rendered, and a one-line edit re-runs the script, that line, its shot and the assembly."""
    outline = [
        {
            "beat": "Ana waits",
            "location": "station",
            "lines": [{"speaker": "ana", "text": "Late again."}, {"speaker": "bo", "text": "Sorry."}],
        }
    ]
    ep = {"series": "series.yaml", "number": 3, "title": "Outline", "target_seconds": 30, "outline": outline}
    store = tmp_path / "store"
    first = render(write_specs(tmp_path / "a", episode=ep), store, ray_local)
    assert {m.op for m in first.ran} >= {"script", "sheet", "keyframe", "line", "clip", "mux", "episode"}
    assert abs(first.duration_seconds - 30) < 4
    edited = copy.deepcopy(ep)
    edited["outline"][0]["lines"][1]["text"] = "Sorry, the tram broke down twice on the bridge."
    second = render(write_specs(tmp_path / "b", episode=edited), store, ray_local)
    assert sorted(m.label for m in second.ran) == [
        "clip s01-03",
        "episode ep003",
        "judge audio line s01-03#0",
        "judge delivery episode ep003",
        "judge frames clip s01-03",
        "judge sync lipsync s01-03",
        "line s01-03#0",
        "lipsync s01-03",
        "mux s01-03",
        "script ep003",
    ]


HOSTILE = [
    'He said "no": 100% sure',
    "C:\\path\\to {\\an8}{braces} <b>bold</b> --> arrow",
    "first line\nsecond line",
    "emoji 🎬🍵 and العربية and עברית",
    "'single' `back` $HOME ; rm -rf / | & %s %n",
]


def test_hostile_text_renders_exactly(tmp_path, ray_local):
    """Dialogue and titles hostile to shells, filters and subtitle formats come out verbatim."""
    script = copy.deepcopy(SMALL_SCRIPT)
    script["scenes"][1]["shots"][0]["lines"] = [{"speaker": "bo", "text": t} for t in HOSTILE]
    ep = {
        "series": "series.yaml",
        "number": 4,
        "title": 'Title: "quotes" {x} 100% \\ 🎬',
        "target_seconds": 30,
        "script": script,
    }
    result = render(write_specs(tmp_path, episode=ep), tmp_path / "store", ray_local)
    expected = ["Is anyone there?", *HOSTILE]

    def flat(texts):  # a line past 42 characters is wrapped (tests/workers/test_subtitles.py), never changed
        return [" ".join(t.split()) for t in texts]

    assert flat(srt_cues(result.subtitles)) == flat(expected)
    assert flat(subtitle_track_cues(result.video)) == flat(expected)
    tags = ffmpeg.probe(str(result.video))["format"].get("tags", {})
    assert tags.get("title") == ep["title"]


@pytest.mark.s3
def test_render_on_s3(tmp_path, ray_local, s3_server):
    """With an s3:// store the episode renders, lands under its readable path, and a rerender is free."""
    settings = {
        "store": "s3://farm-e2e/run1",
        "s3_endpoint": s3_server.endpoint,
        "s3_access_key": s3_server.access_key,
        "s3_secret_key": s3_server.secret_key,
        "s3_secure": s3_server.secure,
        "s3_region": s3_server.region,
    }
    path = write_specs(tmp_path / "specs")
    cfg = Settings(studio="test-studio", **settings)
    first = render_episode(load_episode(path), cfg, RayRuntime(cfg.store_spec()), out_dir=tmp_path / "out")
    assert first.video.is_file() and first.video.parent == tmp_path / "out" / "test-studio" / "test-series" / "ep001"
    assert first.store_paths["video"] == "test-studio/episodes/test-series/ep001/episode.mp4"
    keys = {o.object_name for o in s3_server.client().list_objects("farm-e2e", prefix="run1/", recursive=True)}
    assert "run1/test-studio/episodes/test-series/ep001/episode.mp4" in keys
    again = render_episode(load_episode(path), cfg, RayRuntime(cfg.store_spec()), out_dir=tmp_path / "out2")
    assert again.ran == [] and again.video.read_bytes() == first.video.read_bytes()


def test_render_and_batch_deliver_byte_identical_episodes(first, tmp_path, ray_local):
    """farm render and a batch in the controller run one engine: the same episode and settings give the
    same bytes, under the same readable paths."""
    from farm.service.host import ControllerService
    from tests.conftest import wait_until

    folder, store, rendered = first
    settings = Settings(store=str(tmp_path / "store"), studio="test-studio", metrics_port=0)
    loaded = load_episode(folder / "specs" / "ep001.yaml")
    service = ControllerService(settings.model_dump(mode="json"))
    try:
        item = {"series": loaded.series.model_dump(mode="json"), "episode": loaded.episode.model_dump(mode="json")}
        batch = service.submit({"studio": "test-studio", "namespace": "test-studio", "episodes": [item]})
        status = wait_until(
            lambda: (s := service.status(batch))["status"] != "running" and s, timeout=300, what="the batch to finish"
        )
    finally:
        service.stop()
        service.runtime.shutdown()
    assert status["episodes"]["delivered"] == 1
    assert status["deliverables"]["test-series/ep001"] == rendered.store_paths
    for path in rendered.store_paths.values():
        assert (tmp_path / "store" / path).read_bytes() == (store / path).read_bytes(), path


def _noop_settings(tmp_path, **settings):
    return Settings(
        store=str(tmp_path / "store"),
        studio="acme",
        **{f"backend_{s}": "noop" for s in ("image", "video", "assembly")} | settings,
    )


def test_render_retries_by_the_policy_and_gives_up_by_it(tmp_path, ray_local):
    """Every line fails once, retryably: farm render retries each after the policy's backoff (its
    journal says so) and delivers; with max_attempts 1 the render fails with the policy's reason."""
    from farm.core.events import ActionDispatched, ActionFailed, ActionRetry
    from farm.errors import FarmError
    from farm.store import LocalStore
    from farm.store.journal import StoreJournal, render_prefix

    specs = write_specs(tmp_path / "specs")

    def flaky(marks, retry):  # each in a store of its own: nothing is done before it starts
        return _noop_settings(
            tmp_path / marks,
            backend_dubbing="flaky",
            retry=retry,
            backends={
                "flaky": {
                    "kind": "tests.support.fake_backends:Flaky",
                    "stage": "dubbing",
                    "marks": str(tmp_path / marks),
                }
            },
        )

    cfg = flaky("marks-a", {"base_s": 0.5, "max_delay_s": 0.5})
    result = render_episode(load_episode(specs), cfg, RayRuntime(cfg.store_spec(), catalog=cfg.catalog()))
    assert sorted(m.label for m in result.ran if m.op == "line") == ["line s01-02#0", "line s02-01#0", "line s02-01#1"]
    events = list(
        StoreJournal(
            LocalStore(tmp_path / "marks-a" / "store"), render_prefix("acme", "test-series", "ep001", result.batch)
        ).replay()
    )
    failed = {e.key: e for e in events if isinstance(e, ActionFailed)}
    retries = {e.key: e for e in events if isinstance(e, ActionRetry)}
    assert len(failed) == len(retries) == 3 and all(e.data.retryable for e in failed.values())
    for key, retry in retries.items():
        again = [e for e in events if isinstance(e, ActionDispatched) and e.key == key and e.seq > retry.seq]
        assert retry.data.not_before >= failed[key].at and again[0].at >= retry.data.not_before

    cfg = flaky("marks-b", {"max_attempts": 1})
    with pytest.raises(FarmError, match="gave up after 1 failed attempts: line .*: the voice server hiccuped"):
        render_episode(load_episode(specs), cfg, RayRuntime(cfg.store_spec(), catalog=cfg.catalog()))


def test_render_holds_the_resources_settings_give_a_stage(tmp_path, ray_local):
    """FARM_STAGE_RESOURCES reaches farm render: lines that must hold 3 CPUs never start on a 2-CPU Ray,
    and the render says what it waits for instead of waiting for ever."""
    from farm.errors import FarmError

    cfg = _noop_settings(tmp_path, backend_dubbing="noop", stage_resources={"dubbing": {"num_cpus": 3}})
    with pytest.raises(FarmError, match=r"3 action\(s\) need 3 CPUs at once"):
        render_episode(
            load_episode(write_specs(tmp_path / "specs")),
            cfg,
            RayRuntime(cfg.store_spec(), catalog=cfg.catalog()),
            resource_wait_s=2.0,
        )
