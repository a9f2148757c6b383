"""``farm bench episode|controller|dispatch|backends|restart``: benchmarks, each against a baseline measured in the same run."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from farm.cli.common import add_common, print_report, settings_from_args
from farm.errors import UsageError


def cmd_bench(args) -> int:
    from farm.bench.episode import bench_episode

    report = bench_episode(
        settings_from_args(args), example=args.example, workdir=Path(args.workdir) if args.workdir else None
    )
    print(json.dumps(report, indent=2) if args.json else report["text"])
    return 0


def _bench_batch():
    from farm.bench import batch

    return batch


def _bench_backends():
    from farm.bench import backends

    return backends


def cmd_restart(args) -> int:
    from farm.bench.restart import bench_restart
    from farm.store import open_objects

    if args.episodes < 1 or args.batches < 1 or args.group_s < 0:
        raise UsageError("farm bench restart: --episodes and --batches must be 1 or more, --group-s 0 or more")
    store = None
    if args.store:
        if not args.store.startswith("s3://"):
            raise UsageError(
                f"--store {args.store}: the night is journaled locally; give s3://BUCKET/PREFIX or nothing"
            )
        store = open_objects(settings_from_args(args).store_spec())
    report = bench_restart(args.episodes, args.batches, store, args.group_s)
    return print_report(report, args)


def add_parser(sub: argparse._SubParsersAction) -> None:
    b = sub.add_parser("bench", help="benchmarks")
    bsub = b.add_subparsers(dest="bench", required=True)
    be = bsub.add_parser("episode", help="cold vs warm render of an example; assembly vs bare ffmpeg concat")
    add_common(be)
    be.add_argument(
        "--example",
        default="midnight-tea/ep001.yaml",
        help="the shipped example episode to render (SERIES/EPISODE.yaml)",
    )
    be.add_argument("--workdir", help="keep the bench's files here (default: a temporary directory)")
    be.add_argument("--json", action="store_true", help="print the report as one JSON object")
    be.set_defaults(func=cmd_bench)
    bc = bsub.add_parser("controller", help="plan an N-episode batch in the controller: time and memory")
    bc.add_argument("--episodes", type=int, default=1000, help="episodes in the synthetic batch (default 1000)")
    bc.add_argument("--json", action="store_true", help="print the report as one JSON object")
    bc.set_defaults(func=lambda a: print_report(_bench_batch().bench_controller(a.episodes), a))
    bd = bsub.add_parser("dispatch", help="no-op actions through the controller vs bare Ray, on a local Ray")
    bd.add_argument("--episodes", type=int, default=10, help="no-op episodes in the batch (default 10)")
    bd.add_argument("--gpus", type=int, default=4, help="GPUs to declare to the local Ray")
    bd.add_argument(
        "--dispatch-ahead",
        type=int,
        default=None,
        help="the controller's FARM_DISPATCH_AHEAD for this run (default: the setting's default)",
    )
    bd.add_argument("--json", action="store_true", help="print the report as one JSON object")
    bd.set_defaults(
        func=lambda a: print_report(
            _bench_batch().bench_dispatch(a.episodes, a.gpus, dispatch_ahead=a.dispatch_ahead), a
        )
    )

    bk = bsub.add_parser("backends", help="diffusers image and video backends: shots per minute, batching off vs on")
    bk.add_argument("--image-model", help="a diffusers text-to-image pipeline folder (default: a tiny random one)")
    bk.add_argument("--video-model", help="a diffusers image-to-video pipeline folder (default: a tiny random one)")
    bk.add_argument("--shots", type=int, default=8, help="shots to draw and animate (default 8)")
    bk.add_argument("--batch", type=int, default=4, help="shots per pipeline call with batching on")
    bk.add_argument("--width", type=int, default=576, help="frame width in pixels (default 576)")
    bk.add_argument("--height", type=int, default=1024, help="frame height in pixels (default 1024)")
    bk.add_argument("--steps", type=int, default=20, help="denoising steps per pipeline call (default 20)")
    bk.add_argument("--json", action="store_true", help="print the report as one JSON object")
    bk.set_defaults(
        func=lambda a: print_report(
            _bench_backends().bench_backends(
                a.image_model, a.video_model, a.shots, a.batch, a.width, a.height, a.steps
            ),
            a,
        )
    )
    br = bsub.add_parser("restart", help="a controller's restart after an N-episode night, before and after compaction")
    br.add_argument("--episodes", type=int, default=1000, help="episodes in the night (default 1000)")
    br.add_argument("--batches", type=int, default=20, help="batches they come in; all but the last finish")
    br.add_argument("--group-s", type=float, default=0.1, help="the journal's group commit window, simulated seconds")
    br.add_argument("--store", help="s3://BUCKET/PREFIX (with FARM_S3_*): restart from a copy of the journal there")
    br.add_argument("--json", action="store_true", help="print the report as one JSON object")
    br.set_defaults(func=cmd_restart)
