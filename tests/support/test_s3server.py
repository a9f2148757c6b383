"""Contract tests: the S3 server from tests.support.s3server behaves like S3
for everything our minio-based artifact store relies on."""

from __future__ import annotations

import hashlib
import io
import os
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from minio import Minio
from minio.commonconfig import CopySource
from minio.error import S3Error

from tests.support.s3server import S3Server, s3_server_available, start_s3_server

pytestmark = pytest.mark.s3

MiB = 1024 * 1024
PART_SIZE = 5 * MiB


def _require_s3_server() -> None:
    reason = s3_server_available()
    if reason is None:
        return
    if os.environ.get("CI", "").strip().lower() not in {"", "0", "false", "no"}:
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    _require_s3_server()
    with start_s3_server(tmp_path_factory.mktemp("s3server")) as server:
        yield server


@pytest.fixture(scope="module")
def s3(s3_server: S3Server) -> Minio:
    return s3_server.client()


@pytest.fixture
def bucket(s3: Minio) -> str:
    name = f"farm-test-{uuid.uuid4().hex[:16]}"
    s3.make_bucket(name)
    return name


def _payload(size: int, seed: int = 0) -> bytes:
    # Not compressible and not periodic in part-sized blocks.
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:size])


def _get(s3: Minio, bucket: str, key: str) -> bytes:
    response = s3.get_object(bucket, key)
    try:
        return response.read()
    finally:
        response.close()
        response.release_conn()


class _UnsizedStream(io.RawIOBase):
    """A readable stream that cannot tell its length (no seek, no len)."""

    def __init__(self, data: bytes, chunk: int = 256 * 1024) -> None:
        self._data = memoryview(data)
        self._pos = 0
        self._chunk = chunk

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            size = len(self._data) - self._pos
        size = min(size, self._chunk)
        out = self._data[self._pos : self._pos + size].tobytes()
        self._pos += len(out)
        return out


def test_make_bucket_and_bucket_exists(s3: Minio) -> None:
    name = f"farm-test-{uuid.uuid4().hex[:16]}"
    assert not s3.bucket_exists(name)
    s3.make_bucket(name)
    assert s3.bucket_exists(name)
    assert name in {b.name for b in s3.list_buckets()}


def test_put_get_roundtrip(s3: Minio, bucket: str) -> None:
    data = _payload(100_000)
    s3.put_object(bucket, "dir/blob.bin", io.BytesIO(data), len(data))
    assert _get(s3, bucket, "dir/blob.bin") == data


def test_stat_object_size_and_etag(s3: Minio, bucket: str) -> None:
    data = _payload(12_345, seed=1)
    result = s3.put_object(
        bucket,
        "stat.bin",
        io.BytesIO(data),
        len(data),
        content_type="application/octet-stream",
    )
    stat = s3.stat_object(bucket, "stat.bin")
    assert stat.size == len(data)
    assert stat.etag == hashlib.md5(data).hexdigest()
    assert stat.etag == result.etag
    assert stat.content_type == "application/octet-stream"


def test_list_objects_prefix_recursive(s3: Minio, bucket: str) -> None:
    for key in ("a/1.txt", "a/b/2.txt", "a/b/c/3.txt", "ab.txt", "z/4.txt"):
        s3.put_object(bucket, key, io.BytesIO(key.encode()), len(key))

    recursive = {o.object_name for o in s3.list_objects(bucket, prefix="a/", recursive=True)}
    assert recursive == {"a/1.txt", "a/b/2.txt", "a/b/c/3.txt"}

    shallow = {(o.object_name, o.is_dir) for o in s3.list_objects(bucket, prefix="a/")}
    assert shallow == {("a/1.txt", False), ("a/b/", True)}

    everything = {o.object_name for o in s3.list_objects(bucket, recursive=True)}
    assert everything == {"a/1.txt", "a/b/2.txt", "a/b/c/3.txt", "ab.txt", "z/4.txt"}

    sizes = {o.object_name: o.size for o in s3.list_objects(bucket, prefix="a/b/c/", recursive=True)}
    assert sizes == {"a/b/c/3.txt": len("a/b/c/3.txt")}


@pytest.mark.parametrize("known_length", [False, True], ids=["unknown-length", "known-length"])
def test_multipart_upload_roundtrip(s3: Minio, bucket: str, known_length: bool) -> None:
    data = _payload(12 * MiB + 12_345, seed=2)  # 3 parts of <= 5 MiB
    if known_length:
        s3.put_object(bucket, "big.bin", io.BytesIO(data), len(data), part_size=PART_SIZE)
    else:
        s3.put_object(bucket, "big.bin", _UnsizedStream(data), -1, part_size=PART_SIZE)

    stat = s3.stat_object(bucket, "big.bin")
    assert stat.size == len(data)
    # An S3 multipart ETag is "<md5 of the part md5s>-<number of parts>".
    part_md5s = b"".join(hashlib.md5(data[i : i + PART_SIZE]).digest() for i in range(0, len(data), PART_SIZE))
    assert stat.etag == f"{hashlib.md5(part_md5s).hexdigest()}-3"
    assert _get(s3, bucket, "big.bin") == data


def test_presigned_get_with_urllib(s3: Minio, bucket: str) -> None:
    data = _payload(50_000, seed=3)
    s3.put_object(bucket, "shared/get.bin", io.BytesIO(data), len(data))
    url = s3.presigned_get_object(bucket, "shared/get.bin", expires=timedelta(minutes=5))
    with urllib.request.urlopen(url, timeout=30) as response:
        assert response.status == 200
        assert response.read() == data


def test_presigned_put_with_urllib(s3: Minio, bucket: str) -> None:
    data = _payload(70_000, seed=4)
    url = s3.presigned_put_object(bucket, "shared/put.bin", expires=timedelta(minutes=5))
    request = urllib.request.Request(url, data=data, method="PUT")
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200
    assert _get(s3, bucket, "shared/put.bin") == data


def test_remove_object_then_stat_is_no_such_key(s3: Minio, bucket: str) -> None:
    s3.put_object(bucket, "gone.txt", io.BytesIO(b"bye"), 3)
    s3.stat_object(bucket, "gone.txt")
    s3.remove_object(bucket, "gone.txt")
    with pytest.raises(S3Error) as excinfo:
        s3.stat_object(bucket, "gone.txt")
    assert excinfo.value.code == "NoSuchKey"
    with pytest.raises(S3Error) as excinfo:
        _get(s3, bucket, "gone.txt")
    assert excinfo.value.code == "NoSuchKey"


def test_copy_object(s3: Minio, bucket: str) -> None:
    other = f"farm-test-{uuid.uuid4().hex[:16]}"
    s3.make_bucket(other)
    data = _payload(33_333, seed=5)
    s3.put_object(bucket, "src.bin", io.BytesIO(data), len(data))

    s3.copy_object(bucket, "copy.bin", CopySource(bucket, "src.bin"))
    s3.copy_object(other, "nested/copy.bin", CopySource(bucket, "src.bin"))

    assert _get(s3, bucket, "copy.bin") == data
    assert _get(s3, other, "nested/copy.bin") == data
    assert s3.stat_object(other, "nested/copy.bin").size == len(data)
    assert _get(s3, bucket, "src.bin") == data


def _children(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid ..." -- comm may contain spaces/parens
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid:
            found.add(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_swift_processes_are_gone_after_exit(tmp_path: Path, s3_server: S3Server) -> None:
    if s3_server.backend != "swift" or not Path("/proc/self/stat").exists():
        pytest.skip("only the Swift backend starts processes")
    workdir = tmp_path / "second"
    before = _children(os.getpid())
    with start_s3_server(workdir) as server:
        assert server.endpoint != s3_server.endpoint
        # start_s3_server records what it started in startup.txt
        started = {
            int(line.rsplit(" pid ", 1)[1])
            for line in (workdir / "startup.txt").read_text().splitlines()
            if " pid " in line
        }
        assert len(started) == 5  # memcached, account, container, object, proxy
        assert started <= _children(os.getpid()) - before
        assert all(_alive(pid) for pid in started)
        server.client().make_bucket("second-server")
    assert not any(_alive(pid) for pid in started)
    assert (workdir / "logs" / "proxy.log").exists()
