"""Each channel against a real server: an SMTP server (aiosmtpd), a server speaking GOV.UK Notify's API driven by
Notify's official client, a webhook receiver that checks the HMAC signature. With one channel down or hanging,
the others still deliver, within the timeout."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from carewatch.embedded import free_port
from carewatch.notify.channels import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    Attempt,
    DashboardChannel,
    EmailChannel,
    SmsChannel,
    WebhookChannel,
    send_all,
    sign,
    verify,
)
from carewatch.notify.policy import Message
from carewatch.notify.receivers import NotifyServer, SmtpServer, WebhookReceiver

SECRET = "shared-webhook-secret"
MESSAGE = Message(target_kind="alert", target_id=42, site_id="oak", site_name="Oakview", level=2,
                  level_name="Senior on shift", reason="unacknowledged", severity="high",
                  subject="Carewatch HIGH: Mrs A at Oakview: NEWS2 score",
                  text="Carewatch HIGH: Mrs A at Oakview: NEWS2 8. Nobody has acknowledged it for 15 min. "
                       "NEWS2 8: Call 999 now.")


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    with SmtpServer() as server:
        yield server


@pytest.fixture
def notify() -> Iterator[NotifyServer]:
    with NotifyServer() as server:
        yield server


@pytest.fixture
def webhook() -> Iterator[WebhookReceiver]:
    with WebhookReceiver(SECRET) as server:
        yield server


def test_email_reaches_the_smtp_server(smtp: SmtpServer) -> None:
    result = EmailChannel("127.0.0.1", smtp.port, "alerts@carewatch.test").send(MESSAGE, "senior@home.test", 5)
    assert result.delivered, result
    assert [m.recipient for m in smtp.received] == ["senior@home.test"]
    mail = smtp.received[0]
    assert mail.headers["Subject"] == MESSAGE.subject
    assert mail.headers["Message-ID"] == result.external_id
    assert "Call 999 now" in (mail.text or "")


def test_sms_goes_through_the_notify_client_to_a_server_speaking_its_api(notify: NotifyServer) -> None:
    channel = SmsChannel(notify.api_key, notify.template_id, base_url=notify.url)
    result = channel.send(MESSAGE, "07700900123", 5)
    assert result.delivered, result
    [request] = notify.received
    assert request.path == "/v2/notifications/sms"
    assert request.verified  # the client's JWT, signed with the key's secret, issuer = the service id
    assert request.json["phone_number"] == "07700900123"
    assert request.json["template_id"] == notify.template_id
    assert request.json["personalisation"]["message"] == MESSAGE.text
    assert request.json["reference"] == "alert-42-L2"
    assert result.external_id and len(result.external_id) == 36  # Notify's notification id
    # A wrong key is refused by the server, and the channel says so instead of raising
    wrong = SmsChannel(notify.api_key[:-36] + "0" * 8 + notify.api_key[-28:], notify.template_id, notify.url)
    refused = wrong.send(MESSAGE, "07700900123", 5)
    assert refused.result == "failed" and "403" in refused.detail
    assert notify.received[-1].verified is False


def test_webhook_receiver_verifies_the_signature(webhook: WebhookReceiver) -> None:
    good = WebhookChannel(SECRET).send(MESSAGE, webhook.url + "/hooks/carewatch", 5)
    assert good.delivered, good
    assert webhook.received[0].verified and webhook.received[0].json["target_id"] == 42
    assert webhook.received[0].headers[SIGNATURE_HEADER].startswith("sha256=")
    bad = WebhookChannel("not-the-secret").send(MESSAGE, webhook.url + "/hooks/carewatch", 5)
    assert bad.result == "failed" and "401" in bad.detail
    assert webhook.received[1].verified is False
    # a tampered body or an old timestamp is refused by the verification receivers use
    body, ts = webhook.received[0].body, webhook.received[0].headers[TIMESTAMP_HEADER]
    headers = {TIMESTAMP_HEADER: ts, SIGNATURE_HEADER: sign(SECRET, ts, body)}
    assert verify(SECRET, headers, body)
    assert not verify(SECRET, headers, body.replace(b"42", b"43"))
    assert not verify(SECRET, headers, body, now=float(ts) + 3600)
    tampered = httpx.post(webhook.url + "/x", content=body.replace(b"42", b"43"), headers=headers, timeout=5)
    assert tampered.status_code == 401


@pytest.fixture
def hung_port() -> Iterator[int]:
    """A port that accepts connections and never answers (a channel that hangs rather than refuses)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    yield sock.getsockname()[1]
    sock.close()


def test_with_one_channel_down_the_others_still_deliver(smtp: SmtpServer, notify: NotifyServer,
                                                        webhook: WebhookReceiver, hung_port: int) -> None:
    dead_smtp = free_port()  # nothing listens here: connection refused
    channels = {
        "dashboard": DashboardChannel(),
        "email": EmailChannel("127.0.0.1", dead_smtp, "alerts@carewatch.test"),
        "sms": SmsChannel(notify.api_key, notify.template_id, base_url=f"http://127.0.0.1:{hung_port}"),
        "webhook": WebhookChannel(SECRET),
    }
    attempts = [Attempt(1, "dashboard", "tablets", MESSAGE), Attempt(2, "email", "senior@home.test", MESSAGE),
                Attempt(3, "sms", "07700900123", MESSAGE), Attempt(4, "webhook", webhook.url + "/h", MESSAGE),
                Attempt(5, "pager", "1234", MESSAGE)]
    started = time.monotonic()
    results = send_all(channels, attempts, timeout=2.0)
    took = time.monotonic() - started
    assert took < 4.0, took  # the hung SMS server held nobody up beyond the timeout
    assert results[1].delivered and results[4].delivered
    assert results[2].result == "failed"  # refused
    assert results[3].result in ("timeout", "failed")  # Notify's client reports its read timeout as a 503
    assert results[5].result == "failed" and "not configured" in results[5].detail
    assert len(webhook.received) == 1 and webhook.received[0].verified
    # and with the SMTP server back, email delivers again
    channels["email"] = EmailChannel("127.0.0.1", smtp.port, "alerts@carewatch.test")
    assert send_all(channels, [Attempt(6, "email", "senior@home.test", MESSAGE)], timeout=2.0)[6].delivered
