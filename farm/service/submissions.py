"""What a batch submission is: the payload ``farm batch submit`` sends (``batch_payload``), checked as the
controller accepts it from any Ray client (``check_payload``), and made into the ``Submission`` the
controller journals (``submission``): each episode's backends, judges and reviews chosen, every spec
checked again. ``batch_id`` names a new batch.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from farm.catalog import Catalog
from farm.core.events import ReviewData, Submission
from farm.core.script import Slug
from farm.core.spec import BackendNames, BudgetSpec, Episode, Judges, Series, Takes, Webhook, check_episode
from farm.errors import UsageError
from farm.service.webhooks import check_secret_env
from farm.settings import Settings


def batch_payload(loaded_batch: Any, settings: Settings) -> dict[str, Any]:
    """What ``farm batch submit`` sends: the validated specs as values (the controller reads no user files)."""
    spec = loaded_batch.spec
    return {
        "studio": spec.studio,
        "name": spec.name,
        "priority": spec.priority,
        "namespace": spec.studio if settings.cache_namespace is None else settings.cache_namespace,
        "deadline": spec.deadline.timestamp() if spec.deadline else None,
        "budget": spec.budget.model_dump(),
        "webhook": spec.webhook.model_dump() if spec.webhook else None,
        "backends": dict(spec.backends),
        "judges": {op: [j.model_dump() for j in js] for op, js in spec.judges.items()},
        "takes": spec.takes.model_dump() if spec.takes else None,
        "strict": spec.strict,
        "episodes": [
            {"series": e.series.model_dump(mode="json"), "episode": e.episode.model_dump(mode="json")}
            for e in loaded_batch.episodes
        ],
    }


class _PayloadEpisode(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    series: Series
    episode: Episode


class _Payload(BaseModel):
    """What ``batch_payload`` sends, as the controller accepts it from any Ray client: ``studio`` and
    ``namespace`` are slugs (no '/', no leading '_': ``_farm`` is the farm's own tree in the store)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    studio: Slug
    namespace: Slug
    name: Annotated[str, StringConstraints(min_length=1, max_length=120)] | None = None
    priority: Literal["low", "normal", "high", "urgent"] = "normal"
    deadline: float | None = None
    budget: BudgetSpec = BudgetSpec()
    webhook: Webhook | None = None
    backends: BackendNames = Field(default_factory=dict)
    judges: Judges = Field(default_factory=dict)
    takes: Takes | None = None
    strict: bool = False
    episodes: list[_PayloadEpisode] = Field(min_length=1)


def check_payload(payload: Any) -> None:
    """Raise UsageError naming each field of a raw batch payload that is not valid (checked before
    anything reads it: its studio and namespace become store paths and batch ids)."""
    if not isinstance(payload, dict):
        raise UsageError(f"the batch is not valid: the payload is a {type(payload).__name__}, not a mapping")
    try:
        _Payload.model_validate(payload)
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False, include_input=False):
            field = ".".join(str(part) for part in err["loc"]) or "payload"
            if err["loc"] and err["loc"][0] in ("studio", "namespace") and err["type"] == "string_pattern_mismatch":
                message = "must be a slug: lowercase letters, digits, '-' and '_', not starting with '_' (e.g. acme)"
            else:
                message = err["msg"]
            problems.append(f"{field}: {message}")
        raise UsageError("the batch is not valid: " + "; ".join(problems)) from None


def submission(
    payload: dict[str, Any],
    settings: Settings,
    catalog: Catalog,
    reviews: Callable[[str, str, str], list[ReviewData]] = lambda studio, series, episode: [],
) -> Submission:
    """A batch payload as the controller journals it: each episode's backends and judges chosen (the
    batch's choice, else its series', else settings'), its reviews (``reviews(studio, series,
    episode)``, from the store) and every spec checked again, since any Ray client may send one.
    Raises UsageError naming each problem."""
    check_payload(payload)
    terms = _Payload.model_validate(payload)
    judged = [
        f"{where}: {field}: {message}"
        for where, judges in [("batch", terms.judges)] + [(e.series.id, e.series.judges) for e in terms.episodes]
        for field, message in catalog.judge_problems(judges)
    ]
    if judged:
        raise UsageError("the batch is not valid: " + "; ".join(judged))
    namespace = settings.cache_namespaces.get(payload["studio"], payload["studio"])
    if payload["namespace"] != namespace:  # which cache a studio reads is the farm's to say, not a client's
        raise UsageError(
            f"the batch is not valid: namespace: studio {payload['studio']!r} uses the cache namespace "
            f"{namespace!r} (set on the controller: FARM_CACHE_NAMESPACES), not {payload['namespace']!r}: "
            "unset FARM_CACHE_NAMESPACE where you submit"
        )
    check_secret_env(payload["studio"], payload.get("webhook"), settings.webhook_secrets)
    try:
        episodes = []
        for item in payload["episodes"]:
            chosen = catalog.choose_for(
                settings.backend_names(), item["series"].get("backends"), payload.get("backends")
            )
            series = Series.model_validate(item["series"])
            slug = Episode.model_validate(item["episode"]).slug
            episodes.append(
                dict(
                    item,
                    backends={stage: c.to_json() for stage, c in chosen.items()},
                    judging=settings.judging(catalog, series, terms),
                    reviews=reviews(payload["studio"], series.id, slug),
                )
            )
        defaults = {s: c.to_json() for s, c in catalog.choose(settings.backend_names()).items()}
        terms_only = {k: v for k, v in payload.items() if k not in ("judges", "takes", "strict")}  # in each episode's
        sub = Submission.model_validate(dict(terms_only, episodes=episodes, backends=defaults))
    except ValidationError as exc:
        raise UsageError(f"the batch is not valid: {exc}") from exc
    except (KeyError, TypeError, AttributeError) as exc:
        raise UsageError(f"the batch is not valid: it has no {exc}") from exc
    problems = [
        f"{e.series.id}/{e.episode.slug}: {field}: {message}"
        for e in sub.episodes
        for field, message in check_episode(e.series, e.episode)
    ]
    if problems:
        raise UsageError("the batch is not valid: " + "; ".join(problems))
    return sub


def batch_id(studio: str, payload: Any, now: float, taken: Any) -> str:
    """``<studio>-<UTC time>-<digest of the payload>``, unique among ``taken``."""
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:8]
    stamp = datetime.fromtimestamp(now, timezone.utc).strftime("%Y%m%d-%H%M%S")
    base = candidate = f"{studio}-{stamp}-{digest}"
    n = 1
    while candidate in taken:
        n += 1
        candidate = f"{base}-{n}"
    return candidate
