"""Model weights in the artifact store: pushed once, fetched and checked by each worker, and known
by their store name in action keys."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from farm.cli.app import main as farm_main
from farm.errors import StoreError, UsageError
from farm.store import LocalStore, models


def model_folder(root, extra=b""):
    (root / "unet").mkdir(parents=True)
    (root / "model_index.json").write_text('{"_class_name": "Tiny"}')
    (root / "unet" / "weights.bin").write_bytes(b"\x00\x01weights" + extra)
    (root / ".cache").mkdir()
    (root / ".cache" / "junk").write_text("not part of the model")
    return root


def test_push_then_fetch_gives_the_same_files_once(tmp_path):
    objects = LocalStore(tmp_path / "store")
    result = models.push(objects, model_folder(tmp_path / "m"), "tiny-1")
    assert (result["files"], result["uploaded"]) == (2, result["bytes"])
    assert models.push(objects, tmp_path / "m", "tiny-1")["uploaded"] == 0  # the same files: nothing to do
    assert models.names(objects) == ["tiny-1"]
    local = models.fetch(objects, "tiny-1", tmp_path / "cache")
    assert (local / "unet" / "weights.bin").read_bytes() == b"\x00\x01weights"
    assert not (local / ".cache").exists()
    assert models.fetch(objects, "tiny-1", tmp_path / "cache") == local


def test_a_name_is_immutable_and_must_be_safe(tmp_path):
    objects = LocalStore(tmp_path / "store")
    models.push(objects, model_folder(tmp_path / "a"), "tiny-1")
    with pytest.raises(UsageError, match="immutable"):
        models.push(objects, model_folder(tmp_path / "b", extra=b"!"), "tiny-1")
    with pytest.raises(UsageError, match="model name"):
        models.push(objects, tmp_path / "a", "../evil")
    with pytest.raises(StoreError, match="push it first"):
        models.fetch(objects, "absent", tmp_path / "cache")


def test_a_corrupt_stored_file_is_refused(tmp_path):
    objects = LocalStore(tmp_path / "store")
    models.push(objects, model_folder(tmp_path / "m"), "tiny-1")
    blob = next(
        p
        for p in (tmp_path / "store" / "_farm" / "models" / "blobs").rglob("*")
        if p.is_file() and p.stat().st_size == len(b"\x00\x01weights")
    )
    blob.write_bytes(b"tampered!!")
    with pytest.raises(StoreError, match="corrupt"):
        models.fetch(objects, "tiny-1", tmp_path / "cache")
    assert not any((tmp_path / "cache").glob("tiny-1-*"))  # nothing half-fetched is left to be trusted


def test_localize_fetches_stored_models_and_keeps_their_name(tmp_path):
    objects = LocalStore(tmp_path / "store")
    models.push(objects, model_folder(tmp_path / "m"), "tiny-1")
    configs = {
        "sd": {"kind": "diffusers-image", "model_path": "store:tiny-1"},
        "llm": {"kind": "openai-chat", "base_url": "http://h/v1", "model": "m"},
    }
    local = models.localize(configs, objects, tmp_path / "cache")
    assert local["sd"]["model_ref"] == "store:tiny-1"
    assert Path(local["sd"]["model_path"]).parent == tmp_path / "cache"
    assert local["llm"] == configs["llm"]


def test_farm_models_push_and_list(tmp_path, capsys):
    store = str(tmp_path / "store")
    assert farm_main(["models", "push", str(model_folder(tmp_path / "m")), "tiny-1", "--store", store]) == 0
    assert "store:tiny-1" in capsys.readouterr().out
    assert farm_main(["models", "list", "--store", store, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == ["tiny-1"]


def test_a_stored_diffusers_model_runs_on_a_worker_with_the_controllers_version(tmp_path, monkeypatch):
    """The controller plans with "store:NAME" (it fetches nothing); the worker fetches the weights,
    builds the same version and draws with them."""
    from tests.conftest import need
    from tests.test_backends import _action, _diffusers_missing

    need(_diffusers_missing())
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("FARM_MODEL_CACHE", str(tmp_path / "cache"))
    from farm.bench.tiny_pipelines import build_tiny_sd
    from farm.catalog import Catalog
    from farm.core.manifest import Manifest
    from farm.runtime.execute import execute
    from farm.settings import StoreSpec

    spec = StoreSpec(url=str(tmp_path / "store"))
    models.push(LocalStore(tmp_path / "store"), build_tiny_sd(tmp_path / "sd"), "tiny-sd-1")
    configs = {"sd": {"kind": "diffusers-image", "model_path": "store:tiny-sd-1", "steps": 2, "max_side": 64}}
    planned = Catalog(configs).load("image", "sd")  # the controller's view: nothing fetched
    assert not (tmp_path / "cache").exists()
    from farm.bench.backends import keyframe_params

    action = _action(planned, 1, **keyframe_params(1, 72, 128))
    manifest = Manifest.model_validate(execute(action.to_json(), {}, spec, "studio-a", configs=configs))
    assert manifest.version == planned.version and manifest.usage.model == "tiny-sd-1"
    assert any((tmp_path / "cache").glob("tiny-sd-1-*/model_index.json"))


def test_farm_backends_checks_a_stored_model_without_fetching_it(tmp_path, monkeypatch, capsys):
    from tests.conftest import need
    from tests.test_backends import _diffusers_missing

    need(_diffusers_missing())
    store = tmp_path / "store"
    models.push(LocalStore(store), model_folder(tmp_path / "m"), "tiny-1")
    monkeypatch.setenv("FARM_MODEL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv(
        "FARM_BACKENDS",
        json.dumps(
            {
                "sd": {"kind": "diffusers-image", "model_path": "store:tiny-1"},
                "gone": {"kind": "diffusers-image", "model_path": "store:never-pushed"},
            }
        ),
    )
    assert farm_main(["backends", "--json", "--store", str(store)]) == 1
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["sd"]["ok"] and "stored model tiny-1 (2 files" in rows["sd"]["status"]
    assert not rows["gone"]["ok"] and "push it" in rows["gone"]["status"]
    assert not (tmp_path / "cache").exists()
