"""One-time ceremony tokens: what a partner's backend hands a person's browser instead of an API key.

A token is 256 random bits from ``secrets`` (``mbc_`` + URL-safe base64): it cannot be guessed, and it
carries nothing; what it grants (the ceremony's options, fixed by the partner) is kept here, in this
gateway's memory, under the token's SHA-256 (the tokens themselves are not kept). ``take`` hands the
grant out once: a second presentation, an expired token or one never issued here is refused with
UNAUTHENTICATED and a message a person can act on. Spent and expired entries are kept for one more
TTL, so that "already used" and "expired" can be told apart from "not issued", then forgotten.

Each link also has a ``ref`` (random too, but it opens nothing): the partner's handle for
``Ceremonies/GetCeremony``, which reports the ceremony's state and, once it ended, its outcome (kept
one more TTL after the end). Only the key that created the link may read it.

Limits (docs/WEB.md): the tokens live in one gateway's memory, so the link works only on the gateway
that issued it (several gateways need the partner's call and the page routed to the same one) and a
restart forgets the pending ones; at most ``max_pending`` may wait at once (RESOURCE_EXHAUSTED beyond).
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import threading
import time
from dataclasses import dataclass, field

from mobidem.errors import NotFound, ResourceExhausted, Unauthenticated

PREFIX = "mbc_"
MAX_TOKEN_CHARS = 100  # a longer "token" is not one of ours: refused unread


@dataclass(frozen=True)
class Grant:
    """What the partner fixed when it created the ceremony; the page cannot change any of it."""

    transaction_ref: str
    identity_id: str = ""
    operating_point: str = ""
    test_seed: int | None = None
    creator: str = ""  # the partner's API key name ("" without keys)


@dataclass
class _Entry:
    grant: Grant
    expires: float  # monotonic
    ref: str = ""
    used: bool = False
    ended: float | None = None  # monotonic, once the ceremony ended
    outcome: object = None  # the LivenessOutcome (protobuf), once decided
    error: str = ""  # "CODE: message" when it ended without an outcome
    done: asyncio.Event = field(default_factory=asyncio.Event)


WAITING, RUNNING, DONE, EXPIRED, ERROR = "waiting", "running", "done", "expired", "error"


class CeremonyTokens:
    def __init__(self, ttl_s: float = 300.0, max_pending: int = 10_000, clock=time.monotonic):
        self.ttl_s = ttl_s
        self.max_pending = max_pending
        self.clock = clock
        self._entries: dict[str, _Entry] = {}
        self._refs: dict[str, str] = {}  # ref -> the token's key
        self._lock = threading.Lock()

    @staticmethod
    def _key(token: str) -> str:
        return hashlib.sha256(token.encode()).hexdigest()

    def issue(self, grant: Grant, ttl_s: float = 0.0) -> tuple[str, float, str]:
        """A new token for ``grant``, its lifetime in seconds (``ttl_s`` may only shorten the default) and
        the ceremony's ref."""
        ttl = self.ttl_s if not ttl_s or ttl_s <= 0 else min(ttl_s, self.ttl_s)
        token, ref = PREFIX + secrets.token_urlsafe(32), secrets.token_hex(16)
        now = self.clock()
        with self._lock:
            self._purge(now)
            pending = sum(not e.used and e.expires > now for e in self._entries.values())
            if pending >= self.max_pending:
                raise ResourceExhausted(f"{pending} ceremony links are waiting to be opened on this gateway (at most "
                                        f"{self.max_pending}); retry when some are used or expired")
            self._entries[self._key(token)] = _Entry(grant, now + ttl, ref)
            self._refs[ref] = self._key(token)
        return token, ttl, ref

    def take(self, token: str) -> Grant:
        """The token's grant, once; Unauthenticated for a token that is unknown, spent or expired."""
        if not token:
            raise Unauthenticated("this page needs a ceremony link: open the link the service you are signing with "
                                  "gave you (it ends in #token=...)")
        if len(token) > MAX_TOKEN_CHARS or not token.startswith(PREFIX):
            raise Unauthenticated("this ceremony link is not valid (its token is malformed): open the link exactly "
                                  "as the service you are signing with sent it, or ask it for a new one")
        now = self.clock()
        with self._lock:
            entry = self._entries.get(self._key(token))
            if entry is None:
                raise Unauthenticated("this ceremony link is not valid: this server never issued it (or has "
                                      "restarted since); ask the service you are signing with for a new link")
            if entry.used:
                raise Unauthenticated("this ceremony link was already used: each link works once; ask the service "
                                      "you are signing with for a new link")
            if entry.expires <= now:
                raise Unauthenticated("this ceremony link has expired: links work for a few minutes only; ask the "
                                      "service you are signing with for a new link")
            entry.used = True
            return entry.grant

    def finish(self, token: str, outcome=None, error: str = "") -> None:
        """The ceremony of ``token`` ended: with its outcome, or with an error (no outcome)."""
        with self._lock:
            entry = self._entries.get(self._key(token))
            if entry is None or entry.ended is not None:
                return
            entry.ended, entry.outcome, entry.error = self.clock(), outcome, error
        entry.done.set()

    def status(self, ref: str, caller: str) -> tuple[str, _Entry]:
        """The state of the ceremony ``ref`` created by ``caller``; NotFound for another key's (or none)."""
        now = self.clock()
        with self._lock:
            entry = self._entries.get(self._refs.get(ref, ""))
        if entry is None or entry.grant.creator != caller:
            raise NotFound("no ceremony with this ceremony_ref was created by this key on this gateway (or it "
                           "ended or expired more than web_ceremony_ttl_s ago)")
        if entry.ended is not None:
            return (DONE if entry.outcome is not None else ERROR), entry
        if entry.used:
            return RUNNING, entry
        return (EXPIRED if entry.expires <= now else WAITING), entry

    async def wait(self, ref: str, caller: str, wait_s: float) -> tuple[str, _Entry]:
        """``status``, after waiting up to ``wait_s`` for a waiting or running ceremony to end."""
        state, entry = self.status(ref, caller)
        if state in (WAITING, RUNNING) and wait_s > 0:
            timeout = wait_s if state == RUNNING else min(wait_s, max(0.0, entry.expires - self.clock()) + 0.01)
            try:
                await asyncio.wait_for(entry.done.wait(), timeout)
            except asyncio.TimeoutError:
                pass
            state, entry = self.status(ref, caller)
        return state, entry

    def pending(self) -> int:
        now = self.clock()
        with self._lock:
            return sum(not e.used and e.expires > now for e in self._entries.values())

    def _purge(self, now: float) -> None:
        """Forget entries one TTL after they expired (spent ones too: their message is 'already used' till
        then), and ended ones one TTL after they ended; a running ceremony's entry is kept."""
        old = [k for k, e in self._entries.items() if e.expires + self.ttl_s <= now
               and (e.ended + self.ttl_s <= now if e.ended is not None else not e.used)]
        for k in old:
            del self._refs[self._entries.pop(k).ref]
