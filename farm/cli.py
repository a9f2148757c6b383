"""The ``farm`` command.

    farm validate FILE...             check series/episode specs without rendering
    farm render EPISODE.yaml          render one episode (local Ray and ./farm-store by default)
    farm examples DIR                 write the shipped example series and episodes to DIR
    farm bench episode                cold vs warm render, assembly vs bare ffmpeg concat
    farm controller start|status|stop the batch controller on a Ray cluster (farm.cli_batch)
    farm batch submit|list|status|watch|cancel|events

Settings come from FARM_* environment variables (see farm.settings); options override them.
Exit codes: 0 ok, 1 the work failed, 2 bad input (specs, options, missing tools).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from importlib import resources
from pathlib import Path

from pydantic import ValidationError

from farm import backends, logs
from farm.errors import FarmError, SpecError
from farm.loader import load_episode, validate_files
from farm.settings import Settings
from workers.api import ToolMissing, require_tool


def settings_from_args(args) -> Settings:
    """Settings from FARM_* variables, overridden by whichever options this command has."""
    return Settings.from_env(store=getattr(args, "store", None), studio=getattr(args, "studio", None),
                             ray_address=getattr(args, "address", None), num_cpus=getattr(args, "num_cpus", None),
                             metrics_port=getattr(args, "metrics_port", None),
                             log_level=_level(args) if getattr(args, "verbose", 0) else None)


def cmd_validate(args) -> int:
    problems = validate_files(args.files)
    for p in problems:
        print(p, file=sys.stderr)
    if not problems:
        print(f"ok: {len(args.files)} file(s) valid")
    return 2 if problems else 0


class _ProgressPrinter:
    """One line rewritten in place on a terminal; at most one line a second otherwise."""

    def __init__(self, stream=sys.stderr):
        self.stream, self.tty, self.last, self.text, self.printed = stream, stream.isatty(), 0.0, "", ""

    def __call__(self, progress) -> None:
        text = progress.line()
        if text == self.text:
            return
        self.text = text
        if self.tty:
            self.stream.write("\r\033[K" + text)
            self.stream.flush()
        elif time.monotonic() - self.last >= 1.0:
            self._print()

    def _print(self) -> None:
        self.last, self.printed = time.monotonic(), self.text
        print(self.text, file=self.stream, flush=True)

    def close(self) -> None:
        if self.tty and self.text:
            self.stream.write("\n")
        elif self.text != self.printed:
            self._print()


def preflight(settings: Settings) -> None:
    """Fail before anything runs if a program the chosen backends need is missing."""
    for tool in backends.required_tools(settings.backend_names()):
        require_tool(tool)


def render_one(episode: Path, settings: Settings, out: Path | None = None, on_progress=None,
               log_level: str = "WARNING"):
    from farm.render import EpisodeRender
    from farm.runtime import RayRuntime

    loaded = load_episode(episode)
    settings.store_spec()  # a bad store setting fails here, before Ray starts
    preflight(settings)
    runtime = RayRuntime(settings.ray_address, settings.num_cpus, log_level)
    try:
        return EpisodeRender(loaded, settings, runtime, out_dir=out, on_progress=on_progress).run()
    finally:
        runtime.shutdown()


def cmd_render(args) -> int:
    settings = settings_from_args(args)
    printer = _ProgressPrinter()
    try:
        result = render_one(Path(args.episode), settings, Path(args.out) if args.out else None,
                            None if args.quiet else printer, _level(args))
    finally:
        printer.close()
    summary = result.summary()
    if args.json:
        print(json.dumps(summary, ensure_ascii=False))
        return 0
    print(f"video:       {summary['video']}")
    print(f"subtitles:   {summary['subtitles']}")
    print(f"storyboard:  {summary['storyboard']}")
    print(f"episode:     {summary['duration_seconds']:.2f} s")
    print(f"actions:     {summary['actions_run']} run, {summary['actions_cached']} cached")
    print(f"usage:       {summary['cpu_seconds']:.1f} CPU-s, {summary['gpu_seconds']:.1f} GPU-s, "
          f"{summary['tokens_in']} tokens in, {summary['tokens_out']} tokens out")
    print(f"cache saved: {summary['saved']['cpu_seconds']:.1f} CPU-s, {summary['saved']['gpu_seconds']:.1f} GPU-s")
    print(f"wall time:   {summary['wall_seconds']:.1f} s")
    return 0


def write_examples(dest: Path) -> list[Path]:
    root = resources.files("farm") / "examples"
    written = []
    for series in root.iterdir():
        if not series.is_dir():
            continue
        for f in series.iterdir():
            if f.name.endswith(".yaml"):
                target = dest / series.name / f.name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(f.read_bytes())
                written.append(target)
    return sorted(written)


def cmd_examples(args) -> int:
    for path in write_examples(Path(args.dir)):
        print(path)
    return 0


def cmd_bench(args) -> int:
    from farm.bench import bench_episode

    report = bench_episode(settings_from_args(args), example=args.example, workdir=Path(args.workdir) if args.workdir else None)
    print(json.dumps(report, indent=2) if args.json else report["text"])
    return 0


def _print_report(report: dict, args) -> int:
    print(json.dumps({k: v for k, v in report.items() if k != "text"}) if args.json else report["text"])
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="farm", description="A render farm for AI short dramas.")
    p.add_argument("-v", "--verbose", action="count", default=0, help="-v info logs, -vv debug logs")
    sub = p.add_subparsers(dest="command", required=True)

    v = sub.add_parser("validate", help="check specs without rendering")
    v.add_argument("files", nargs="+")
    v.set_defaults(func=cmd_validate)

    def common(sp):
        sp.add_argument("--store", help="artifact store: a directory or s3://bucket/prefix (env FARM_STORE)")
        sp.add_argument("--studio", help="the tenant whose store prefix and cache namespace to use (env FARM_STUDIO)")
        sp.add_argument("--address", help="an existing Ray cluster (env FARM_RAY_ADDRESS); default: start a local Ray")
        sp.add_argument("--num-cpus", type=int, help="CPUs for a local Ray (default: all)")

    r = sub.add_parser("render", help="render one episode")
    r.add_argument("episode")
    common(r)
    r.add_argument("--out", help="where to put the deliverables of an S3 store locally (default ./farm-out)")
    r.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    r.add_argument("--quiet", action="store_true", help="no progress display")
    r.set_defaults(func=cmd_render)

    e = sub.add_parser("examples", help="write the shipped example series and episodes")
    e.add_argument("dir")
    e.set_defaults(func=cmd_examples)

    b = sub.add_parser("bench", help="benchmarks")
    bsub = b.add_subparsers(dest="bench", required=True)
    be = bsub.add_parser("episode", help="cold vs warm render of an example; assembly vs bare ffmpeg concat")
    common(be)
    be.add_argument("--example", default="midnight-tea/ep001.yaml")
    be.add_argument("--workdir", help="keep the bench's files here (default: a temporary directory)")
    be.add_argument("--json", action="store_true")
    be.set_defaults(func=cmd_bench)
    bc = bsub.add_parser("controller", help="plan an N-episode batch in the controller: time and memory")
    bc.add_argument("--episodes", type=int, default=1000)
    bc.add_argument("--json", action="store_true")
    bc.set_defaults(func=lambda a: _print_report(__import__("farm.bench_batch").bench_batch.bench_controller(a.episodes), a))
    bd = bsub.add_parser("dispatch", help="no-op actions through the controller vs bare Ray, on a local Ray")
    bd.add_argument("--episodes", type=int, default=10)
    bd.add_argument("--gpus", type=int, default=4, help="GPUs to declare to the local Ray")
    bd.add_argument("--json", action="store_true")
    bd.set_defaults(func=lambda a: _print_report(
        __import__("farm.bench_batch").bench_batch.bench_dispatch(a.episodes, a.gpus), a))

    from farm import cli_batch, simulate

    cli_batch.add_parsers(sub, common)
    simulate.add_parser(sub)  # farm simulate [--bench]
    return p


def _level(args) -> str:
    return ["WARNING", "INFO", "DEBUG"][min(args.verbose, 2)]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.configure(level=_level(args))
    try:
        return args.func(args)
    except SpecError as exc:
        print(exc, file=sys.stderr)
        return 2
    except ToolMissing as exc:
        print(f"farm: {exc}", file=sys.stderr)
        return 2
    except ValidationError as exc:  # settings
        print(f"farm: invalid settings: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"farm: {exc}", file=sys.stderr)
        return 2
    except FarmError as exc:
        print(f"farm: failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

