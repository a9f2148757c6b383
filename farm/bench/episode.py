"""``farm bench episode``: what caching and assembly cost, measured against baselines in the same run.

1. A shipped example rendered cold (fresh store) and then warm (same store): the warm render should
   run zero actions, so its wall time is the planner's and the store's overhead.
2. The assembly action's own time (concat by stream copy + two-pass loudness + AAC + subtitles +
   storyboard), against a bare ``ffmpeg -f concat -c copy`` of the same shot files: what the
   deliverable-quality steps add over the cheapest possible join.
3. What judging adds: the same cold render with no judges, as studios of their own (a fresh cache
   each) before and after the judged one (their mean is the baseline, so neither gets the other's warm
   workers for free).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from farm.loader import load_episode, write_examples
from farm.service.local import RenderResult, render_episode
from farm.settings import Settings, preflight
from farm.store import ArtifactStore, open_objects
from workers.api import run_tool


def _bare_concat(render: RenderResult, settings: Settings, workdir: Path) -> float:
    store = ArtifactStore(open_objects(settings.store_spec()), settings.studio)
    shots = sorted((m for m in render.ran + render.cached if m.op == "mux"), key=lambda m: m.label)
    paths = []
    for i, manifest in enumerate(shots):
        paths.append(store.get_blob(manifest.outputs["shot"], workdir / f"shot{i:03d}.mov"))
    listing = workdir / "concat.txt"
    listing.write_text("".join(f"file '{p.name}'\n" for p in paths))
    started = time.perf_counter()
    run_tool(
        [
            "ffmpeg",
            "-v",
            "error",
            "-y",
            "-f",
            "concat",
            "-safe",
            "0",
            "-i",
            str(listing),
            "-c",
            "copy",
            str(workdir / "bare.mov"),
        ],
        what="bare concat",
    )
    return time.perf_counter() - started


def bench_episode(settings: Settings, example: str = "midnight-tea/ep001.yaml", workdir: Path | None = None) -> dict:
    from farm.runtime.ray_runtime import RayRuntime

    tmp = None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="farm-bench-")
        workdir = Path(tmp.name)
    workdir.mkdir(parents=True, exist_ok=True)
    write_examples(workdir / "examples")
    episode = workdir / "examples" / example
    settings = settings.model_copy(update={"store": str(workdir / "store")})
    loaded = load_episode(episode)
    preflight(settings, [loaded])
    runtime = RayRuntime(
        settings.store_spec(),
        settings.ray_address,
        settings.num_cpus,
        catalog=settings.catalog(),
        cpu_ahead=settings.dispatch_ahead,
    )
    unjudged = settings.model_copy(update={"judges": {}})
    try:
        # (studios of their own: a store prefix and a cache each, on the same workers)
        before = render_episode(loaded, unjudged.model_copy(update={"studio": "bench-unjudged-1"}), runtime)
        cold_result = render_episode(loaded, settings, runtime)
        after = render_episode(loaded, unjudged.model_copy(update={"studio": "bench-unjudged-2"}), runtime)
        warm_result = render_episode(loaded, settings, runtime)
    finally:
        runtime.shutdown()
    bare_cold = (before.wall_seconds + after.wall_seconds) / 2
    judges = [m for m in cold_result.ran if m.stage == "judge"]
    assembly = next(m for m in cold_result.ran if m.op == "episode").seconds
    bare = _bare_concat(cold_result, settings, workdir)
    series = loaded.series
    report = {
        "example": example,
        "video_seconds": cold_result.duration_seconds,
        "resolution": f"{series.resolution.width}x{series.resolution.height}@{series.fps}",
        "cold_seconds": round(cold_result.wall_seconds, 2),
        "cold_actions_run": len(cold_result.ran),
        "warm_seconds": round(warm_result.wall_seconds, 3),
        "warm_actions_run": len(warm_result.ran),
        "warm_actions_cached": len(warm_result.cached),
        "cold_over_warm": round(cold_result.wall_seconds / max(warm_result.wall_seconds, 1e-6), 1),
        "assembly_seconds": round(assembly, 2),
        "bare_concat_seconds": round(bare, 3),
        "assembly_over_bare_concat": round(assembly / max(bare, 1e-6), 1),
        "cpu_seconds": cold_result.summary()["cpu_seconds"],
        "unjudged_cold_seconds": [round(before.wall_seconds, 2), round(after.wall_seconds, 2)],
        "judge_actions": len(judges),
        "judge_cpu_seconds": round(sum(m.usage.cpu_seconds for m in judges), 2),
        "judged_over_unjudged": round(cold_result.wall_seconds / max(bare_cold, 1e-6), 2),
        "retakes": sum(len(t["takes"]) - 1 for t in cold_result.takes),
        "flagged": len(cold_result.flagged),
    }
    report["text"] = "\n".join(
        [
            f"farm bench episode: {example} ({report['video_seconds']:.1f} s of video at {report['resolution']})",
            f"  cold render  {report['cold_seconds']:8.2f} s  ({report['cold_actions_run']} actions run, "
            f"{report['cpu_seconds']:.0f} CPU-s)",
            f"  warm render  {report['warm_seconds']:8.3f} s  ({report['warm_actions_run']} run, "
            f"{report['warm_actions_cached']} cached)  cold/warm = {report['cold_over_warm']}x",
            f"  assembly     {report['assembly_seconds']:8.2f} s  vs bare `ffmpeg -f concat -c copy` of the same shots "
            f"{report['bare_concat_seconds']:.3f} s  = {report['assembly_over_bare_concat']}x",
            f"  judging      cold render {report['cold_seconds']:.2f} s with {report['judge_actions']} judge actions "
            f"({report['judge_cpu_seconds']:.1f} CPU-s, {report['retakes']} retakes, {report['flagged']} flagged) vs "
            f"{bare_cold:.2f} s without judges = {report['judged_over_unjudged']}x",
        ]
    )
    if tmp is not None:
        tmp.cleanup()
    return report
