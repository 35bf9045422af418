"""Per-process token review cache: HMAC-keyed, TTL-bounded, negative entries, singleflight.

Keys are HMAC-SHA256 digests under a random per-process key, so no token (nor a digest an
attacker could recompute offline) is ever held as a dict key.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from cachetools import TLRUCache

from .outcomes import Invalid, ReviewOutcome, Reviewed, Unavailable

# A positive entry stops this long before the token's `exp`, so a cached answer never
# outlives the token even with a little clock drift.
EXPIRY_MARGIN_SECONDS = 1.0


@dataclass(frozen=True)
class _Entry:
    outcome: Reviewed | Invalid
    deadline: float  # monotonic


class _Flight:
    """One in-progress review that other threads with the same token wait on."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.outcome: ReviewOutcome | None = None


class ReviewCache:
    def __init__(
        self,
        audiences: tuple[str, ...],
        ttl_seconds: float,
        negative_ttl_seconds: float,
        max_entries: int,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._hmac_key = secrets.token_bytes(32)
        self._suffix = ("\x00" + ",".join(sorted(audiences))).encode()
        self._ttl = ttl_seconds
        self._negative_ttl = negative_ttl_seconds
        self._clock = clock
        self._wall_clock = wall_clock
        self._positive: TLRUCache = TLRUCache(max_entries, ttu=self._deadline, timer=clock)
        # Negative entries get a smaller share so a garbage flood cannot evict good tokens.
        self._negative: TLRUCache = TLRUCache(max(1, max_entries // 4), ttu=self._deadline, timer=clock)
        self._lock = threading.Lock()
        self._flights: dict[bytes, _Flight] = {}

    @staticmethod
    def _deadline(_key: bytes, entry: _Entry, _now: float) -> float:
        return entry.deadline

    def key(self, token: str) -> bytes:
        return hmac.new(self._hmac_key, token.encode() + self._suffix, hashlib.sha256).digest()

    def lookup(self, key: bytes) -> Reviewed | Invalid | None:
        with self._lock:
            entry = self._positive.get(key) or self._negative.get(key)
        return entry.outcome if entry is not None else None

    def store(self, key: bytes, outcome: ReviewOutcome) -> None:
        now = self._clock()
        if isinstance(outcome, Reviewed):
            remaining = outcome.expires_at - self._wall_clock() - EXPIRY_MARGIN_SECONDS
            ttl = min(self._ttl, remaining)
            if ttl > 0:
                with self._lock:
                    self._positive[key] = _Entry(outcome, now + ttl)
        elif isinstance(outcome, Invalid) and self._negative_ttl > 0:
            with self._lock:
                self._negative[key] = _Entry(outcome, now + self._negative_ttl)
        # Unavailable is never cached: the next request should try the API again.

    def get_or_review(self, key: bytes, review: Callable[[], ReviewOutcome]) -> tuple[ReviewOutcome, bool]:
        """Return (outcome, was_cached). Concurrent callers with one key share one review."""
        cached = self.lookup(key)
        if cached is not None:
            return cached, True
        with self._lock:
            entry = self._positive.get(key) or self._negative.get(key)
            if entry is not None:
                return entry.outcome, True
            flight = self._flights.get(key)
            leader = flight is None
            if leader:
                flight = self._flights[key] = _Flight()
        assert flight is not None
        if not leader:
            flight.done.wait()
            assert flight.outcome is not None
            return flight.outcome, True
        try:
            outcome = review()
            self.store(key, outcome)
            flight.outcome = outcome
        except BaseException:
            flight.outcome = Unavailable("token review failed")
            raise
        finally:
            with self._lock:
                self._flights.pop(key, None)
            flight.done.set()
        return outcome, False

    def clear(self) -> None:
        with self._lock:
            self._positive.clear()
            self._negative.clear()
