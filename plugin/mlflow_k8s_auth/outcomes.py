"""What a token check can conclude. Kept apart so cache, review and authn share them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Reviewed:
    """The API server vouched for the token (TokenReview authenticated, audience matched)."""

    username: str
    namespace: str
    name: str
    expires_at: float  # wall-clock seconds; the token's own `exp`


@dataclass(frozen=True)
class Invalid:
    """The token is bad (HTTP 401). `reason` is safe to show: it never quotes the token."""

    reason: str


@dataclass(frozen=True)
class Unavailable:
    """The API server could not answer (HTTP 503, retry later). Never cached."""

    reason: str
    # Seconds the client should wait (Retry-After); None: the default.
    retry_after: float | None = None


ReviewOutcome = Reviewed | Invalid | Unavailable
