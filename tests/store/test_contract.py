"""The store contract, written once and run on every implementation: the local directory and a
real S3 server (MinIO when FARM_TEST_MINIO_* names one, else OpenStack Swift with s3api)."""

from __future__ import annotations

import itertools
import os
import time
from pathlib import Path

import pytest

from farm.core.manifest import Blob, Manifest
from farm.errors import StoreError
from farm.store import ArtifactStore, LocalStore, file_digest

_prefixes = itertools.count()


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def objects(request, tmp_path):
    if request.param == "local":
        return LocalStore(tmp_path / "store")
    from farm.store.s3 import S3Store

    server = request.getfixturevalue("s3_server")
    prefix = f"contract-{os.getpid()}-{next(_prefixes)}"
    return S3Store(
        server.endpoint,
        server.access_key,
        server.secret_key,
        "farm-contract",
        prefix,
        secure=server.secure,
        region=server.region,
    )


@pytest.fixture
def store(objects):
    return ArtifactStore(objects, "studio-a")


def _file(tmp_path, name, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _manifest(key: str, outputs: dict[str, Blob]) -> Manifest:
    now = time.time()
    return Manifest(
        key=key,
        stage="video",
        op="clip",
        backend="b",
        version="1",
        label="clip x",
        outputs=outputs,
        started_at=now,
        finished_at=now + 1,
    )


def test_bytes_roundtrip(objects):
    """put_bytes then get_bytes returns the same bytes; a missing name reads as None."""
    objects.put_bytes("a/b/c.json", b'{"x": 1}')
    assert objects.get_bytes("a/b/c.json") == b'{"x": 1}'
    assert objects.get_bytes("a/b/missing.json") is None


def test_file_roundtrip_and_overwrite(objects, tmp_path):
    """put_file then get_file copies the bytes; writing again replaces them whole."""
    src = _file(tmp_path, "src.bin", os.urandom(300_000))
    objects.put_file("files/one.bin", src)
    objects.get_file("files/one.bin", tmp_path / "back.bin")
    assert (tmp_path / "back.bin").read_bytes() == src.read_bytes()
    objects.put_bytes("files/one.bin", b"short")
    assert objects.get_bytes("files/one.bin") == b"short"


def test_get_missing_file_raises(objects, tmp_path):
    """get_file of a missing object is a StoreError naming it."""
    with pytest.raises(StoreError, match="nope.bin"):
        objects.get_file("files/nope.bin", tmp_path / "x")


def test_exists_and_list(objects):
    """exists and a recursive list under a prefix see exactly what was written."""
    for name in ("p/a.txt", "p/q/b.txt", "p/q/r/c.txt", "other/d.txt"):
        objects.put_bytes(name, b"x")
    assert objects.exists("p/q/b.txt") and not objects.exists("p/q/zz.txt")
    assert sorted(objects.list("p/")) == ["p/a.txt", "p/q/b.txt", "p/q/r/c.txt"]
    assert list(objects.list("empty/")) == []


def test_copy(objects):
    """copy makes an independent object with the same bytes."""
    objects.put_bytes("src/x.bin", b"payload")
    objects.copy("src/x.bin", "dst/y.bin")
    assert objects.get_bytes("dst/y.bin") == b"payload"


def test_copy_of_a_missing_object_raises(objects):
    """copy of a missing object is a StoreError naming it."""
    with pytest.raises(StoreError, match="nope.bin"):
        objects.copy("src/nope.bin", "dst/y.bin")


@pytest.mark.parametrize("name", ["../x", "a/../../x", "/abs", "a//b", "", "a/./b", "spaced name"])
def test_unsafe_names_are_refused(objects, name):
    """Names that could leave the store's root are refused before any I/O."""
    with pytest.raises(StoreError, match="unsafe"):
        objects.put_bytes(name, b"x")


def test_blob_is_content_addressed_and_stored_once(store, tmp_path):
    """A blob's name is its SHA-256; storing the same content twice stores it once."""
    path = _file(tmp_path, "clip.mp4", b"frames" * 1000)
    blob = store.put_blob(path)
    assert (blob.digest, blob.size) == file_digest(path) and blob.name == "clip.mp4"
    again = store.put_blob(_file(tmp_path, "other-name.mp4", b"frames" * 1000))
    assert again.digest == blob.digest
    names = list(store.objects.list("studio-a/blobs/"))
    assert names == [f"studio-a/blobs/sha256/{blob.digest[:2]}/{blob.digest}"]
    assert store.get_blob(blob, tmp_path / "back").read_bytes() == b"frames" * 1000


def test_manifest_roundtrip_and_done_keys(store, tmp_path):
    """A stored manifest reads back equal, and done_keys lists it in one call."""
    blob = store.put_blob(_file(tmp_path, "a.png", b"png"))
    manifests = [_manifest(f"{i:x}" * 64, {"keyframe": blob}) for i in (1, 2)]
    for manifest in manifests:
        store.put_manifest(manifest)
    assert store.get_manifest(manifests[0].key) == manifests[0]
    assert store.done_keys() == {m.key for m in manifests}
    assert store.get_manifest("f" * 64) is None


def test_manifest_after_blobs_only(store):
    """A manifest naming a blob that is not stored is refused: done never precedes the data."""
    ghost = Blob(digest="0" * 64, size=1, name="ghost.wav")
    with pytest.raises(StoreError, match="not in the store"):
        store.put_manifest(_manifest("a" * 64, {"audio": ghost}))
    assert store.done_keys() == set()


def test_corrupt_blob_is_detected(store, tmp_path):
    """A blob whose bytes no longer match its digest is refused on read."""
    blob = store.put_blob(_file(tmp_path, "x.bin", b"original"))
    store.objects.put_bytes(f"studio-a/blobs/sha256/{blob.digest[:2]}/{blob.digest}", b"tampered")
    with pytest.raises(StoreError, match="corrupt"):
        store.get_blob(blob, tmp_path / "back")


def test_studios_are_apart(objects, tmp_path):
    """One studio's manifests and blobs are invisible to another's."""
    a, b = ArtifactStore(objects, "studio-a"), ArtifactStore(objects, "studio-b")
    blob = a.put_blob(_file(tmp_path, "x.bin", b"secret"))
    a.put_manifest(_manifest("c" * 64, {"x": blob}))
    assert b.done_keys() == set() and b.get_manifest("c" * 64) is None and not b.has_blob(blob.digest)


def test_publish_to_readable_path(store, tmp_path):
    """Deliverables are copied to studio/episodes/series/episode/file."""
    blob = store.put_blob(_file(tmp_path, "episode.mp4", b"mp4"))
    name = store.publish(blob, "my-series", "ep001", "episode.mp4")
    assert name == "studio-a/episodes/my-series/ep001/episode.mp4"
    assert store.objects.get_bytes(name) == b"mp4"
    with pytest.raises(StoreError):
        store.publish(blob, "..", "ep001", "episode.mp4")


def test_local_writes_leave_no_partial_files(tmp_path):
    """A failed local write leaves neither the object nor a temporary file behind."""
    objects = LocalStore(tmp_path / "store")

    class Boom(Exception):
        pass

    def explode(out):
        out.write(b"half")
        raise Boom

    with pytest.raises(Boom):
        objects._atomic("x/y.bin", explode)
    assert not objects.exists("x/y.bin") and list(objects.list("x/")) == []
    assert [p.name for p in (tmp_path / "store" / "x").iterdir()] == []
