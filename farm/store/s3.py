"""S3Store: objects in an S3 bucket (MinIO, or any S3 server) through the minio client.

Credentials come from settings and are never logged or shown by ``describe``. S3 errors are mapped
to StoreError here, once; connection failures and 5xx answers are retryable.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

from minio import Minio
from minio.commonconfig import CopySource
from minio.error import S3Error
from urllib3.exceptions import HTTPError

from farm.errors import StoreError
from farm.store.base import check_name

_MISSING = {"NoSuchKey", "NoSuchObject", "NotFound"}
_RAISE = object()


class _Retryable(StoreError):
    retryable = True


def _wrap(exc: Exception, what: str) -> StoreError:
    if isinstance(exc, S3Error):
        err = StoreError(f"S3 {what}: {exc.code}: {exc.message}")
        err.retryable = exc.response is not None and exc.response.status >= 500
        return err
    return _Retryable(f"S3 {what}: {type(exc).__name__}: {exc}")


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
        self._client = Minio(endpoint, access_key=access_key, secret_key=secret_key, secure=secure, region=region)
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
        self._do("get", name, lambda: self._client.fget_object(self.bucket, self._key(name), str(dest)))

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
