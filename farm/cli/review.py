"""``farm review``: what the judges said of every take, and a person's verdict on a shot.

farm review EPISODE.yaml | BATCH_ID [--json]          every shot with its takes, scores, verdicts, evidence
farm review reject EPISODE.yaml SHOT_ID --reason TEXT  the next render makes the shot's next take
farm review approve EPISODE.yaml SHOT_ID [--reason T]  the shot's flagged takes are good: its episode publishes
farm review reject|approve BATCH_ID SHOT_ID --episode SERIES/EPNNN --reason TEXT   (through the controller)

A review of an episode file is kept in the studio's store, where every later render and batch of the
episode reads it. A review of a batch goes to its controller, which journals it (a running episode is
planned again at once) and keeps it in the store the same way.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from farm.cli.common import add_common
from farm.errors import UsageError

VERBS = ("reject", "approve")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "review",
        help="list each shot's takes and what the judges said; approve or reject a shot",
        description="farm review TARGET | farm review reject TARGET SHOT --reason TEXT | "
        "farm review approve TARGET SHOT (TARGET: an episode YAML file or a batch id)",
    )
    p.add_argument(
        "words",
        nargs="+",
        metavar="[reject|approve] TARGET [SHOT]",
        help="an episode YAML file or a batch id to list; or reject|approve, the target and a shot id",
    )
    p.add_argument("--reason", default="", help="why (kept with the review; required to reject)")
    p.add_argument("--episode", help="which episode of a batch (SERIES/EPNNN), when reviewing a batch's shot")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--token", help="your credential for the controller (env FARM_TOKEN), for a batch")
    add_common(p)
    p.set_defaults(func=cmd_review)


def _is_episode(target: str) -> bool:
    return target.endswith((".yaml", ".yml")) or Path(target).is_file()


def cmd_review(args: argparse.Namespace) -> int:
    from farm.cli.batch import _settings

    words = list(args.words)
    settings = _settings(args)
    if words[0] in VERBS:
        if len(words) != 3:
            raise UsageError(f"farm review {words[0]} needs a TARGET (episode file or batch id) and a SHOT id")
        verb, target, shot = words
        if verb == "reject" and not args.reason.strip():
            raise UsageError("farm review reject needs --reason TEXT: say what is wrong with the shot")
        recorded = (
            _record_episode(settings, target, shot, verb, args)
            if _is_episode(target)
            else _record_batch(settings, target, shot, verb, args)
        )
        if args.json:
            print(json.dumps(recorded))
        else:
            for r in recorded:
                print(f"{r['verdict']}ed {r['episode']} shot {r['shot']} (take {r['key'][:12]})")
            print("the next render (or the batch, while it runs) acts on it")
        return 0
    if len(words) != 1:
        raise UsageError(f"farm review takes one TARGET, or reject|approve TARGET SHOT (got {' '.join(words)!r})")
    from farm.observe import review

    target = words[0]
    views = [review.of_episode(settings, Path(target))] if _is_episode(target) else review.of_batch(settings, target)
    if args.json:
        print(json.dumps({"episodes": [v.to_json() for v in views]}))
    else:
        print("\n".join(_format(v) for v in views))
    return 0


def _record_episode(settings: Any, target: str, shot: str, verb: str, args: argparse.Namespace) -> list[dict]:
    from farm.observe import review
    from farm.store import open_objects
    from farm.store.reviews import add_review

    view = review.of_episode(settings, Path(target))
    made = review.reviews_for(view, shot, verb == "approve", args.reason.strip()[:2000], time.time())
    objects = open_objects(settings.store_spec())
    for item in made:
        add_review(objects, settings.studio, view.episode.split("/")[0], item)
    return [r.model_dump(mode="json") for r in made]


def _record_batch(settings: Any, target: str, shot: str, verb: str, args: argparse.Namespace) -> list[dict]:
    from farm.cli.batch import _join, controller
    from farm.runtime.cluster import call, credential

    if not args.episode:
        raise UsageError("a batch's shot needs --episode SERIES/EPNNN (which episode of the batch)")
    _join(settings)
    return call(
        controller(settings),
        "review",
        target,
        args.episode,
        shot,
        verb,
        args.reason.strip(),
        token=credential(settings),
    )


def _format(view: Any) -> str:
    held = " — HELD FOR REVIEW" if any(s.flagged for s in view.shots) else ""
    lines = [f"{view.episode}  [{view.status}]  from {view.source}{held}"]
    if view.reason:
        lines.append(f"  reason: {view.reason}")
    for shot in view.shots:
        lines.append(f"  shot {shot.shot}{'  FLAGGED' if shot.flagged else ''}")
        for judged in shot.judged:
            for t in judged.takes:
                mark = {"pass": "pass", "fail": "FAIL", None: "…"}[t.verdict]
                score = "" if t.score is None else f" {t.score:.2f}"
                used = "  <- used" if t.used else ""
                said = f"  [{t.review} by a person: {t.reason}]" if t.review else ""
                lines.append(f"    {judged.label:<22} take {t.take}  {mark}{score}{used}{said}")
                for c in t.checks:
                    if not c.get("passed"):
                        lines.append(f"        {c.get('judge')}: {c.get('name')}: {c.get('detail') or c.get('value')}")
                for name, path in t.evidence.items():
                    if not name.endswith(" verdict"):
                        lines.append(f"        evidence ({name}): {path}")
            if judged.flagged:
                lines.append(f"    ! {judged.flagged}")
    failed = [c for c in view.delivery if not c.get("passed")]
    if view.delivery:
        lines.append(f"  delivery checks: {len(view.delivery) - len(failed)} of {len(view.delivery)} passed")
        lines += [f"    FAIL {c.get('name')}: {c.get('detail') or c.get('value')}" for c in failed]
    return "\n".join(lines)
