"""Who a personal call comes from: bearer tokens the service issues, kept only as their hashes.

A person's adapted weights and memory hold what they typed (names, addresses); a beam search
over them reads it back. So no personal route trusts a name the caller gives. A person is
created by POST /api/personal/people, which answers a random id and a random token (32 bytes
from `secrets`) once; the service keeps only the token's SHA-256, and every personal call
carries the token as `Authorization: Bearer …`. Without the token of a person nobody can read,
change, reset or evict that person's state: the hash names the person, and nothing else does.

Creating people is bounded, so that creating many cannot push the others out:
- at most `max_people` at once; a new one takes the place of the least recently seen only if
  that one has been idle for `idle_s`, else the creation is refused (429);
- at most `rate` creations a second (a token bucket of `burst`), else 429 with Retry-After.
Where the service listens beyond this machine, creating people needs the operator's issuer
secret as its bearer token (`--personal-issuer-secret FILE`: a backend that authenticates its
users creates their people and hands the tokens on); only its hash is kept here too.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

IDLE_S = 3600.0  # a person unseen this long may give up their place to a new one
CREATE_RATE = 2.0  # people created a second, at most, over time …
CREATE_BURST = 20  # … and at once


class Refused(Exception):
    """A creation refused: the HTTP status, the reason, and when to try again (seconds)."""

    def __init__(self, status: int, reason: str, retry_after: int = 1):
        super().__init__(reason)
        self.status, self.retry_after = status, retry_after


def digest(secret: str) -> str:
    """The hex SHA-256 of a token or secret (what is kept instead of it)."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


@dataclass
class _Person:
    user: str
    last_seen: float


class Identities:
    """The people the service knows, by the hash of their token; thread-safe."""

    def __init__(
        self,
        max_people: int,
        idle_s: float = IDLE_S,
        rate: float = CREATE_RATE,
        burst: int = CREATE_BURST,
        issuer_sha256: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.max_people, self.idle_s, self.rate, self.burst = max_people, idle_s, rate, burst
        self.issuer_sha256, self.clock = issuer_sha256, clock
        self._people: dict[str, _Person] = {}  # token hash -> person
        self._lock = threading.Lock()
        self._allowance, self._refilled = float(burst), clock()

    def may_create(self, bearer: str | None) -> bool:
        """Whether a creation request may create: always, unless an issuer secret is required."""
        if self.issuer_sha256 is None:
            return True
        return bearer is not None and hmac.compare_digest(digest(bearer), self.issuer_sha256)

    def create(self) -> tuple[str, str, str | None]:
        """(a new person's id, their token, the id of the idle person they replaced or None);
        Refused when people are being created too fast or every place is taken by someone active."""
        with self._lock:
            now = self.clock()
            self._allowance = min(self.burst, self._allowance + (now - self._refilled) * self.rate)
            self._refilled = now
            if self._allowance < 1:
                wait = math.ceil((1 - self._allowance) / self.rate)
                raise Refused(429, f"people are being created faster than {self.rate:g} a second", wait)
            evicted = None
            if len(self._people) >= self.max_people:
                key, oldest = min(self._people.items(), key=lambda item: item[1].last_seen)
                if now - oldest.last_seen < self.idle_s:
                    raise Refused(429, f"all {self.max_people} places are held by people active in the last hour")
                del self._people[key]
                evicted = oldest.user
            self._allowance -= 1
            token, user = secrets.token_urlsafe(32), secrets.token_hex(8)
            self._people[digest(token)] = _Person(user, now)
            return user, token, evicted

    def who(self, bearer: str | None) -> str | None:
        """The id of the person whose token this is (seen now), or None."""
        if not bearer:
            return None
        with self._lock:
            person = self._people.get(digest(bearer))
            if person is None:
                return None
            person.last_seen = self.clock()
            return person.user

    def __len__(self) -> int:
        return len(self._people)
