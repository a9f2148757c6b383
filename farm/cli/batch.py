"""``farm controller …`` and ``farm batch …``: talk to the controller actor on a Ray cluster.

farm controller start [--address A]   start (or find) the controller; with no cluster given, starts a
                                      local Ray head and records it (farm.runtime.cluster)
farm controller status | stop [--ray]
farm batch submit FILE [--idempotency-key K]   prints the batch id once the batch is in the journal;
                                      with a key the studio used before, the id of that batch
farm batch list | status ID | watch ID | cancel ID | events ID     (each with --json)

Every call carries a token (--token / FARM_TOKEN: a studio's, from `farm studio add`; else the admin
credential `farm controller start` keeps in this machine's state dir): a studio sees its own batches only.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from farm.cli.common import add_common, settings_from_args
from farm.errors import FarmError, UsageError
from farm.settings import Settings


def controller(settings: Settings, *, create: bool = False):
    """The controller actor's handle; with ``create``, start it if it is not running."""
    from farm.runtime.cluster import controller_actor, ensure_admin_token
    from farm.service.host import ControllerService

    # the controller it starts is guarded by an admin credential: FARM_ADMIN_TOKEN, or one in the state dir
    return controller_actor(ensure_admin_token(settings) if create else settings, ControllerService, create=create)


def _when(ts: float | None) -> str:
    return "-" if ts is None else datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds")


def format_status(s: dict) -> str:
    eps = s["episodes"]
    lines = [
        f"batch {s['batch']}  [{s['status']}]  studio {s['studio']}  priority {s['priority']}",
        f"  episodes  {eps['delivered']} delivered, {eps['running']} running, {eps['failed']} failed of {eps['total']}",
    ]
    for stage, row in s["actions"].items():
        lines.append(f"  {stage:<9} " + ", ".join(f"{v} {k}" for k, v in row.items() if v))
    spent, budget = s["spent"], s["budget"]
    caps = "  ".join(
        f"{k} {spent[k]:.6g}" + (f"/{budget[k]:.6g}" if budget.get(k) is not None else "")
        for k in ("tokens", "gpu_seconds", "money")
    )
    lines.append(f"  spent     {caps}")
    if s.get("held"):
        lines.append(f"  held      {s['held']}")
    track = "" if s["on_track"] is None else ("  on track" if s["on_track"] else "  WILL MISS THE DEADLINE")
    lines.append(f"  deadline  {_when(s['deadline'])}   projected finish {_when(s['projected_finish'])}{track}")
    for failure in s["failures"]:
        lines.append(f"  failed    {failure['episode']}: {failure['reason']}")
    notes = s.get("notifications") or {}  # (a controller older than this CLI says nothing of them)
    if notes.get("failed"):
        lines.append(
            f"  webhooks  {notes['failed']} FAILED, {notes.get('sent', 0)} sent; last: {notes.get('last_error') or '?'}"
        )
    return "\n".join(lines)


def _join(settings: Settings, *, start_head: bool = False) -> None:
    """Join the cluster given or the one the farm started here, and say which (on stderr)."""
    from farm.runtime.cluster import connect

    where = connect(settings, start_head=start_head)
    if where is not None:
        print(f"farm: {where.describe()}", file=sys.stderr)


def cmd_controller(args, settings: Settings) -> int:
    from farm.runtime.cluster import call, credential, ensure_admin_token

    if args.action == "start":
        if not settings.store.startswith("s3://"):  # a folder: the one the user means, not the actor's cwd
            settings = settings.model_copy(update={"store": str(Path(settings.store).resolve())})
        settings = ensure_admin_token(settings)  # so that this command's own calls carry it
        _join(settings, start_head=True)
        handle = controller(settings, create=True)
        info = call(handle, "ping", token=credential(settings))
        print(
            json.dumps(info)
            if args.json
            else f"controller running; store {info['store']}; metrics on :{settings.metrics_port}/metrics"
        )
        return 0
    if args.action == "stop":
        return _stop(settings, with_ray=args.ray)
    _join(settings)
    info = call(controller(settings), "ping", token=credential(settings))
    print(
        json.dumps(info)
        if args.json
        else f"controller up since {_when(info['started_at'])}; {info['batches']} batches"
        + (f"; journal at event {info['last_seq']}" if "last_seq" in info else "")  # (the admin's view)
        + f"; store {info['store']}"
    )
    return 0


def _stop(settings: Settings, *, with_ray: bool) -> int:
    """Stop the controller (for good: Ray does not restart it); ``with_ray``, the local Ray head the
    farm started too, even when the controller is gone already."""
    from farm.runtime.cluster import call, credential, kill, read_record, stop_local_head

    local = read_record() is not None and not settings.ray_address
    if with_ray and settings.ray_address:
        raise UsageError("--ray stops only the local Ray head `farm controller start` started: drop --address")
    if with_ray and not local:
        print("farm: no local Ray head started by the farm here: nothing to stop", file=sys.stderr)
        return 0
    try:
        _join(settings)
        handle = controller(settings)
        call(handle, "stop", token=credential(settings))
        kill(handle)
        print("controller stopped")
    except FarmError as exc:
        if not with_ray:
            raise
        print(f"farm: {exc}", file=sys.stderr)  # gone already: stop the head all the same
    if with_ray:
        print(f"Ray head at {stop_local_head()} stopped")
    elif local:
        print("farm: the local Ray head runs on; `farm controller stop --ray` stops it too", file=sys.stderr)
    return 0


def cmd_batch(args, settings: Settings) -> int:
    from functools import partial

    from farm.loader import field_line, load_batch
    from farm.runtime.cluster import call, credential
    from farm.service.host import batch_payload
    from farm.service.tenants import check_idempotency_key

    _call = partial(call, token=credential(settings))
    if args.action == "submit":
        key = getattr(args, "idempotency_key", None)
        if key is not None:
            check_idempotency_key(key)
        from farm.settings import preflight

        loaded = load_batch(Path(args.target), datetime.now(timezone.utc))  # validate fully before connecting
        preflight(settings, loaded.episodes, loaded, line_of=field_line)
        _join(settings)
        batch_id = _call(controller(settings), "submit", batch_payload(loaded, settings), key)
        print(json.dumps({"batch": batch_id, "episodes": len(loaded.episodes)}) if args.json else batch_id)
        return 0
    _join(settings)
    handle = controller(settings)
    if args.action == "list":
        rows = _call(handle, "list")
        if args.json:
            print(json.dumps(rows))
        elif not rows:
            print("no batches yet: submit one with `farm batch submit FILE`")
        for r in [] if args.json else rows:
            e = r["episodes"]
            print(
                f"{r['batch']}  {r['status']:<9} {r['studio']:<16} {e['delivered']}/{e['total']} delivered"
                f"{', ' + str(e['failed']) + ' failed' if e['failed'] else ''}"
            )
    elif args.action in ("status", "cancel"):
        status = _call(handle, args.action, args.target)
        print(json.dumps(status) if args.json else format_status(status))
    elif args.action == "events":
        events = _call(handle, "events", args.target)
        for e in events:
            print(
                json.dumps(e)
                if args.json
                else f"{_when(e['at'])}  {e['type']:<18} {(e.get('key') or '')[:12]:<12} "
                f"{json.dumps(e['data'], ensure_ascii=False)[:140] if e['type'] != 'batch.submitted' else ''}"
            )
    elif args.action == "watch":
        while True:
            status = _call(handle, "status", args.target)
            if args.json:
                print(json.dumps(status), flush=True)
            else:
                sys.stdout.write("\033[2J\033[H" if sys.stdout.isatty() else "")
                print(format_status(status) + "\n", flush=True)
            if status["status"] != "running":
                return 0 if status["episodes"]["failed"] == 0 else 1
            time.sleep(args.interval)
    return 0


def add_parser(sub) -> None:
    c = sub.add_parser("controller", help="the long-running batch controller on a Ray cluster")
    c.add_argument(
        "action",
        choices=["start", "status", "stop"],
        help="start the controller (and a local Ray head when no cluster is given), show it, or stop it",
    )
    add_common(c)
    c.add_argument("--metrics-port", type=int, help="port of /metrics (env FARM_METRICS_PORT)")
    c.add_argument(
        "--ray", action="store_true", help="stop: also stop the local Ray head that `farm controller start` started"
    )
    c.add_argument("--json", action="store_true", help="print the answer as JSON")
    add_token(c)
    c.set_defaults(func=lambda a: cmd_controller(a, _settings(a)))

    b = sub.add_parser("batch", help="submit and follow nightly batches")
    b.add_argument(
        "action",
        choices=["submit", "list", "status", "watch", "cancel", "events"],
        help="submit a batch file; list batches; show, follow, cancel a batch or print its events",
    )
    b.add_argument("target", nargs="?", help="batch file (submit) or batch id")
    add_common(b)
    b.add_argument("--interval", type=float, default=2.0, help="watch: seconds between refreshes")
    b.add_argument(
        "--idempotency-key",
        metavar="K",
        help="submit: your name for this submission; submitting it again (a retried job) returns the same batch",
    )
    add_token(b)
    b.add_argument("--json", action="store_true", help="print the answer as JSON (watch: one object per refresh)")
    b.set_defaults(func=lambda a: cmd_batch(_require_target(a), _settings(a)))


def _require_target(args):
    if args.action not in ("list",) and not args.target:
        raise UsageError(f"farm batch {args.action} needs a {'file' if args.action == 'submit' else 'batch id'}")
    return args


def add_token(parser) -> None:
    parser.add_argument(
        "--token",
        help="your credential for the controller (env FARM_TOKEN): your studio's, from `farm studio add`; "
        "default: the admin credential `farm controller start` left on this machine",
    )


def _settings(args) -> Settings:
    """Settings from the environment and options, with --token over FARM_TOKEN."""
    from pydantic import SecretStr

    from farm.observe import logs

    settings = settings_from_args(args)
    if getattr(args, "token", None):
        settings = settings.model_copy(update={"token": SecretStr(args.token)})
    logs.hide(settings.token.get_secret_value(), settings.admin_token.get_secret_value())
    return settings
