"""``farm validate``, ``farm render``, ``farm report``, ``farm examples``: one episode at a time.

farm validate FILE...             check series/episode specs without rendering
farm render EPISODE.yaml          render one episode (local Ray and ./farm-store by default)
farm report BATCH_OR_EPISODE      one self-contained HTML report: Gantt of worker lanes, spend, failures
farm examples DIR                 write the shipped example series and episodes to DIR
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

from farm.cli.common import add_common, level, settings_from_args
from farm.loader import field_line, load_episode, validate_files, write_examples
from farm.settings import Settings, preflight


def cmd_validate(args) -> int:
    problems = validate_files(args.files)
    if args.json:
        found = [{"file": p.file, "line": p.line, "field": p.field, "message": p.message} for p in problems]
        print(json.dumps({"files": len(args.files), "problems": found}, ensure_ascii=False))
        return 2 if problems else 0
    for p in problems:
        print(p, file=sys.stderr)
    if not problems:
        print(f"ok: {len(args.files)} file(s) valid")
    return 2 if problems else 0


class ProgressPrinter:
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
        """End the progress display (the line stays); closing again does nothing."""
        if self.tty and self.text:
            self.stream.write("\n")
        elif self.text != self.printed:
            self._print()
        self.text = self.printed = ""


def render_one(
    episode: Path,
    settings: Settings,
    out: Path | None = None,
    on_progress=None,
    log_level: str = "WARNING",
    metrics=None,
    stop=None,
):
    """Render one episode as a batch of one on a (local) Ray (farm.service.local); ``metrics`` (a
    farm.observe.metrics.Metrics) accounts every journaled event, whether the render succeeds or not;
    ``stop()`` true interrupts it (farm.service.local.Interrupted)."""
    from farm.runtime.ray_runtime import RayRuntime
    from farm.service.local import render_episode

    loaded = load_episode(episode)
    spec = settings.store_spec()  # a bad store setting fails here, before Ray starts
    preflight(settings, [loaded], line_of=field_line)
    runtime = RayRuntime(
        spec,
        settings.ray_address,
        settings.num_cpus,
        log_level,
        catalog=settings.catalog(),
        cpu_ahead=settings.dispatch_ahead,
    )
    try:
        return render_episode(
            loaded, settings, runtime, out_dir=out, on_progress=on_progress, metrics=metrics, stop=stop
        )
    finally:
        runtime.shutdown()


def _command_seconds() -> float:
    """How long this command has run, from its process's start (imports and Ray's start included)."""
    try:
        with open("/proc/self/stat") as f:
            started_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return max(0.0, uptime - started_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return time.monotonic() - _IMPORTED


_IMPORTED = time.monotonic()


class _CtrlC:
    """Ctrl-C during a render: the first asks the render to stop between steps (it cancels what runs,
    keeps what finished and says so); a second one stops at once."""

    def __init__(self):
        self.asked = threading.Event()

    def __call__(self, signum, frame) -> None:
        if self.asked.is_set():
            raise KeyboardInterrupt
        self.asked.set()

    def __enter__(self):
        self.previous = signal.signal(signal.SIGINT, self)
        return self

    def __exit__(self, *exc) -> None:
        signal.signal(signal.SIGINT, self.previous)


class _MetricsExport:
    """``farm render --pushgateway URL / --metrics-textfile PATH``: the render's metrics, accounted per
    journaled event in a fresh registry, exported after it; a failed export is reported, never hidden."""

    def __init__(self, settings: Settings, pushgateway: str | None, textfile: str | None):
        from farm.observe.metrics import Metrics, accelerator_label
        from farm.policy import Prices
        from farm.settings import profiles_for

        self.pushgateway, self.textfile, self.failed = pushgateway, textfile, False
        self.metrics = Metrics(
            prices=Prices(**settings.prices),
            controller=False,
            accelerators={k: accelerator_label(p) for k, p in profiles_for(settings).items()},
        )

    def export(self) -> None:
        for what, target, export in (
            ("Pushgateway", self.pushgateway, self.metrics.push),
            ("textfile", self.textfile, self.metrics.write_textfile),
        ):
            if target:
                try:
                    export(target)
                except (OSError, ValueError) as exc:
                    self.failed = True
                    print(f"farm: could not export metrics to the {what} {target}: {exc}", file=sys.stderr)


def cmd_render(args) -> int:
    settings = settings_from_args(args)
    printer = ProgressPrinter()
    export = (
        _MetricsExport(settings, args.pushgateway, args.metrics_textfile)
        if args.pushgateway or args.metrics_textfile
        else None
    )
    from farm.service.local import Interrupted

    try:
        with _CtrlC() as ctrl_c:
            result = render_one(
                Path(args.episode),
                settings,
                Path(args.out) if args.out else None,
                None if args.quiet else printer,
                level(args),
                metrics=export.metrics if export is not None else None,
                stop=ctrl_c.asked.is_set,
            )
    except Interrupted as exc:
        printer.close()
        print(f"farm: {exc}", file=sys.stderr)
        return 130
    finally:
        printer.close()
        if export is not None:
            export.export()
    summary = result.summary() | {"wall_seconds": round(_command_seconds(), 3)}
    status = 1 if export is not None and export.failed else 0
    if args.json:
        print(json.dumps(summary, ensure_ascii=False))
        return status
    print(f"video:       {summary['video']}")
    print(f"subtitles:   {summary['subtitles']}")
    print(f"storyboard:  {summary['storyboard']}")
    print(f"episode:     {summary['duration_seconds']:.2f} s")
    print(f"actions:     {summary['actions_run']} run, {summary['actions_cached']} cached")
    print(
        f"usage:       {summary['cpu_seconds']:.1f} CPU-s, {summary['gpu_seconds']:.1f} GPU-s, "
        f"{summary['tokens_in']} tokens in, {summary['tokens_out']} tokens out"
    )
    print(f"cache saved: {summary['saved']['cpu_seconds']:.1f} CPU-s, {summary['saved']['gpu_seconds']:.1f} GPU-s")
    print(f"wall time:   {summary['wall_seconds']:.1f} s")
    return status


def cmd_report(args) -> int:
    from farm.observe.report import write_report

    settings = settings_from_args(args)
    is_batch = not (args.target.endswith((".yaml", ".yml")) or Path(args.target).is_file())
    if is_batch and not args.store and not os.environ.get("FARM_STORE"):
        store = _controller_store(settings)  # the batch is in the controller's store, wherever we are
        if store is not None:
            settings = settings.model_copy(update={"store": store})
    print(write_report(args.target, settings, Path(args.out) if args.out else None))
    return 0


def _controller_store(settings: Settings) -> str | None:
    """The store of the controller this command would talk to (``farm batch``'s), or None when no
    controller is given, started here or running."""
    from farm.cli.batch import controller
    from farm.errors import FarmError
    from farm.runtime.cluster import call, connect, resolve

    if resolve(settings) is None:
        return None
    try:
        connect(settings)
        store = str(call(controller(settings), "ping")["store"])
    except FarmError:
        return None
    print(f"farm: the controller's store: {store}", file=sys.stderr)
    return store


def cmd_examples(args) -> int:
    written, kept = write_examples(Path(args.dir), force=args.force)
    for path in written:
        print(path)
    for path in kept:
        print(f"kept {path}: it differs from the shipped example; --force overwrites it", file=sys.stderr)
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    v = sub.add_parser("validate", help="check specs without rendering")
    v.add_argument("files", nargs="+", help="series, episode or batch YAML files")
    v.add_argument(
        "--json",
        action="store_true",
        help='print {"files": N, "problems": [{"file", "line", "field", "message"}, ...]} on stdout',
    )
    v.set_defaults(func=cmd_validate)

    r = sub.add_parser("render", help="render one episode")
    r.add_argument("episode", help="the episode YAML file (its series file is found from it)")
    add_common(r)
    r.add_argument("--out", help="where to put the deliverables of an S3 store locally (default ./farm-out)")
    r.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    r.add_argument("--quiet", action="store_true", help="no progress display")
    r.add_argument(
        "--pushgateway",
        metavar="URL",
        help="push the render's metrics to this Prometheus Pushgateway "
        "(job farm-render, instance this host; counters add up across renders)",
    )
    r.add_argument(
        "--metrics-textfile",
        metavar="PATH",
        help="write the render's metrics to this file for "
        "node_exporter's textfile collector (name it *.prom; counters add up across renders)",
    )
    r.set_defaults(func=cmd_render)

    rp = sub.add_parser("report", help="write a self-contained HTML report of a batch or an episode")
    rp.add_argument("target", help="a batch id (read from the store's journal) or an episode YAML file")
    rp.add_argument(
        "--out",
        help="the HTML file to write (default: ./<batch-id>.report.html, or ./<series>-<episode>.report.html)",
    )
    rp.add_argument(
        "--store",
        help="artifact store: a directory or s3://bucket/prefix (env FARM_STORE); for a batch, by default "
        "the running controller's",
    )
    rp.add_argument("--studio", help="for an episode: the studio whose store prefix to read (env FARM_STUDIO)")
    rp.add_argument("--address", help="for a batch: the Ray cluster of the controller to ask for its store")
    rp.set_defaults(func=cmd_report)

    e = sub.add_parser("examples", help="write the shipped example series and episodes (those missing)")
    e.add_argument("dir", help="the folder to write them to, one subfolder per series")
    e.add_argument(
        "--force", action="store_true", help="also overwrite example files that differ from the shipped ones"
    )
    e.set_defaults(func=cmd_examples)
