"""``farm models push FOLDER NAME`` and ``farm models list``: model weights in the artifact store
(farm.store.models), named in a backend's settings as ``"model_path": "store:NAME"``."""

from __future__ import annotations

import json
from pathlib import Path

from farm.cli.common import add_common, settings_from_args
from farm.errors import UsageError
from farm.settings import Settings
from farm.store import models, open_objects


def cmd_models(args, settings: Settings) -> int:
    objects = open_objects(settings.store_spec())
    if args.action == "push":
        if not args.folder or not args.name:
            raise UsageError("farm models push FOLDER NAME")
        result = models.push(objects, Path(args.folder), args.name)
        print(
            json.dumps(result)
            if args.json
            else f"model {result['name']}: {result['files']} files, {result['bytes'] / 1e6:.1f} MB "
            f'({result["uploaded"] / 1e6:.1f} MB uploaded); use it as "model_path": "store:{result["name"]}"'
        )
    else:
        found = models.names(objects)
        print(json.dumps(found) if args.json else "\n".join(found) or "no models in the store")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("models", help='model weights in the artifact store, for backends\' "store:NAME" model paths')
    p.add_argument("action", choices=("push", "list"), help="push: upload a model folder; list: the stored models")
    p.add_argument("folder", nargs="?", help="push: a folder written by save_pretrained")
    p.add_argument("name", nargs="?", help="push: the name to store it under (immutable: add a version)")
    add_common(p)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=lambda a: cmd_models(a, settings_from_args(a)))
