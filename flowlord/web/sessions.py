"""The dashboard's sign-in sessions (README.md, HTTP API and dashboard): in memory,
server-side, gone with the process.

A browser signs in once with one of the configured tokens; the session it gets
acts as that token's name. The cookie holds only a random id (`secrets`, 256
bits); the table keeps its SHA-256, so a lookup's timing says nothing about an
id, and a dump of memory holds no usable cookie. Each session has its own CSRF
token, which every form carries and every POST must give back (compared in
constant time). Sessions expire after `LIFETIME`; at most `MOST` live at once
(the oldest goes first).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

COOKIE = "flowlord_session"
LIFETIME = 12 * 3600  # seconds a session lasts from its sign-in
MOST = 1000  # sessions at once


@dataclass(frozen=True)
class Session:
    actor: str  # the token's name: who acts, in the audit trail
    csrf: str  # what every form of this session carries
    expires: float  # on the clock `Sessions` was given

    def csrf_matches(self, given: str) -> bool:
        return hmac.compare_digest(given.encode(), self.csrf.encode())


class Sessions:
    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 lifetime: float = LIFETIME) -> None:
        self.clock = clock
        self.lifetime = lifetime
        self._by_hash: dict[str, Session] = {}  # insertion order: oldest first
        self._lock = threading.Lock()

    def start(self, actor: str) -> tuple[str, Session]:
        """A new session for `actor`: (the cookie's value, the session)."""
        cookie = secrets.token_urlsafe(32)
        session = Session(actor, secrets.token_urlsafe(32), self.clock() + self.lifetime)
        with self._lock:
            self._sweep()
            while len(self._by_hash) >= MOST:
                del self._by_hash[next(iter(self._by_hash))]
            self._by_hash[_hash(cookie)] = session
        return cookie, session

    def find(self, cookie: str | None) -> Session | None:
        """The live session of a cookie's value; None for none, an unknown or an
        expired one."""
        if not cookie:
            return None
        key = _hash(cookie)
        with self._lock:
            session = self._by_hash.get(key)
            if session is not None and session.expires <= self.clock():
                del self._by_hash[key]
                return None
            return session

    def end(self, cookie: str | None) -> None:
        if cookie:
            with self._lock:
                self._by_hash.pop(_hash(cookie), None)

    def _sweep(self) -> None:
        now = self.clock()
        for key in [k for k, s in self._by_hash.items() if s.expires <= now]:
            del self._by_hash[key]


def _hash(cookie: str) -> str:
    return hashlib.sha256(cookie.encode()).hexdigest()
