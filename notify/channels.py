"""Notification channels behind one small interface: the dashboard, email (SMTP), SMS (GOV.UK Notify) and a
signed webhook.

Each channel's ``send`` tries once, within ``timeout`` seconds, and returns a :class:`Result` instead of raising,
so the caller can record every attempt. :func:`send_all` runs the attempts side by side with a deadline: a
channel that is down or hangs is recorded as failed or timed out and never holds up the others (H-ESC-02).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import smtplib
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import make_msgid
from typing import Protocol

import httpx

from carewatch.notify.policy import ChannelName, Message

SIGNATURE_HEADER = "X-Carewatch-Signature"
TIMESTAMP_HEADER = "X-Carewatch-Timestamp"
#: A webhook whose timestamp is further than this from the receiver's clock is refused (replays).
SIGNATURE_TOLERANCE_S = 300


@dataclass(frozen=True)
class Result:
    """One attempt's outcome: 'delivered', 'failed' or 'timeout', what the other side said, and its id."""

    result: str
    detail: str
    external_id: str | None = None

    @property
    def delivered(self) -> bool:
        return self.result == "delivered"


class Channel(Protocol):
    """A way to reach a person. ``send`` must not raise for delivery problems and must respect ``timeout``."""

    name: ChannelName

    def send(self, message: Message, recipient: str, timeout: float) -> Result: ...


def _failed(exc: BaseException) -> Result:
    kind = "timeout" if isinstance(exc, TimeoutError | httpx.TimeoutException) or "timed out" in str(exc) \
        else "failed"
    return Result(kind, f"{type(exc).__name__}: {exc}"[:500])


# ------------------------------------------------------------------------------------------------------------
class DashboardChannel:
    """The home's own tablets: the alert is in the database, and every signed-in tablet of the site polls the
    banner (``GET /sites/{site_id}/banner``) every 2 s. Delivered as soon as it is recorded."""

    name = ChannelName.DASHBOARD

    def send(self, message: Message, recipient: str, timeout: float) -> Result:
        return Result("delivered", f"shown on every signed-in tablet of {message.site_id} within seconds")


@dataclass
class EmailChannel:
    """Email over SMTP (STARTTLS and login when configured)."""

    host: str
    port: int
    sender: str
    username: str | None = None
    password: str | None = None
    starttls: bool = False
    name: ChannelName = ChannelName.EMAIL

    def send(self, message: Message, recipient: str, timeout: float) -> Result:
        mail = EmailMessage()
        mail["From"] = self.sender
        mail["To"] = recipient
        mail["Subject"] = message.subject
        msg_id = make_msgid(domain="carewatch")
        mail["Message-ID"] = msg_id
        mail.set_content(message.text + (f"\n\n{message.link}" if message.link else ""))
        try:
            with smtplib.SMTP(self.host, self.port, timeout=timeout) as smtp:
                if self.starttls:
                    smtp.starttls()
                if self.username:
                    smtp.login(self.username, self.password or "")
                refused = smtp.send_message(mail)
        except (OSError, smtplib.SMTPException) as exc:
            return _failed(exc)
        if refused:
            return Result("failed", f"refused by the server: {refused}"[:500], msg_id)
        return Result("delivered", f"accepted by {self.host}:{self.port}", msg_id)


@dataclass
class SmsChannel:
    """SMS through GOV.UK Notify's official client. ``base_url`` is Notify's API (a local server that speaks
    the same API in tests and the demo); ``template_id`` is a Notify template with a ((message)) field."""

    api_key: str
    template_id: str
    base_url: str = "https://api.notifications.service.gov.uk"
    name: ChannelName = ChannelName.SMS

    def send(self, message: Message, recipient: str, timeout: float) -> Result:
        from notifications_python_client.notifications import NotificationsAPIClient

        try:
            client = NotificationsAPIClient(self.api_key, base_url=self.base_url, timeout=timeout)
            reply = client.send_sms_notification(
                phone_number=recipient, template_id=self.template_id,
                personalisation={"message": message.text[:900]},
                reference=f"{message.target_kind}-{message.target_id}-L{message.level}")
        except Exception as exc:  # the client raises its own HTTPError and requests' errors
            return _failed(exc)
        return Result("delivered", "accepted by GOV.UK Notify", str(reply.get("id")) if reply.get("id") else None)


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The webhook signature: ``sha256=`` + HMAC-SHA256 over ``"{timestamp}." + body`` with the shared secret."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(secret: str, headers: Mapping[str, str], body: bytes, *, now: float | None = None,
           tolerance_s: float = SIGNATURE_TOLERANCE_S) -> bool:
    """What a receiver does: the signature matches (constant-time) and the timestamp is recent."""
    lower = {k.lower(): v for k, v in headers.items()}
    timestamp = lower.get(TIMESTAMP_HEADER.lower(), "")
    signature = lower.get(SIGNATURE_HEADER.lower(), "")
    try:
        age = abs((time.time() if now is None else now) - float(timestamp))
    except ValueError:
        return False
    return age <= tolerance_s and hmac.compare_digest(sign(secret, timestamp, body), signature)


@dataclass
class WebhookChannel:
    """A JSON POST to another system, signed with HMAC-SHA256 (``X-Carewatch-Signature``)."""

    secret: str
    name: ChannelName = ChannelName.WEBHOOK

    def send(self, message: Message, recipient: str, timeout: float) -> Result:
        body = json.dumps(message.as_json(), separators=(",", ":")).encode()
        timestamp = str(int(time.time()))
        headers = {"Content-Type": "application/json", TIMESTAMP_HEADER: timestamp,
                   SIGNATURE_HEADER: sign(self.secret, timestamp, body)}
        try:
            reply = httpx.post(recipient, content=body, headers=headers, timeout=timeout)
        except httpx.HTTPError as exc:
            return _failed(exc)
        if 200 <= reply.status_code < 300:
            return Result("delivered", f"HTTP {reply.status_code}", reply.headers.get("x-request-id"))
        return Result("failed", f"HTTP {reply.status_code}: {reply.text[:200]}")


# ------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Attempt:
    """One message to one recipient over one channel (``key`` ties it to its delivery-log row)."""

    key: int
    channel: str
    recipient: str
    message: Message


def send_all(channels: Mapping[str, Channel], attempts: Sequence[Attempt], *, timeout: float = 5.0,
             ) -> dict[int, Result]:
    """Every attempt at once, each on its own thread, all within ``timeout`` (+1 s of grace). A channel that is
    not configured, raises or hangs is a failed or timed-out attempt; the others are not delayed by it."""
    results: dict[int, Result] = {}
    runnable = []
    for a in attempts:
        if a.channel not in channels:
            results[a.key] = Result("failed", f"the {a.channel} channel is not configured on this server")
        else:
            runnable.append(a)
    if not runnable:
        return results
    pool = ThreadPoolExecutor(max_workers=min(16, len(runnable)), thread_name_prefix="carewatch-notify")
    try:
        futures = {pool.submit(channels[a.channel].send, a.message, a.recipient, timeout): a for a in runnable}
        done, _ = wait(futures, timeout=timeout + 1.0)
        for future, a in futures.items():
            if future not in done:
                results[a.key] = Result("timeout", f"no answer from the {a.channel} channel within {timeout:g} s")
                continue
            exc = future.exception()
            results[a.key] = _failed(exc) if exc is not None else future.result()
    finally:
        pool.shutdown(wait=False, cancel_futures=True)  # a hung channel's thread must not hold up the caller
    return results
