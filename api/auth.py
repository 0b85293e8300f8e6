"""Authentication: OAuth2 password flow issuing short-lived JWT access tokens and rotating refresh tokens.

* Access tokens (``settings.access_token_minutes``) and refresh tokens (``settings.refresh_token_hours``) are
  HS256 JWTs signed with ``settings.signing_key()`` (at least 32 bytes, never a published example); tokens signed
  with ``CAREWATCH_JWT_PREVIOUS_SECRET`` are still accepted while a key is rotated (docs/security.md). Each says
  which kind it is, so one cannot stand in for the other.
* Every token names its session (``sid``; ``api.sessions``): a refresh rotates the refresh token, an old one
  presented again revokes the session, and disabling a user or changing their password, role or scope revokes
  all their sessions, access tokens included. The user is also re-read on every request.
* Failed sign-ins are counted in PostgreSQL per account and per real client address (``api.network``), so the
  limits hold across restarts and workers (429 with Retry-After). Password checks (argon2, 64 MiB each) run at
  most ``settings.login_hash_concurrency`` at once per process; a sign-in beyond that gets 429 at once.
"""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import jwt
import psycopg
from fastapi import APIRouter, Depends, HTTPException, Request, status
from fastapi.security import OAuth2PasswordRequestForm
from pydantic import BaseModel, Field

from carewatch.api import audit, sessions
from carewatch.api.network import client_address
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


def issue_tokens(conn: psycopg.Connection, user: User, settings: Settings, now: datetime | None = None,
                 session_id: str | None = None, refresh_jti: str | None = None) -> TokenPair:
    """A token pair for ``user``: in a new session, or (refresh) in ``session_id`` whose current refresh token
    the caller has just rotated to ``refresh_jti``."""
    now = now or datetime.now(UTC)
    access_life = timedelta(minutes=settings.access_token_minutes)
    refresh_life = timedelta(hours=settings.refresh_token_hours)
    key = settings.signing_key()
    refresh_jti = refresh_jti or uuid.uuid4().hex
    if session_id is None:
        session_id = sessions.start(conn, user.username, refresh_jti, now + refresh_life)
    common = {"iss": ISSUER, "sub": user.username, "iat": now, "sid": session_id}
    access = jwt.encode({**common, "typ": "access", "role": user.role.value, "exp": now + access_life,
                         "jti": uuid.uuid4().hex}, key, algorithm=ALGORITHM)
    refresh = jwt.encode({**common, "typ": "refresh", "pwv": user.password_version, "exp": now + refresh_life,
                          "jti": refresh_jti}, key, algorithm=ALGORITHM)
    return TokenPair(access_token=access, expires_in=int(access_life.total_seconds()), refresh_token=refresh,
                     refresh_expires_in=int(refresh_life.total_seconds()))


def unauthorised(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail, headers={"WWW-Authenticate": "Bearer"})


def decode_token(token: str, settings: Settings, expected_type: str) -> dict[str, Any]:
    """The token's claims; 401 when it is expired, forged, malformed or of the wrong kind."""
    claims: dict[str, Any] | None = None
    for key in settings.verification_keys():  # the current key, then the previous one while rotating
        try:
            claims = jwt.decode(token, key, algorithms=[ALGORITHM], issuer=ISSUER,
                                options={"require": ["exp", "iat", "sub", "typ", "sid", "jti"]})
            break
        except jwt.ExpiredSignatureError:
            raise unauthorised("token expired: sign in again") from None
        except jwt.InvalidSignatureError:
            continue
        except jwt.PyJWTError:
            raise unauthorised("invalid token") from None
    if claims is None:
        raise unauthorised("invalid token")
    if claims.get("typ") != expected_type:
        raise unauthorised(f"this is not an {expected_type} token")
    return claims


# ------------------------------------------------------------------------------------------------------------
router = APIRouter(prefix="/auth", tags=["auth"])


def _settings(request: Request) -> Settings:
    return request.app.state.settings


def _too_many(wait: int, detail: str) -> HTTPException:
    return HTTPException(status.HTTP_429_TOO_MANY_REQUESTS, detail, headers={"Retry-After": str(wait)})


@router.post("/token", response_model=TokenPair, summary="Sign in (OAuth2 password flow)",
             responses={401: {"description": "Wrong username or password"},
                        429: {"description": "Too many failed attempts, or too many sign-ins at once; see "
                                             "Retry-After"}})
def login(request: Request, form: Annotated[OAuth2PasswordRequestForm, Depends()], conn: Conn) -> TokenPair:
    settings = _settings(request)
    username = form.username.strip().lower()[:64]
    client = client_address(request)
    audit.set_identity(request, username, None)
    wait = sessions.retry_after(conn, username, client, per_account=settings.login_max_failures_per_account,
                                per_client=settings.login_max_failures_per_client,
                                window_s=settings.login_failure_window_s)
    if wait is not None:
        audit.note(request, "login_failed", "user", username, reason="rate limited")
        raise _too_many(wait, f"too many failed sign-ins; try again in {wait} s")
    slots: threading.BoundedSemaphore = request.app.state.hash_slots
    if not slots.acquire(timeout=0.25):
        audit.note(request, "login_failed", "user", username, reason="busy")
        raise _too_many(1, "too many sign-ins at once; try again in a second")
    try:
        user = authenticate(conn, username, form.password)
    finally:
        slots.release()
    if user is None:
        sessions.record_failure(conn, username, client)
        audit.note(request, "login_failed", "user", username)
        raise unauthorised("wrong username or password")
    sessions.clear_failures(conn, username, client)
    audit.set_identity(request, user.username, user.role.value)
    audit.note(request, "login", "user", user.username)
    return issue_tokens(conn, user, settings)


@router.post("/refresh", response_model=TokenPair, summary="Swap a refresh token for a new token pair",
             responses={401: {"description": "Refresh token invalid, expired, already used or revoked"}})
def refresh(request: Request, body: RefreshRequest, conn: Conn) -> TokenPair:
    """Rotation: the presented refresh token is spent. Presenting a spent one revokes the whole session."""
    settings = _settings(request)
    claims = decode_token(body.refresh_token, settings, "refresh")
    audit.set_identity(request, str(claims["sub"])[:64], None)
    user = get_user(conn, claims["sub"])
    if user is None or not user.active or claims.get("pwv") != user.password_version:
        audit.note(request, "login_failed", "user", claims["sub"], via="refresh", reason="user changed")
        raise unauthorised("refresh token no longer valid: sign in again")
    new_jti = uuid.uuid4().hex
    now = datetime.now(UTC)
    rotation = sessions.rotate(conn, str(claims["sid"]), user.username, str(claims["jti"]), new_jti,
                               now + timedelta(hours=settings.refresh_token_hours))
    if not rotation.ok:
        audit.note(request, "login_failed", "user", user.username, via="refresh", reason=rotation.reason)
        raise unauthorised("refresh token no longer valid: sign in again")
    audit.set_identity(request, user.username, user.role.value)
    audit.note(request, "login", "user", user.username, via="refresh")
    return issue_tokens(conn, user, settings, now, session_id=str(claims["sid"]), refresh_jti=new_jti)
