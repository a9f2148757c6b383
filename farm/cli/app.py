"""The ``farm`` command.

    farm validate FILE...             check series/episode specs without rendering
    farm render EPISODE.yaml          render one episode (local Ray and ./farm-store by default)
    farm report BATCH_OR_EPISODE      one self-contained HTML report: Gantt of worker lanes, spend, failures
    farm examples DIR                 write the shipped example series and episodes to DIR
    farm bench episode                cold vs warm render, assembly vs bare ffmpeg concat
    farm controller start|status|stop the batch controller on a Ray cluster (farm.cli.batch)
    farm batch submit|list|status|watch|cancel|events

Settings come from FARM_* environment variables (see farm.settings); options override them.
Exit codes: 0 ok, 1 the work failed, 2 bad input (specs, options, missing tools).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from importlib import resources
from pathlib import Path

from pydantic import ValidationError

from farm import catalog as backends
from farm.cli import backends as cli_backends
from farm.cli import models as cli_models
from farm.observe import logs
from farm.errors import FarmError, SpecError, UsageError
from farm.loader import load_episode, validate_files
from farm.settings import Settings
from workers.api import ConfigError, ToolMissing, require_tool


def settings_from_args(args) -> Settings:
    """Settings from FARM_* variables, overridden by whichever options this command has.
    Raises UsageError when they are not valid."""
    try:
        settings = Settings.from_env(store=getattr(args, "store", None), studio=getattr(args, "studio", None),
                                     ray_address=getattr(args, "address", None), num_cpus=getattr(args, "num_cpus", None),
                                     metrics_port=getattr(args, "metrics_port", None),
                                     log_level=_level(args) if getattr(args, "verbose", 0) else None)
    except ValidationError as exc:
        raise UsageError(logs.mask(f"invalid settings: {exc}")) from None
    logs.hide(settings.s3_access_key.get_secret_value(), settings.s3_secret_key.get_secret_value(),
              *settings.catalog().secrets())
    return settings


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


def preflight(settings: Settings, episodes=(), batch=None) -> None:
    """Fail before anything runs: a configured backend with bad settings, a spec naming a backend
    that does not exist (file and field named), a program a chosen backend needs that is missing.
    ``episodes`` are LoadedEpisodes; ``batch`` a LoadedBatch (whose ``backends`` win over the series')."""
    from farm.errors import SpecError, SpecProblem

    catalog = settings.catalog()
    broken = catalog.problems()
    if broken:
        raise ConfigError("invalid backend settings (FARM_BACKENDS): " + "; ".join(broken))
    problems: list[SpecProblem] = []
    wanted = [settings.backend_names()]
    sources = [(str(e.series_path), e.series.backends) for e in episodes]
    if batch is not None:
        sources.append((str(batch.path), batch.spec.backends))
    for path, names in sources:
        for stage, name in names.items():
            try:
                catalog.load(stage, name)
            except (backends.UnknownBackend, ConfigError) as exc:
                problems.append(SpecProblem(path, f"backends.{stage}", f"{exc}; configure it in FARM_BACKENDS "
                                            "or choose a known one (farm backends)"))
    if problems:
        raise SpecError(problems)
    for e in episodes:
        wanted.append(backends.resolve(settings.backend_names(), e.series.backends,
                                       batch.spec.backends if batch is not None else None))
    for names in wanted:
        for tool in catalog.required_tools(names):
            require_tool(tool)


def render_one(episode: Path, settings: Settings, out: Path | None = None, on_progress=None,
               log_level: str = "WARNING", metrics=None):
    """Render one episode as a batch of one on a (local) Ray (farm.service.local); ``metrics`` (a
    farm.observe.metrics.Metrics) accounts every journaled event, whether the render succeeds or not."""
    from farm.runtime.ray_runtime import RayRuntime
    from farm.service.local import render_episode

    loaded = load_episode(episode)
    spec = settings.store_spec()  # a bad store setting fails here, before Ray starts
    preflight(settings, [loaded])
    runtime = RayRuntime(spec, settings.ray_address, settings.num_cpus, log_level, catalog=settings.catalog(),
                         cpu_ahead=settings.dispatch_ahead)
    try:
        return render_episode(loaded, settings, runtime, out_dir=out, on_progress=on_progress, metrics=metrics)
    finally:
        runtime.shutdown()


class _MetricsExport:
    """``farm render --pushgateway URL / --metrics-textfile PATH``: the render's metrics, accounted per
    journaled event in a fresh registry, exported after it; a failed export is reported, never hidden."""

    def __init__(self, settings: Settings, pushgateway: str | None, textfile: str | None):
        from farm.catalog import profiles_for
        from farm.observe.metrics import Metrics, accelerator_label
        from farm.policy import Prices

        self.pushgateway, self.textfile, self.failed = pushgateway, textfile, False
        self.metrics = Metrics(prices=Prices(**settings.prices), controller=False,
                               accelerators={k: accelerator_label(p) for k, p in profiles_for(settings).items()})

    def export(self) -> None:
        for what, target, export in (("Pushgateway", self.pushgateway, self.metrics.push),
                                     ("textfile", self.textfile, self.metrics.write_textfile)):
            if target:
                try:
                    export(target)
                except (OSError, ValueError) as exc:
                    self.failed = True
                    print(f"farm: could not export metrics to the {what} {target}: {exc}", file=sys.stderr)


def cmd_render(args) -> int:
    settings = settings_from_args(args)
    printer = _ProgressPrinter()
    export = _MetricsExport(settings, args.pushgateway, args.metrics_textfile) \
        if args.pushgateway or args.metrics_textfile else None
    try:
        result = render_one(Path(args.episode), settings, Path(args.out) if args.out else None,
                            None if args.quiet else printer, _level(args),
                            metrics=export.metrics if export is not None else None)
    finally:
        printer.close()
        if export is not None:
            export.export()
    summary = result.summary()
    status = 1 if export is not None and export.failed else 0
    if args.json:
        print(json.dumps(summary, ensure_ascii=False))
        return status
    print(f"video:       {summary['video']}")
    print(f"subtitles:   {summary['subtitles']}")
    print(f"storyboard:  {summary['storyboard']}")
    print(f"episode:     {summary['duration_seconds']:.2f} s")
    print(f"actions:     {summary['actions_run']} run, {summary['actions_cached']} cached")
    print(f"usage:       {summary['cpu_seconds']:.1f} CPU-s, {summary['gpu_seconds']:.1f} GPU-s, "
          f"{summary['tokens_in']} tokens in, {summary['tokens_out']} tokens out")
    print(f"cache saved: {summary['saved']['cpu_seconds']:.1f} CPU-s, {summary['saved']['gpu_seconds']:.1f} GPU-s")
    print(f"wall time:   {summary['wall_seconds']:.1f} s")
    return status


def cmd_report(args) -> int:
    from farm.observe.report import write_report

    print(write_report(args.target, settings_from_args(args), Path(args.out) if args.out else None))
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
    from farm.bench.episode import bench_episode

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
    r.add_argument("--pushgateway", metavar="URL", help="push the render's metrics to this Prometheus Pushgateway "
                   "(job farm-render, instance this host; counters add up across renders)")
    r.add_argument("--metrics-textfile", metavar="PATH", help="write the render's metrics to this file for "
                   "node_exporter's textfile collector (name it *.prom; counters add up across renders)")
    r.set_defaults(func=cmd_render)

    rp = sub.add_parser("report", help="write a self-contained HTML report of a batch or an episode")
    rp.add_argument("target", help="a batch id (read from the store's journal) or an episode YAML file")
    rp.add_argument("--out", help="the HTML file to write (default: ./<target>.report.html)")
    rp.add_argument("--store", help="artifact store: a directory or s3://bucket/prefix (env FARM_STORE)")
    rp.add_argument("--studio", help="for an episode: the studio whose store prefix to read (env FARM_STUDIO)")
    rp.set_defaults(func=cmd_report)

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
    bc.set_defaults(func=lambda a: _print_report(_bench_batch().bench_controller(a.episodes), a))
    bd = bsub.add_parser("dispatch", help="no-op actions through the controller vs bare Ray, on a local Ray")
    bd.add_argument("--episodes", type=int, default=10)
    bd.add_argument("--gpus", type=int, default=4, help="GPUs to declare to the local Ray")
    bd.add_argument("--dispatch-ahead", type=int, default=None,
                    help="the controller's FARM_DISPATCH_AHEAD for this run (default: the setting's default)")
    bd.add_argument("--json", action="store_true")
    bd.set_defaults(func=lambda a: _print_report(
        _bench_batch().bench_dispatch(a.episodes, a.gpus, dispatch_ahead=a.dispatch_ahead), a))

    from farm.cli import batch as cli_batch
    from farm.cli import simulate as cli_simulate

    bk = bsub.add_parser("backends", help="diffusers image and video backends: shots per minute, batching off vs on")
    bk.add_argument("--image-model", help="a diffusers text-to-image pipeline folder (default: a tiny random one)")
    bk.add_argument("--video-model", help="a diffusers image-to-video pipeline folder (default: a tiny random one)")
    bk.add_argument("--shots", type=int, default=8)
    bk.add_argument("--batch", type=int, default=4, help="shots per pipeline call with batching on")
    bk.add_argument("--width", type=int, default=576)
    bk.add_argument("--height", type=int, default=1024)
    bk.add_argument("--steps", type=int, default=20)
    bk.add_argument("--json", action="store_true")
    bk.set_defaults(func=lambda a: _print_report(_bench_backends().bench_backends(
        a.image_model, a.video_model, a.shots, a.batch, a.width, a.height, a.steps), a))
    cli_batch.add_parsers(sub, common)
    cli_backends.add_parser(sub, common, settings_from_args)
    cli_models.add_parser(sub, common, settings_from_args)
    cli_simulate.add_parser(sub)  # farm simulate [--bench]
    return p


def _bench_batch():
    from farm.bench import batch

    return batch


def _bench_backends():
    from farm.bench import backends

    return backends


def _level(args) -> str:
    return ["WARNING", "INFO", "DEBUG"][min(args.verbose, 2)]


def main(argv: list[str] | None = None) -> int:
    """Run the ``farm`` command. Exit codes: 0 ok; 1 the work failed (or a bug: the traceback is
    printed); 2 the user's mistake (a spec, an option, a setting, a missing program)."""
    args = build_parser().parse_args(argv)
    logs.configure(level=_level(args))
    try:
        return args.func(args)
    except SpecError as exc:
        print(exc, file=sys.stderr)
        return 2
    except (UsageError, ToolMissing, ConfigError) as exc:
        print(logs.mask(f"farm: {exc}"), file=sys.stderr)
        return 2
    except FarmError as exc:  # may quote a store's or a worker's error: never its credentials
        print(logs.mask(f"farm: failed: {exc}"), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception:  # a bug: keep the whole story
        print(logs.mask(f"farm: internal error (a bug; please report it):\n{traceback.format_exc()}"), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
