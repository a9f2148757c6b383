"""Each backend's measured yield, kept in the store so that a new render or controller starts from it.

``_farm/yields.json``: ``{"<backend>/<op>": [passed, judged]}``. A host loads it into its controller
(``farm.core.yields.Yields.load``) and adds what its controller counted since (``add_yields``), a
read-modify-write: two hosts saving at the same moment may lose one's count, which only delays what
the estimates learn (a yield is a statistic, not an account).
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from farm.store.base import ObjectStore

YIELDS = "_farm/yields.json"

Counts = dict[tuple[str, str], tuple[int, int]]


def load_yields(objects: ObjectStore) -> Counts:
    """What the store kept ({} when nothing, or when the file cannot be read: a statistic, not a record)."""
    try:
        raw = objects.get_bytes(YIELDS)
        data = json.loads(raw) if raw else {}
        out: Counts = {}
        for name, (passed, judged) in dict(data).items():
            backend, _, op = str(name).rpartition("/")
            if backend and 0 <= int(passed) <= int(judged):
                out[(backend, op)] = (int(passed), int(judged))
        return out
    except (ValueError, TypeError):
        return {}


def add_yields(objects: ObjectStore, counted: Mapping[tuple[str, str], tuple[int, int]]) -> Counts:
    """Add ``counted`` to what the store keeps; return the sum."""
    table = load_yields(objects)
    for key, (passed, judged) in counted.items():
        p, n = table.get(key, (0, 0))
        table[key] = (p + passed, n + judged)
    body = {f"{b}/{op}": [p, n] for (b, op), (p, n) in sorted(table.items())}
    objects.put_bytes(YIELDS, json.dumps(body, indent=1).encode(), durable=False)
    return table
