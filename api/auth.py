"""Authentication: OAuth2 password flow issuing short-lived JWT access tokens and longer refresh tokens.

* Access tokens (``settings.access_token_minutes``) and refresh tokens (``settings.refresh_token_hours``) are
  HS256 JWTs signed with ``settings.signing_key()``; each says which kind it is, so one cannot stand in for the
  other.
* The user is re-read from the database on every request: disabling a user or changing their role or scope
  takes effect at once. A refresh token carries the password version, so changing a password ends sessions.
* Failed logins are limited per username *and* client address (default 5 failures in 5 minutes -> 429 with
  Retry-After). The limiter lives in this process's memory: run one API process per limiter, or put the same
  rule in the reverse proxy.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import jwt
from fastapi import APIRouter, Depends, HTTPException, Request, status
from fastapi.security import OAuth2PasswordRequestForm
from pydantic import BaseModel, Field

from carewatch.api import audit
from carewatch.api.pooling import Conn
from carewatch.api.users import User, authenticate, get_user
from carewatch.settings import Settings

ALGORITHM = "HS256"
ISSUER = "carewatch"


class TokenPair(BaseModel):
    access_token: str
    token_type: str = "bearer"
    expires_in: int = Field(description="Seconds until the access token expires.")
    refresh_token: str
    refresh_expires_in: int


class RefreshRequest(BaseModel):
    refresh_token: str = Field(min_length=10, max_length=4096)


class Me(BaseModel):
    username: str
    full_name: str
    role: str
    site_id: str | None
    practice_code: str | None
    council: str | None


def issue_tokens(user: User, settings: Settings, now: datetime | None = None) -> TokenPair:
    now = now or datetime.now(UTC)
    access_life = timedelta(minutes=settings.access_token_minutes)
    refresh_life = timedelta(hours=settings.refresh_token_hours)
    key = settings.signing_key()
    common = {"iss": ISSUER, "sub": user.username, "iat": now}
    access = jwt.encode({**common, "typ": "access", "role": user.role.value, "exp": now + access_life,
                         "jti": uuid.uuid4().hex}, key, algorithm=ALGORITHM)
    refresh = jwt.encode({**common, "typ": "refresh", "pwv": user.password_version, "exp": now + refresh_life,
                          "jti": uuid.uuid4().hex}, key, algorithm=ALGORITHM)
    return TokenPair(access_token=access, expires_in=int(access_life.total_seconds()), refresh_token=refresh,
                     refresh_expires_in=int(refresh_life.total_seconds()))


def unauthorised(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail, headers={"WWW-Authenticate": "Bearer"})


def decode_token(token: str, settings: Settings, expected_type: str) -> dict[str, Any]:
    """The token's claims; 401 when it is expired, forged, malformed or of the wrong kind."""
    try:
        claims = jwt.decode(token, settings.signing_key(), algorithms=[ALGORITHM], issuer=ISSUER,
                            options={"require": ["exp", "iat", "sub", "typ"]})
    except jwt.ExpiredSignatureError:
        raise unauthorised("token expired: sign in again") from None
    except jwt.PyJWTError:
        raise unauthorised("invalid token") from None
    if claims.get("typ") != expected_type:
        raise unauthorised(f"this is not an {expected_type} token")
    return claims


# ------------------------------------------------------------------------------------------------------------
@dataclass
class LoginRateLimiter:
    """At most ``max_failures`` failed logins per (username, client) in ``window_s``; success clears the count."""

    max_failures: int = 5
    window_s: float = 300.0

    def __post_init__(self) -> None:
        self._failures: dict[tuple[str, str], deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, key: tuple[str, str], now: float) -> deque[float]:
        times = self._failures.setdefault(key, deque())
        while times and now - times[0] >= self.window_s:
            times.popleft()
        return times

    def retry_after(self, key: tuple[str, str], now: float | None = None) -> int | None:
        """Seconds to wait before trying again, or None when a login attempt is allowed now."""
        now = time.monotonic() if now is None else now
        with self._lock:
            times = self._recent(key, now)
            if len(times) < self.max_failures:
                return None
            return max(1, int(times[0] + self.window_s - now + 0.999))

    def failed(self, key: tuple[str, str], now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            self._recent(key, now).append(now)
            if len(self._failures) > 100_000:  # memory bound under a spray attack: forget idle keys
                for stale in [k for k, v in self._failures.items() if not v]:
                    del self._failures[stale]

    def succeeded(self, key: tuple[str, str]) -> None:
        with self._lock:
            self._failures.pop(key, None)


# ------------------------------------------------------------------------------------------------------------
router = APIRouter(prefix="/auth", tags=["auth"])


def _settings(request: Request) -> Settings:
    return request.app.state.settings


@router.post("/token", response_model=TokenPair, summary="Sign in (OAuth2 password flow)",
             responses={401: {"description": "Wrong username or password"},
                        429: {"description": "Too many failed attempts; see Retry-After"}})
def login(request: Request, form: Annotated[OAuth2PasswordRequestForm, Depends()], conn: Conn) -> TokenPair:
    username = form.username.strip().lower()[:64]
    client = request.client.host if request.client else "unknown"
    key = (username, client)
    limiter: LoginRateLimiter = request.app.state.login_limiter
    audit.set_identity(request, username, None)
    wait = limiter.retry_after(key)
    if wait is not None:
        audit.note(request, "login_failed", "user", username, reason="rate limited")
        raise HTTPException(status.HTTP_429_TOO_MANY_REQUESTS, f"too many failed sign-ins; try again in {wait} s",
                            headers={"Retry-After": str(wait)})
    user = authenticate(conn, username, form.password)
    if user is None:
        limiter.failed(key)
        audit.note(request, "login_failed", "user", username)
        raise unauthorised("wrong username or password")
    limiter.succeeded(key)
    audit.set_identity(request, user.username, user.role.value)
    audit.note(request, "login", "user", user.username)
    return issue_tokens(user, _settings(request))


@router.post("/refresh", response_model=TokenPair, summary="Swap a refresh token for a new token pair",
             responses={401: {"description": "Refresh token invalid, expired or revoked"}})
def refresh(request: Request, body: RefreshRequest, conn: Conn) -> TokenPair:
    settings = _settings(request)
    claims = decode_token(body.refresh_token, settings, "refresh")
    user = get_user(conn, claims["sub"])
    if user is None or not user.active or claims.get("pwv") != user.password_version:
        raise unauthorised("refresh token no longer valid: sign in again")
    audit.set_identity(request, user.username, user.role.value)
    audit.note(request, "login", "user", user.username, via="refresh")
    return issue_tokens(user, settings)
