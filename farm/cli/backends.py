"""``farm backends``: what each stage can use, what is chosen, and whether it is reachable.

Every backend is listed: the embedded ones and those configured in settings (FARM_BACKENDS), with
kind, version (what enters action keys), resources, features and batching. With checks on (the
default) each configured backend's ``check()`` contacts its server or reads its model folder, and
each embedded one's programs are looked up on PATH. The exit status is 1 when any check fails,
so a scheduler can gate a nightly batch on it.
"""

from __future__ import annotations

import json
import shutil
from typing import Any

from farm.cli.common import add_common, settings_from_args
from farm.errors import UsageError
from farm.observe import logs
from farm.settings import Settings
from farm.store import models
from workers.api import ConfigError, StageError


def _stored_model(settings: Settings, name: str) -> str:
    from farm.store import open_objects

    objects = open_objects(settings.store_spec())
    data = objects.get_bytes(f"{models.PREFIX}/{name}/index.json")
    if data is None:
        raise StageError(f"no model {name!r} in {objects.describe()}: push it (farm models push FOLDER {name})")
    files = json.loads(data)["files"]
    size = sum(f["size"] for f in files.values()) / 1e6
    return f"stored model {name} ({len(files)} files, {size:.1f} MB), fetched by each worker on first use"


def describe(settings: Settings, check: bool = True) -> list[dict[str, Any]]:
    catalog = settings.catalog()
    defaults = settings.backend_names()
    rows = []
    for stage, name in catalog.all():
        row: dict[str, Any] = {
            "stage": stage,
            "name": name,
            "default": defaults.get(stage) == name,
            "kind": catalog.configs.get(name, {}).get("kind", "embedded"),
        }
        try:
            backend = catalog.load(stage, name)
        except (ConfigError, ImportError, UsageError) as exc:
            rows.append(row | {"ok": False, "status": logs.mask(str(exc))})
            continue
        res = backend.resources
        row |= {
            "version": backend.version,
            "ops": list(backend.ops),
            "features": list(getattr(backend, "features", ())),
            "max_batch": int(getattr(backend, "max_batch", 1)) if hasattr(backend, "run_batch") else 1,
            "resources": {
                "num_cpus": res.num_cpus,
                "num_gpus": res.num_gpus,
                "accelerator": res.accelerator,
                "memory_mb": res.memory_mb,
            },
        }
        if not check:
            rows.append(row | {"ok": None, "status": "not checked"})
            continue
        try:
            stored = str(catalog.configs.get(name, {}).get("model_path", ""))
            if stored.startswith(models.STORE_PREFIX):  # the weights are in the store: fetching them here
                status = _stored_model(settings, stored[len(models.STORE_PREFIX) :])  # would only check a copy
            elif hasattr(backend, "check"):
                status = backend.check()
            else:
                tools = tuple(getattr(backend, "tools", ()))
                missing = [t for t in tools if shutil.which(t) is None]
                if missing:
                    raise StageError(f"not on PATH: {', '.join(missing)}")
                status = "ready" + (f" ({', '.join(tools)} found)" if tools else "")
            rows.append(row | {"ok": True, "status": logs.mask(status)})
        except Exception as exc:  # a check must report, never crash the listing
            rows.append(row | {"ok": False, "status": logs.mask(str(exc))})
    return rows


def cmd_backends(args, settings: Settings) -> int:
    rows = describe(settings, check=not args.no_check)
    if args.json:
        print(json.dumps(rows))
    else:
        for r in rows:
            mark = {True: "ok  ", False: "FAIL", None: "    "}[r["ok"]]
            default = "*" if r["default"] else " "
            gpus = r.get("resources", {}).get("num_gpus", 0)
            extra = (
                (f" gpus={gpus:g}" if gpus else "")
                + (f" batch={r['max_batch']}" if r.get("max_batch", 1) > 1 else "")
                + (f" features={','.join(r['features'])}" if r.get("features") else "")
            )
            print(
                f"{mark} {default}{r['stage']:<9} {r['name']:<16} {r['kind']:<16} {r.get('version', '-'):<16}{extra}  {r['status']}"
            )
        print("* = the stage's default (FARM_BACKEND_<STAGE>); a series or batch spec may choose another by name")
    return 1 if any(r["ok"] is False for r in rows) else 0


def add_parser(sub) -> None:
    p = sub.add_parser("backends", help="list the backends each stage can use and check they are reachable")
    add_common(p)
    p.add_argument("--no-check", action="store_true", help="list only; contact nothing")
    p.add_argument("--json", action="store_true", help="one JSON array")
    p.set_defaults(func=lambda a: cmd_backends(a, settings_from_args(a)))
