"""S3Store: objects in an S3 bucket (MinIO, or any S3 server) through the minio client.

Credentials come from settings and are never logged or shown by ``describe``. S3 errors are mapped
to StoreError here, once; connection failures and 5xx answers are retryable.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path

import certifi
import urllib3
from minio import Minio
from minio.commonconfig import CopySource
from minio.error import S3Error
from urllib3.exceptions import HTTPError
from urllib3.util import Retry, Timeout

from farm.errors import StoreError, StoreUnwritable
from farm.store.base import check_name, refused_write

_MISSING = {"NoSuchKey", "NoSuchObject", "NotFound"}
# the server is out of space or over its quota: like a full local disk, not cured by a retry in seconds
_FULL = {"XMinioStorageFull", "InsufficientStorage", "QuotaExceeded", "XMinioAdminBucketQuotaExceeded"}
_RAISE = object()


class _Retryable(StoreError):
    retryable = True


def _wrap(exc: Exception, what: str) -> StoreError:
    if isinstance(exc, S3Error) and (exc.code in _FULL or (exc.response is not None and exc.response.status == 507)):
        return StoreUnwritable(
            f"S3 {what}: the server is out of space ({exc.code}): free space on it or point FARM_STORE elsewhere"
        )
    if isinstance(exc, S3Error):
        err = StoreError(f"S3 {what}: {exc.code}: {exc.message}")
        err.retryable = exc.response is not None and exc.response.status >= 500
        return err
    return _Retryable(f"S3 {what}: {type(exc).__name__}: {exc}")


# How long one connect, and one wait for the next bytes of an answer, may take. The client's own
# default is 5 minutes each: an endpoint that vanished mid-answer (a stopped proxy, a partition)
# held a worker, and with it its action, for that long. Slow big objects still stream: the read
# timeout is between two reads, not for the whole object.
CONNECT_TIMEOUT_S, READ_TIMEOUT_S = 10.0, 60.0


def _http_client() -> urllib3.PoolManager:
    """The client's own settings (pool size, retries of 5xx answers, certificates), bounded waits."""
    return urllib3.PoolManager(
        timeout=Timeout(connect=CONNECT_TIMEOUT_S, read=READ_TIMEOUT_S),
        maxsize=10,
        cert_reqs="CERT_REQUIRED",
        ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
        retries=Retry(total=5, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]),
    )


class S3Store:
    """Objects under ``prefix`` in ``bucket``; the bucket is created if it does not exist."""

    def __init__(
        self,
        endpoint: str,
        access_key: str,
        secret_key: str,
        bucket: str,
        prefix: str = "",
        *,
        secure: bool = True,
        region: str | None = None,
        create_bucket: bool = True,
    ):
        self.endpoint, self.bucket, self.secure = endpoint, bucket, secure
        self.prefix = check_name(prefix.strip("/")) + "/" if prefix.strip("/") else ""
        self._client = Minio(
            endpoint,
            access_key=access_key,
            secret_key=secret_key,
            secure=secure,
            region=region,
            http_client=_http_client(),
        )
        if create_bucket:
            try:
                if not self._client.bucket_exists(bucket):
                    self._client.make_bucket(bucket)
            except (S3Error, HTTPError, OSError) as exc:
                raise _wrap(exc, f"opening bucket {bucket}") from exc

    def _key(self, name: str) -> str:
        return self.prefix + check_name(name)

    def _do(self, what: str, name: str, call, *, missing=_RAISE):
        """Run one client call, mapping S3 and network errors to StoreError here, once.

        A missing object returns ``missing`` (or raises StoreError naming it when that is _RAISE).
        """
        try:
            return call()
        except S3Error as exc:
            if exc.code in _MISSING:
                if missing is _RAISE:
                    raise StoreError(f"{name} is not in {self.describe()}") from exc
                return missing
            raise _wrap(exc, f"{what} {name}") from exc
        except (HTTPError, OSError) as exc:
            raise _wrap(exc, f"{what} {name}") from exc

    def put_file(self, name: str, path: Path) -> None:
        self._do("put", name, lambda: self._client.fput_object(self.bucket, self._key(name), str(path)))

    def put_bytes(self, name: str, data: bytes, *, durable: bool = True) -> None:  # S3 writes are durable
        self._do(
            "put", name, lambda: self._client.put_object(self.bucket, self._key(name), io.BytesIO(data), len(data))
        )

    def get_file(self, name: str, dest: Path) -> None:
        try:
            self._do("get", name, lambda: self._client.fget_object(self.bucket, self._key(name), str(dest)))
        except StoreError as exc:  # the local disk (scratch), not the server, may have refused
            cause = exc.__cause__
            refused = (
                refused_write(cause, f"{name} from the store to {dest}", Path(dest), "TMPDIR")
                if isinstance(cause, OSError)
                else None
            )
            if refused is None:
                raise
            for partial in Path(dest).parent.glob(Path(dest).name + "*.part.minio"):
                partial.unlink(missing_ok=True)
            Path(dest).unlink(missing_ok=True)
            raise refused from cause

    def get_bytes(self, name: str) -> bytes | None:
        def read():
            response = self._client.get_object(self.bucket, self._key(name))
            try:
                return response.read()
            finally:
                response.close()
                response.release_conn()

        return self._do("get", name, read, missing=None)

    def exists(self, name: str) -> bool:
        return self._do(
            "stat", name, lambda: self._client.stat_object(self.bucket, self._key(name)) and True, missing=False
        )

    def list(self, prefix: str) -> Iterator[str]:
        full = self.prefix + (check_name(prefix.rstrip("/")) + "/" if prefix.strip("/") else "")
        objects = self._do(
            "list",
            prefix,
            lambda: list(self._client.list_objects(self.bucket, prefix=full, recursive=True)),
            missing=[],
        )
        for obj in objects:
            yield obj.object_name[len(self.prefix) :]

    def copy(self, src: str, dst: str) -> None:
        """A server-side copy: the bytes never pass through this process (up to 5 GiB, S3's limit for one copy)."""
        self._do(
            "copy",
            f"{src} -> {dst}",
            lambda: self._client.copy_object(self.bucket, self._key(dst), CopySource(self.bucket, self._key(src))),
        )

    def presigned_get(self, name: str) -> str:
        return self._client.presigned_get_object(self.bucket, self._key(name))

    def describe(self) -> str:
        scheme = "https" if self.secure else "http"
        return f"s3://{self.bucket}/{self.prefix} at {scheme}://{self.endpoint}"
