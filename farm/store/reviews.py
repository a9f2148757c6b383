"""People's verdicts on takes, kept in the studio's tree: ``<studio>/reviews/<series>/<episode>.json``.

``farm review reject|approve`` adds one; every later render or batch of the episode reads them (the
batch controller journals a review of a running batch too, ``review.recorded``). A review names the
take it judged by its action key, so it holds for exactly that take: a new take of the shot is judged
afresh. The newest review of a take wins.
"""

from __future__ import annotations

import json

from pydantic import ValidationError

from farm.core.events import MAX_REVIEWS, ReviewData
from farm.errors import FarmError
from farm.store.base import ObjectStore, check_name


def reviews_name(studio: str, series: str, episode: str) -> str:
    return check_name(f"{studio}/reviews/{series}/{episode}.json")


def load_reviews(objects: ObjectStore, studio: str, series: str, episode: str) -> list[ReviewData]:
    """The reviews of one episode, oldest first (the newest of each take last). Unreadable: an error
    naming the object, never an empty list (a lost reject would re-deliver a take a person refused)."""
    name = reviews_name(studio, series, episode)
    raw = objects.get_bytes(name)
    if raw is None:
        return []
    try:
        items = json.loads(raw)
        return [ReviewData.model_validate(item) for item in items][-MAX_REVIEWS:]
    except (ValueError, TypeError, ValidationError) as exc:
        raise FarmError(
            f"the reviews {objects.describe()}/{name} are unreadable ({exc}); fix or remove the file"
        ) from exc


def add_review(objects: ObjectStore, studio: str, series: str, review: ReviewData) -> list[ReviewData]:
    """Keep ``review`` (one writer per episode: the person reviewing); return every review of the episode."""
    episode = review.episode.rpartition("/")[2]
    reviews = [r for r in load_reviews(objects, studio, series, episode) if r.key != review.key] + [review]
    body = json.dumps([r.model_dump(mode="json") for r in reviews[-MAX_REVIEWS:]], indent=1).encode()
    objects.put_bytes(reviews_name(studio, series, episode), body)
    return reviews
