"""Who calls the controller: studio credentials and the admin credential.

Every controller call carries a token. A studio's token is issued by an admin (``farm studio add
NAME``), shown once, and kept in the store only as its SHA-256 (``_farm/studios/<name>.json``: under
the farm's own tree, which no studio path can reach, since a studio is a slug that never starts with
'_'). The admin's token is the controller's setting FARM_ADMIN_TOKEN (``farm controller start`` makes
one in the state dir of the machine that started it; on a cluster it comes from a Secret).

A token resolves to a ``Caller``: a studio, which submits, sees and acts on its own batches only, or the
admin, which does everything (and is the only one to manage studios and stop the controller). Tokens are
random (256 bits), so one SHA-256 is as good as a slow hash; they are compared in constant time and
never logged. Revoking writes a tombstone (the store keeps no delete), so the name stays known.

A controller built with no admin token (in one process: tests, ``farm render``) has no door to guard:
a call without a token is the admin's. ``farm.runtime.cluster.controller_actor`` never starts one so.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import time
from dataclasses import dataclass

from farm.errors import UsageError
from farm.observe import logs

PREFIX = "_farm/studios/"
TOKEN_PREFIX = "farm_"
_MASK = "**********"  # how pydantic dumps a SecretStr
_SLUG = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")  # a studio name, as farm.core.script.Slug


class NotAllowed(UsageError):
    """A call without a valid token, or one its caller may not make (said in one line, with the fix)."""


@dataclass(frozen=True)
class Caller:
    """Who a call comes from: a studio, or the admin (``studio`` None)."""

    studio: str | None

    @property
    def admin(self) -> bool:
        return self.studio is None

    def sees(self, studio: str) -> bool:
        """Whether this caller may see and act on a batch of ``studio``."""
        return self.studio is None or self.studio == studio

    def require_admin(self, what: str) -> None:
        if not self.admin:
            raise NotAllowed(
                f"{what} needs the admin credential (FARM_ADMIN_TOKEN), not studio {self.studio!r}'s token"
            )


ADMIN = Caller(None)


def check_idempotency_key(key: object) -> None:
    """Raise UsageError unless ``key`` is 1 to 200 printable ASCII characters without spaces."""
    if not isinstance(key, str) or not 0 < len(key) <= 200 or not all("!" <= c <= "~" for c in key):
        raise UsageError(
            "--idempotency-key must be 1 to 200 printable characters without spaces "
            "(e.g. nightly-20261201-0200: the batch file and its scheduled time)"
        )


def digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    """A fresh credential: 256 random bits, URL-safe."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


class Tenants:
    """The studios' credentials in the store, and the admin's, resolving a token to its ``Caller``.
    The controller is the only writer of ``_farm/studios/``; it reads them once, then keeps them."""

    def __init__(self, objects, admin_token: str):
        self.objects = objects
        if admin_token == _MASK:  # settings dumped for a process in this one (farm bench): the secret stayed
            admin_token = ""  # behind, and the mask must never become a credential
        self._admin = digest(admin_token) if admin_token else None
        self._records: dict[str, dict] | None = None
        logs.hide(admin_token)

    @property
    def guarded(self) -> bool:
        """Whether calls need a token (an admin token is configured)."""
        return self._admin is not None

    def _load(self) -> dict[str, dict]:
        if self._records is None:
            records = {}
            for name in self.objects.list(PREFIX):
                data = self.objects.get_bytes(name)
                try:
                    record = json.loads(data or b"")
                except ValueError:
                    continue  # not a record (a stray file): it names no studio
                if isinstance(record, dict) and isinstance(record.get("studio"), str):
                    records[record["studio"]] = record
            self._records = records
        return self._records

    def resolve(self, token: str | None) -> Caller:
        """The caller a token names. Raises NotAllowed for a missing or unknown (or revoked) token."""
        if not self.guarded:
            if token:  # a token given to an unguarded controller still names its studio
                found = self._match(digest(token))
                if found is not None:
                    return Caller(found)
            return ADMIN
        if not token:
            raise NotAllowed(
                "the controller needs a token: set FARM_TOKEN (or --token) to your studio's token "
                "(an admin issues it with `farm studio add NAME`)"
            )
        given = digest(token)
        assert self._admin is not None
        admin = hmac.compare_digest(given, self._admin)
        studio = self._match(given)
        if admin:
            logs.hide(token)
            return ADMIN
        if studio is not None:
            logs.hide(token)
            return Caller(studio)
        raise NotAllowed(
            "the controller does not know this token (or it was revoked): set FARM_TOKEN (or --token) to the "
            "token `farm studio add NAME` printed for your studio"
        )

    def _match(self, given: str) -> str | None:
        """The studio whose live token has this digest; every record is compared (in constant time)."""
        found = None
        for studio, record in sorted(self._load().items()):
            stored = record.get("sha256")
            if isinstance(stored, str) and hmac.compare_digest(given, stored) and found is None:
                found = studio
        return found

    def add(self, studio: str) -> str:
        """Issue ``studio`` a token and keep its hash; returns the token (shown once). Raises UsageError
        when the name is not a slug or the studio has a live token."""
        if not isinstance(studio, str) or not _SLUG.fullmatch(studio):
            raise UsageError(
                f"studio name {studio!r} is not a slug: lowercase letters, digits, '-' and '_', "
                "not starting with '_' or '-' (e.g. acme)"
            )
        if self._load().get(studio, {}).get("sha256"):
            raise UsageError(
                f"studio {studio!r} has a token already: `farm studio revoke {studio}` first, then add it again"
            )
        token = new_token()
        logs.hide(token)
        self._write({"version": 1, "studio": studio, "sha256": digest(token), "created_at": time.time()})
        return token

    def revoke(self, studio: str) -> bool:
        """Revoke ``studio``'s token at once; returns whether it had a live one."""
        record = self._load().get(studio)
        if not record or not record.get("sha256"):
            return False
        self._write(dict(record, sha256=None, revoked_at=time.time()))
        return True

    def studios(self) -> list[dict]:
        """Each studio known, with when its token was made and whether it is live (never the hash)."""
        return [
            {
                "studio": name,
                "created_at": record.get("created_at"),
                "revoked_at": record.get("revoked_at"),
                "active": bool(record.get("sha256")),
            }
            for name, record in sorted(self._load().items())
        ]

    def _write(self, record: dict) -> None:
        self.objects.put_bytes(f"{PREFIX}{record['studio']}.json", json.dumps(record, sort_keys=True).encode())
        self._load()[record["studio"]] = record
