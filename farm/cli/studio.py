"""``farm studio …``: the studios' credentials for the controller (admin only).

farm studio add NAME      issue studio NAME a token, printed once (the controller keeps only its hash)
farm studio list          the studios known, and whether their token is live
farm studio revoke NAME   revoke NAME's token at once

The admin is whoever holds the admin credential: FARM_ADMIN_TOKEN (a Secret, on a cluster), or the file
`farm controller start` left in this machine's state dir. The studio then sets FARM_TOKEN (or --token).
"""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone

from farm.cli.batch import _join, _settings, add_token, controller
from farm.cli.common import add_common
from farm.errors import UsageError
from farm.settings import Settings


def cmd_studio(args, settings: Settings) -> int:
    from farm.runtime.cluster import call, credential

    if args.action in ("add", "revoke") and not args.name:
        raise UsageError(f"farm studio {args.action} needs a studio name (e.g. farm studio {args.action} acme)")
    _join(settings)
    answer = call(controller(settings), "studio", args.action, args.name or "", token=credential(settings))
    if args.json:
        print(json.dumps({"studio": args.name, "token": answer} if args.action == "add" else answer))
    elif args.action == "add":
        print(answer)
        print(
            f"farm: studio {args.name}'s token, shown this once: give it to the studio, which sets FARM_TOKEN "
            "(or --token) to it",
            file=sys.stderr,
        )
    elif args.action == "revoke":
        print(f"studio {args.name}'s token revoked" if answer else f"studio {args.name} had no live token")
    elif not answer:
        print("no studios yet: issue one a token with `farm studio add NAME`")
    else:
        for row in answer:
            made = datetime.fromtimestamp(row["created_at"], timezone.utc).isoformat(timespec="seconds")
            print(f"{row['studio']:<24} {'active' if row['active'] else 'revoked':<8} since {made}")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("studio", help="issue, list and revoke the studios' tokens for the controller (admin)")
    p.add_argument("action", choices=["add", "list", "revoke"], help="issue a token, list studios, revoke a token")
    p.add_argument("name", nargs="?", help="the studio (a slug, e.g. acme)")
    add_common(p)
    add_token(p)
    p.add_argument("--json", action="store_true", help="print the answer as JSON")
    p.set_defaults(func=lambda a: cmd_studio(a, _settings(a)))
