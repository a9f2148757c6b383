"""Model weights in the artifact store: pushed once, fetched by each worker into a local cache.

A GPU node needs a model's files on its own disk. Instead of provisioning every node, a studio
pushes the folder once (``farm models push ./sdxl sdxl-1``) and names it in a backend's settings as
``"model_path": "store:sdxl-1"``; each worker fetches it on first use into its cache
(``FARM_MODEL_CACHE``, default ``~/.cache/farm/models``), checks every file's SHA-256, and reuses it
afterwards. Nothing is fetched from a model hub.

Layout (shared by all studios, like the journal)::

    _farm/models/blobs/sha256/ab/abcdef…    the files, by content
    _farm/models/<name>/index.json          {"files": {relative path: {"digest", "size"}}}, written last

A name is immutable: pushing different files under an existing name is refused, so that the name,
which enters every action key through the backend's version, always means the same weights.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from farm.errors import StoreError, UsageError
from farm.store.artifacts import file_digest
from farm.store.base import ObjectStore

PREFIX = "_farm/models"
STORE_PREFIX = "store:"  # workers._torch.STORE_PREFIX: how a setting names a stored model
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,99}$")


def _blob(digest: str) -> str:
    return f"{PREFIX}/blobs/sha256/{digest[:2]}/{digest}"


def _index(name: str) -> str:
    if not _NAME.fullmatch(name) or ".." in name:
        raise UsageError(f"model name {name!r}: use lowercase letters, digits, '.', '_' and '-' (e.g. sdxl-1.0)")
    return f"{PREFIX}/{name}/index.json"


def _files(folder: Path) -> dict[str, Path]:
    out = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            rel = path.relative_to(folder).as_posix()
            if rel.startswith(".") or "/." in rel:
                continue  # .cache, .git: not part of the model
            out[rel] = path
    return out


def push(objects: ObjectStore, folder: Path, name: str) -> dict[str, Any]:
    """Store every file of ``folder`` as model ``name``; the index is written last. Pushing the same
    files again is a no-op; other files under an existing name are refused."""
    index_name = _index(name)
    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError(f"{folder} is not a folder")
    files = _files(folder)
    if not files:
        raise UsageError(f"{folder} has no files")
    entries: dict[str, dict[str, Any]] = {}
    for rel, path in files.items():
        digest, size = file_digest(path)
        entries[rel] = {"digest": digest, "size": size}
    index = {"files": entries}
    existing = objects.get_bytes(index_name)
    if existing is not None:
        if json.loads(existing) == index:
            return {
                "name": name,
                "files": len(entries),
                "bytes": sum(e["size"] for e in entries.values()),
                "uploaded": 0,
            }
        raise UsageError(
            f"model {name!r} is already in the store with other files; models are immutable "
            "(their name enters action keys): push under a new name, e.g. with a version suffix"
        )
    uploaded = 0
    for rel, entry in entries.items():
        if not objects.exists(_blob(entry["digest"])):
            objects.put_file(_blob(entry["digest"]), files[rel])
            uploaded += entry["size"]
    objects.put_bytes(index_name, json.dumps(index, sort_keys=True).encode(), durable=True)
    return {
        "name": name,
        "files": len(entries),
        "bytes": sum(e["size"] for e in entries.values()),
        "uploaded": uploaded,
    }


def names(objects: ObjectStore) -> list[str]:
    return sorted({n[len(PREFIX) + 1 :].split("/")[0] for n in objects.list(PREFIX + "/") if n.endswith("/index.json")})


def cache_root() -> Path:
    return Path(os.environ.get("FARM_MODEL_CACHE") or Path.home() / ".cache" / "farm" / "models")


_fetched: dict[tuple[str, str, str], Path] = {}  # (store, name, cache) -> folder, in this process


def fetch(objects: ObjectStore, name: str, root: Path | None = None) -> Path:
    """The local folder of stored model ``name``, fetched and checked on first use."""
    root = Path(root or cache_root())
    memo = (objects.describe(), name, str(root))
    if memo in _fetched and (_fetched[memo] / ".complete").is_file():
        return _fetched[memo]
    _fetched[memo] = _fetch(objects, name, root)
    return _fetched[memo]


def _fetch(objects: ObjectStore, name: str, root: Path) -> Path:
    data = objects.get_bytes(_index(name))
    if data is None:
        raise StoreError(f"no model {name!r} in {objects.describe()}: push it first (farm models push FOLDER {name})")
    index = json.loads(data)
    target = root / f"{name}-{hashlib.sha256(data).hexdigest()[:16]}"
    if (target / ".complete").is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
    try:
        for rel, entry in index["files"].items():
            dest = tmp / rel
            if not dest.resolve().is_relative_to(tmp.resolve()):
                raise StoreError(f"model {name!r}: refusing file path {rel!r} outside its folder")
            dest.parent.mkdir(parents=True, exist_ok=True)
            objects.get_file(_blob(entry["digest"]), dest)
            digest, _ = file_digest(dest)
            if digest != entry["digest"]:
                raise StoreError(f"model {name!r}: {rel} is corrupt in the store (read {digest})")
        (tmp / ".complete").write_text("")
        try:
            tmp.rename(target)  # atomic: another worker on this node may have won the race
        except OSError:
            if not (target / ".complete").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def localize(
    configs: Mapping[str, Mapping[str, Any]] | None, objects: ObjectStore, root: Path | None = None
) -> dict[str, dict[str, Any]] | None:
    """Configured backends' settings with each ``store:NAME`` model fetched to a local folder (the
    original stays as ``model_ref``, so versions are unchanged). Untouched when none is stored."""
    if not configs:
        return None if configs is None else {}
    out = {}
    for backend, config in configs.items():
        path = config.get("model_path")
        if isinstance(path, str) and path.startswith(STORE_PREFIX):
            local = fetch(objects, path[len(STORE_PREFIX) :], root)
            config = dict(config, model_path=str(local), model_ref=path)
        out[backend] = dict(config)
    return out
