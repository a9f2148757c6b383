"""Artifact storage: the ObjectStore port, its two implementations, and the ArtifactStore on top."""

from farm.store.artifacts import ArtifactStore, file_digest
from farm.store.base import ObjectStore, check_name
from farm.store.local import LocalStore

__all__ = ["ArtifactStore", "LocalStore", "ObjectStore", "check_name", "file_digest", "open_objects"]


def open_objects(spec) -> ObjectStore:
    """The ObjectStore a ``farm.settings.StoreSpec`` describes (a directory or an s3:// URL)."""
    if spec.url.startswith("s3://"):
        from farm.store.s3 import S3Store

        bucket, _, prefix = spec.url[len("s3://") :].partition("/")
        return S3Store(
            spec.endpoint,
            spec.access_key.get_secret_value(),
            spec.secret_key.get_secret_value(),
            bucket,
            prefix,
            secure=spec.secure,
            region=spec.region,
        )
    return LocalStore(spec.url)
