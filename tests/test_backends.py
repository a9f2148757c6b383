"""Choosing and running configured backends: the catalogue, per-series and per-batch choices,
batching on GPU workers, provider jobs that outlive a crash, and an episode rendered end to end
through an OpenAI-compatible script writer and speech server with its tokens accounted."""

from __future__ import annotations

import json
import multiprocessing
import threading
import time
from pathlib import Path

import pytest

from farm import catalog as backends
from farm.catalog import Catalog, UnknownBackend, resolve
from farm.cli.app import main as farm_main
from farm.core.manifest import Manifest
from farm.core.plan import Action
from farm.core.state import Profile
from farm.errors import SpecError
from farm.loader import load_episode
from farm.runtime.batching import Batcher
from farm.settings import Settings, preflight
from farm.store import ArtifactStore, LocalStore
from tests.conftest import SMALL_SCRIPT, SMALL_SERIES, wait_until, write_specs
from workers.api import BatchItem, ConfigError, StageError

BATCHING = "tests.support.fake_backends:Batching"
RESUMABLE = "tests.support.fake_backends:Resumable"
CHAT = {"kind": "openai-chat", "base_url": "http://127.0.0.1:9/v1", "model": "m1", "api_key": "sk-secret-1"}


# -- the catalogue -------------------------------------------------------------------------------
def test_catalog_lists_embedded_and_configured_backends():
    catalog = Catalog(
        {
            "llm": CHAT,
            "tts": {"kind": "openai-speech", "base_url": "http://h/v1", "model": "t", "voices": {"*": "alloy"}},
        }
    )
    assert catalog.names("script") == ["outline", "noop", "llm"]
    assert catalog.names("dubbing") == ["espeak-ng", "noop", "tts"]
    assert catalog.load("script", "llm") is catalog.load("script", "llm")  # built once per process
    with pytest.raises(UnknownBackend, match="does script, not image"):
        catalog.load("image", "llm")
    with pytest.raises(UnknownBackend, match=r"no video backend named 'nope' \(known: ffmpeg-motion, noop\)"):
        catalog.load("video", "nope")


def test_version_digests_what_changes_the_output_not_urls_or_keys():
    def version(**change):
        return Catalog({"llm": CHAT | change}).choose({"script": "llm"})["script"].version

    assert version() == version(base_url="http://elsewhere:8000/v1") == version(api_key="sk-other")
    assert version(model="m2") != version()
    assert "sk-secret" not in version()


def test_bad_settings_name_the_backend_and_field():
    catalog = Catalog(
        {
            "llm": {"kind": "openai-chat", "model": "m"},
            "x": {"kind": "teleport"},
            "own": {"kind": "no.such.module:Thing"},
        }
    )
    problems = "\n".join(catalog.problems())
    assert "backends.llm.base_url" in problems
    with pytest.raises(ConfigError, match=r"backends\.x\.kind: 'teleport' is not a backend kind"):
        catalog.load("image", "x")
    with pytest.raises(ConfigError, match=r"backends\.own\.kind: cannot import"):
        catalog.load("image", "own")
    with pytest.raises(ConfigError, match="taken by an embedded backend"):
        Catalog({"pillow": CHAT})


def test_batch_choice_wins_over_series_which_wins_over_settings():
    defaults = Settings().backend_names()
    names = resolve(defaults, {"image": "series-image", "script": "series-script"}, {"image": "batch-image"})
    assert names == defaults | {"image": "batch-image", "script": "series-script"}


def test_a_spec_naming_an_unknown_backend_is_refused_with_file_and_field(tmp_path):
    series = SMALL_SERIES | {"backends": {"image": "flux"}}
    episode = write_specs(tmp_path, series=series)
    with pytest.raises(SpecError) as err:
        preflight(Settings(store=str(tmp_path / "store")), [load_episode(episode)])
    assert str(tmp_path / "series.yaml") in str(err.value)
    assert "backends.image: no image backend named 'flux'" in str(err.value)
    assert not (tmp_path / "store").exists()  # nothing ran


def test_a_series_chooses_its_backend(tmp_path):
    """The series' choice reaches the plan: its actions carry the backend and its version (farm render
    on the in-process runtime, which records what it is asked to run)."""
    from farm.runtime.local import InProcessRuntime
    from farm.service.local import render_episode

    settings = Settings(
        store=str(tmp_path / "store"),
        backends={"fast": {"kind": BATCHING, "flavour": "x", "num_gpus": 0, "delay_s": 0.0}},
        **{f"backend_{s}": "noop" for s in ("video", "dubbing", "assembly")},
    )
    episode = write_specs(tmp_path, series=SMALL_SERIES | {"backends": {"image": "fast"}})
    runtime = InProcessRuntime(settings.store_spec(), settings.catalog(), cpus=2)
    try:
        result = render_episode(load_episode(episode), settings, runtime)
    finally:
        runtime.shutdown()
    images = {(m.backend, m.version) for m in result.ran if m.stage == "image"}
    assert images == {("fast", settings.catalog().load("image", "fast").version)}
    assert {m.backend for m in result.ran if m.stage == "video"} == {"noop"}


# -- batching ------------------------------------------------------------------------------------
def _in_threads(batcher, items):
    results: list = [None] * len(items)

    def one(i, op, params):
        try:
            results[i] = batcher.run(op, BatchItem({}, params, items[i][2]))
        except StageError as exc:
            results[i] = exc

    threads = [threading.Thread(target=one, args=(i, op, params)) for i, (op, params, _) in enumerate(items)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return results


def test_batcher_groups_concurrent_actions_with_equal_keys(tmp_path):
    from tests.support.fake_backends import Batching

    backend = Batching("b", {"max_batch": 3, "delay_s": 0.05})
    batcher = Batcher(backend, wait_s=5.0)  # generous: the batch fills long before on any machine
    dirs = [tmp_path / str(i) for i in range(4)]
    for d in dirs:
        d.mkdir()
    same = {"width": 64, "height": 64}
    items = [("keyframe", same | {"seed": i}, dirs[i]) for i in range(3)]
    results = _in_threads(batcher, items)
    assert batcher.calls == [3]
    assert [r.meta["batch"] for r in results] == [3, 3, 3]
    # a different size cannot share the call; a failing item fails alone
    batcher = Batcher(backend, wait_s=0.05)
    items = [
        ("keyframe", same | {"seed": 1}, dirs[0]),
        ("keyframe", {"width": 32, "height": 32, "seed": 2}, dirs[1]),
        ("keyframe", same | {"seed": 3, "description": "fail"}, dirs[2]),
    ]
    results = _in_threads(batcher, items)
    assert sorted(batcher.calls) in ([1, 1, 1], [1, 2])
    assert isinstance(results[2], StageError) and not isinstance(results[0], Exception)
    assert results[1].meta["batch"] == 1


@pytest.fixture(scope="module")
def ray_gpu():
    import ray

    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=2, num_gpus=1, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


def _action(backend, n: int, **params) -> Action:
    params = {"width": 64, "height": 64, "seed": n, "description": "d"} | params
    return Action(
        key=f"{n:064x}",
        stage="image",
        op="keyframe",
        backend=backend.name,
        version=backend.version,
        params=params,
        inputs={},
        label=f"keyframe {n}",
        context={"studio": "studio-a"},
    )


@pytest.mark.ray
def test_gpu_worker_runs_a_batch_in_one_call_and_holds_one_gpu(ray_gpu, tmp_path):
    """Three actions of a backend with max_batch 3 share one GPU worker and one backend call; each
    holds a third of the GPU in the farm's accounting, the worker the whole GPU in Ray's."""
    from farm.runtime.ray_runtime import RayRuntime
    from farm.settings import StoreSpec

    catalog = Catalog({"fake": {"kind": BATCHING, "max_batch": 3, "delay_s": 0.3, "batch_wait_s": 5}})
    backend = catalog.load("image", "fake")
    spec = StoreSpec(url=str(tmp_path / "store"))
    runtime = RayRuntime(spec, catalog=catalog)
    for n in range(3):
        runtime.submit(_action(backend, n), {}, Profile(cpus=0, gpus=1 / 3), None)
    assert runtime.capacity().gpus_by_accelerator[None] == pytest.approx(0.0)
    done: list = []
    wait_until(lambda: (done.extend(runtime.wait(timeout=1)), len(done) >= 3)[1], timeout=120, what="three actions")
    assert all(f.error is None for f in done), [f.error for f in done]
    assert runtime.actors() == {"image/fake": 1}
    assert sorted(f.manifest.meta["batch"] for f in done) == [3, 3, 3]
    assert sum(f.manifest.usage.gpu_seconds for f in done) == pytest.approx(0.3)
    runtime.shutdown()


@pytest.mark.ray
def test_cpu_actions_are_handed_to_ray_ahead_gpu_actions_are_not(ray_gpu, tmp_path):
    """With ``cpu_ahead`` 1 the runtime offers twice the cluster's CPUs, so Ray holds the next CPU
    action of each worker ready; GPUs are offered only as they are free. Everything handed over runs."""
    from farm.runtime.ray_runtime import RayRuntime
    from farm.settings import StoreSpec

    noop = Catalog().load("image", "noop")
    spec = StoreSpec(url=str(tmp_path / "store"))
    runtime = RayRuntime(spec, cpu_ahead=1)
    assert runtime.capacity().cpus == pytest.approx(4.0)  # the fixture's 2 CPUs, twice
    for n in range(3):
        runtime.submit(_action(noop, n, sleep_s=0.2), {}, Profile(cpus=1), None)
    capacity = runtime.capacity()
    assert capacity.cpus == pytest.approx(1.0) and capacity.gpus_by_accelerator[None] == pytest.approx(1.0)
    done, deadline = [], time.monotonic() + 120
    while len(done) < 3 and time.monotonic() < deadline:
        done += runtime.wait(timeout=1)
    assert sorted(f.action.params["seed"] for f in done if f.error is None) == [0, 1, 2]
    assert RayRuntime(spec, cpu_ahead=0).capacity().cpus == pytest.approx(2.0)
    runtime.shutdown()


@pytest.mark.ray
def test_a_placement_that_swaps_a_gpu_evicts_the_idle_worker_and_loads_the_other_model(ray_gpu, tmp_path):
    """One GPU, two backends: the runtime reports the GPU free, then held by the first's idle worker; the
    residency policy places the second there, evicting it, and the runtime carries that out (its own
    rules would have kept the second waiting on a GPU its sibling holds)."""
    from farm.policy.residency import Model, Want, place
    from farm.runtime.ray_runtime import RayRuntime
    from farm.settings import StoreSpec

    catalog = Catalog(
        {
            "one": {"kind": BATCHING, "max_batch": 1, "delay_s": 0.5, "flavour": "1"},
            "two": {"kind": BATCHING, "max_batch": 1, "delay_s": 0.1, "flavour": "2"},
        }
    )
    runtime = RayRuntime(StoreSpec(url=str(tmp_path / "store")), catalog=catalog)
    models = {m: Model(m, 1.0) for m in ("image/one", "image/two")}

    def run(name, n):
        runtime._start()
        (placement,) = place([Want(f"k{n}", f"image/{name}", seconds=5.0)], runtime.slots(), models).placed
        runtime.submit(_action(catalog.load("image", name), n), {}, Profile(cpus=0, gpus=1), None, placement)
        done, deadline = [], time.monotonic() + 120
        while not done and time.monotonic() < deadline:
            done += runtime.wait(timeout=1)
        assert [f.error for f in done] == [None]
        return placement

    try:
        first = run("one", 1)
        assert (
            first.load and first.gpu.startswith("free:") and [g.resident for g in runtime.slots()] == [("image/one",)]
        )
        first_holder = runtime.slots()[0].id  # the first's worker
        second = run("two", 2)
        assert second.load and second.evict == ("image/one",) and second.gpu == first_holder
        assert [g.resident for g in runtime.slots()] == [("image/two",)]
    finally:
        runtime.shutdown()


def _diffusers_missing() -> str | None:
    try:
        import diffusers  # noqa: F401
        import torch  # noqa: F401
    except ImportError as exc:
        return f"not installed: {exc.name} (pip install 'farm[diffusers]'; deploy/setup.sh --test does)"
    return None


@pytest.mark.ray
@pytest.mark.media
@pytest.mark.e2e
def test_episode_renders_with_diffusers_on_gpu_workers(ray_gpu, tmp_path, monkeypatch):
    """A whole episode with tiny random diffusers pipelines for images and video, on GPU workers
    (one declared GPU; torch runs on the CPU here): keyframes share pipeline calls, the video has
    the planned length, and the manifests account the work."""
    from tests.conftest import need

    need(_diffusers_missing())
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from farm.bench.tiny_pipelines import build_tiny_sd, build_tiny_svd
    from farm.runtime.ray_runtime import RayRuntime
    from farm.service.local import render_episode

    # tiny pipelines draw small (max_side): a sheet at full size would take minutes on a CPU
    configs = {
        "sd": {
            "kind": "diffusers-image",
            "model_path": str(build_tiny_sd(tmp_path / "sd")),
            "steps": 2,
            "max_batch": 4,
            "max_side": 64,
            "batch_wait_s": 2.0,
        },
        "svd": {
            "kind": "diffusers-video",
            "model_path": str(build_tiny_svd(tmp_path / "svd")),
            "steps": 2,
            "frames": 4,
            "max_side": 64,
        },
    }
    # tiny random pipelines draw noise: there is nothing for a judge to judge (judges={})
    settings = Settings(
        store=str(tmp_path / "store"), backends=configs, backend_image="sd", backend_video="svd", judges={}
    )
    catalog = settings.catalog()
    assert catalog.load("image", "sd").resources.num_gpus == 1
    runtime = RayRuntime(settings.store_spec(), catalog=catalog)
    try:
        result = render_episode(
            load_episode(write_specs(tmp_path / "specs")), settings, runtime, out_dir=tmp_path / "out"
        )
    finally:
        runtime.shutdown()
    by_op: dict[str, list] = {}
    for m in result.ran:
        by_op.setdefault(m.op, []).append(m)
    assert len(by_op["keyframe"]) == 3 and len(by_op["clip"]) == 3 and len(by_op["sheet"]) == 2
    assert all(m.backend == "sd" and m.usage.cpu_seconds > 0 and m.usage.model == "sd" for m in by_op["keyframe"])
    # the three keyframes, ready together, shared one pipeline call on the GPU worker
    assert [m.meta["batch"] for m in by_op["keyframe"]] == [3, 3, 3]
    assert result.duration_seconds == pytest.approx(sum(m.meta["frames"] for m in by_op["clip"]) / 12, abs=0.01)
    assert Path(result.video).is_file()


@pytest.mark.media
def test_bench_backends_measures_batching_off_and_on():
    from tests.conftest import need

    need(_diffusers_missing())
    from farm.bench.backends import bench_backends

    report = bench_backends(shots=2, batch=2)
    assert report["tiny_models"] and report["device"] == "CPU"
    for kind in ("image", "video"):
        assert report[kind]["batching_off"]["per_call"] == 1 and report[kind]["batching_on"]["per_call"] == 2
        assert report[kind]["batching_on"]["shots_per_minute"] > 0 and report[kind]["speedup"] > 0
    assert "batching on is" in report["text"]


# -- provider jobs outlive a crash ---------------------------------------------------------------
def _run_in_child(action_json, spec_json, configs):
    from farm.runtime.execute import execute
    from farm.settings import StoreSpec

    execute(action_json, {}, StoreSpec.model_validate(spec_json), "studio-a", configs=configs)


def test_a_provider_job_is_resumed_after_a_crash_not_submitted_again(tmp_path):
    """The job id is saved before waiting; after the worker is killed, the action run again waits
    on the same job (one submission) and its manifest names it."""
    from farm.runtime.execute import execute
    from farm.settings import StoreSpec

    jobs = tmp_path / "jobs"
    jobs.mkdir()
    configs = {"slow": {"kind": RESUMABLE, "jobs_dir": str(jobs)}}
    backend = Catalog(configs).load("image", "slow")
    action = _action(backend, 7)
    spec = StoreSpec(url=str(tmp_path / "store"))
    child = multiprocessing.get_context("spawn").Process(
        target=_run_in_child, args=(action.to_json(), spec.model_dump(mode="json"), configs)
    )
    child.start()
    store = ArtifactStore(LocalStore(tmp_path / "store"), "studio-a")
    deadline = time.monotonic() + 60
    while store.job_record(action.key).load() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert store.job_record(action.key).load() == {"job": "job-0"}
    child.kill()  # the farm dies while the provider works
    child.join()
    (jobs / "job-0.done").write_text("")
    manifest = Manifest.model_validate(execute(action.to_json(), {}, spec, "studio-a", configs=configs))
    assert sorted(p.name for p in jobs.iterdir()) == ["job-0", "job-0.done"]  # submitted once
    assert manifest.usage.provider_job_id == "job-0"


def test_retry_after_from_the_provider_delays_the_retry():
    """A 429's Retry-After outlasts the policy's short backoff: the retry is not ready before it."""
    from farm.policy import RetryPolicy
    from tests.test_controller import CAPACITY, Harness

    h = Harness(retry=RetryPolicy(base_s=0.001, max_delay_s=0.001))
    h.submit()
    h.commit(h.c.decide(h.now, CAPACITY))
    key = next(k for k, s in h.c.actions.items() if s.status == "running")
    h.commit(h.c.on_failure(key, "429 Too Many Requests", True, "node-a", h.now, retry_after=30.0))
    retry = h.log[-1]
    assert retry.type == "action.retry" and retry.data.not_before == pytest.approx(h.now + 30.0)
    assert key not in {s.action.key for s in h.c.ready(h.now + 29.0)}
    assert key in {s.action.key for s in h.c.ready(h.now + 30.5)}


# -- end to end: an LLM script, API speech, tokens accounted -------------------------------------
@pytest.mark.ray
@pytest.mark.media
@pytest.mark.e2e
def test_render_with_llm_script_and_api_speech_accounts_tokens(tmp_path, monkeypatch):
    from farm.core.plan import EpisodeJob, script_params
    from farm.core.spec import Episode, Series
    from tests.support.openai_server import Answer, openai_server
    from workers.script.outline import write_script

    outline = [
        {
            "beat": "Ana hears a knock",
            "location": "kitchen",
            "time_of_day": "night",
            "characters": ["bo"],
            "lines": [{"speaker": "ana", "text": "Who's there?"}, {"speaker": "bo", "text": "Only me."}],
        }
    ]
    episode = {"series": "series.yaml", "number": 1, "title": "Knock", "target_seconds": 30, "outline": outline}
    path = write_specs(tmp_path / "specs", episode=episode)
    job = EpisodeJob("default", "default", Series.model_validate(SMALL_SERIES), Episode.model_validate(episode), {})
    script = write_script(script_params(job)).model_dump(mode="json")
    import ray

    ray.shutdown()  # farm render starts its own local Ray, whose workers inherit E2E_KEY from this process
    with openai_server(api_key="sk-e2e-secret") as server:
        server.plan(Answer(content=json.dumps(script), usage=(1200, 340)))
        configs = {
            "llm": {"kind": "openai-chat", "base_url": server.base_url, "model": "test-chat", "api_key_env": "E2E_KEY"},
            "tts": {
                "kind": "openai-speech",
                "base_url": server.base_url,
                "model": "test-tts",
                "api_key_env": "E2E_KEY",
                "voices": {"ana": "coral", "*": "onyx"},
            },
        }
        monkeypatch.setenv("E2E_KEY", "sk-e2e-secret")
        monkeypatch.setenv("FARM_BACKENDS", json.dumps(configs))
        monkeypatch.setenv("FARM_BACKEND_SCRIPT", "llm")
        monkeypatch.setenv("FARM_BACKEND_DUBBING", "tts")
        textfile = tmp_path / "farm.prom"
        code = farm_main(
            [
                "render",
                str(path),
                "--store",
                str(tmp_path / "store"),
                "--num-cpus",
                "2",
                "--metrics-textfile",
                str(textfile),
                "--out",
                str(tmp_path / "out"),
            ]
        )
        assert code == 0
        speech = [r for r in server.requests if r.path.endswith("/audio/speech")]
    assert sorted(r.body["voice"] for r in speech) == ["coral", "onyx"]  # the two lines run at once
    assert all(r.headers["authorization"] == "Bearer sk-e2e-secret" for r in server.requests)
    store = ArtifactStore(LocalStore(tmp_path / "store"), "default")
    manifests = [store.get_manifest(k) for k in store.done_keys()]
    by_stage = {}
    for m in manifests:
        by_stage.setdefault(m.stage, []).append(m)
    (script_manifest,) = by_stage["script"]
    assert (script_manifest.backend, script_manifest.usage.tokens_in, script_manifest.usage.tokens_out) == (
        "llm",
        1200,
        340,
    )
    assert sorted(m.usage.tokens_in for m in by_stage["dubbing"]) == sorted([len("Who's there?"), len("Only me.")])
    metrics = textfile.read_text()
    assert 'farm_tokens_total{direction="in",model="test-chat",stage="script",studio="default"} 1200.0' in metrics
    assert 'farm_tokens_total{direction="out",model="test-chat",stage="script",studio="default"} 340.0' in metrics
    assert "sk-e2e-secret" not in json.dumps([m.model_dump(mode="json") for m in manifests])


# -- farm backends -------------------------------------------------------------------------------
def test_farm_backends_lists_and_checks_each_backend(monkeypatch, capsys):
    from tests.support.openai_server import openai_server

    with openai_server(api_key="sk-list-secret") as server:
        configs = {
            "llm": {
                "kind": "openai-chat",
                "base_url": server.base_url,
                "model": "test-chat",
                "api_key": "sk-list-secret",
            },
            "gone": {"kind": "openai-chat", "base_url": "http://127.0.0.1:9/v1", "model": "m"},
            "bad": {"kind": "openai-speech", "model": "t"},
        }
        monkeypatch.setenv("FARM_BACKENDS", json.dumps(configs))
        monkeypatch.setenv("FARM_BACKEND_SCRIPT", "llm")
        code = farm_main(["backends", "--json"])
    out = capsys.readouterr().out
    rows = {r["name"]: r for r in json.loads(out)}
    assert code == 1  # something is unreachable: a scheduler can gate on it
    assert rows["llm"]["ok"] and rows["llm"]["default"] and "test-chat" in rows["llm"]["status"]
    assert rows["outline"]["ok"] and not rows["outline"]["default"]
    assert not rows["gone"]["ok"] and "cannot reach 127.0.0.1:9" in rows["gone"]["status"]
    assert not rows["bad"]["ok"] and "backends.bad.base_url" in rows["bad"]["status"]
    assert rows["espeak-ng"]["ok"] == all(map(shutil_which, ("espeak-ng", "ffmpeg")))
    assert "sk-list-secret" not in out


def shutil_which(tool):
    import shutil

    return shutil.which(tool) is not None


def test_every_kind_names_an_importable_class_serving_its_stage():
    for kind, stage in backends.KIND_STAGES.items():
        cls = backends.kind_class("x", kind)
        assert getattr(cls, "kind", kind) == kind
        if stage is not None:
            assert getattr(cls, "stage", stage) == stage, kind


def test_a_batch_submission_records_each_episodes_backends_and_the_controller_plans_with_them():
    """The batch's choice wins over the series', which wins over settings; the journaled choice
    (name, version, features) is what the controller plans with."""
    from farm.core.events import BatchSubmitted
    from farm.core.spec import Episode
    from farm.service.host import submission
    from tests.test_controller import CAPACITY, Harness

    settings = Settings(backends={"fast": {"kind": BATCHING, "flavour": "a"}})
    catalog = settings.catalog()
    series = dict(SMALL_SERIES, backends={"image": "noop", "video": "noop"})
    episode = Episode.model_validate({"series": "s.yaml", "number": 1, "title": "E", "script": SMALL_SCRIPT})
    payload = {
        "studio": "acme",
        "namespace": "acme",
        "backends": {"image": "fast"},
        "episodes": [{"series": series, "episode": episode.model_dump(mode="json")}],
    }
    data = submission(payload, settings, catalog)
    chosen = data.episodes[0].backends
    assert chosen["image"] == ["fast", catalog.load("image", "fast").version, []]
    assert chosen["video"][0] == "noop" and chosen["script"][0] == "outline"
    h2 = Harness()
    h2.commit([BatchSubmitted(batch="b2", data=data)])
    h2.commit(h2.c.decide(h2.now, CAPACITY))
    stages = {s.action.stage: s.action.backend for s in h2.c.actions.values()}
    assert stages["image"] == "fast"


def test_each_action_of_a_batching_backend_holds_its_share_of_the_workers_gpu():
    from farm.settings import profiles_for

    settings = Settings(
        backends={"fast": {"kind": BATCHING, "max_batch": 4, "num_gpus": 1}},
        stage_resources={"video": {"num_gpus": 1, "accelerator": "L4"}},
    )
    profiles = profiles_for(settings)
    assert profiles[("image", "fast")].gpus == pytest.approx(0.25)
    assert profiles[("video", "ffmpeg-motion")].gpus == 1 and profiles[("video", "ffmpeg-motion")].accelerator == "L4"
    assert profiles[("image", "pillow")].gpus == 0
