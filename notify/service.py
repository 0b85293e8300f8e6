"""The notify loop: every ``notify_interval_s``, deliver the notifications the escalation steps left pending (a
scorer replica: those of its own sites, each claimed atomically), and tell the estate's admins of stalled scoring.

The steps themselves are taken by the scorer's tick (``engine.tick`` -> ``escalation.escalation_pass``), so they
follow the same clock as every other time-based rule.

It runs in the scorer (a thread with its own connection, on the scorer's clock, so the simulated-time demo
escalates in simulated minutes). The channels come from settings; an unconfigured channel is absent, and an
attempt on it is recorded as failed with the reason (never silently skipped).
"""

from __future__ import annotations

import threading
import time
from datetime import datetime

import psycopg
import structlog

from carewatch.notify.channels import Channel, DashboardChannel, EmailChannel, SmsChannel, WebhookChannel
from carewatch.notify.escalation import deliver_pending, estate_pass
from carewatch.notify.policy import ChannelName, Contact
from carewatch.scoring.clock import Clock
from carewatch.scoring.replicas import LeaseKeeper, SubjectMap
from carewatch.settings import Settings, check_secret

log = structlog.get_logger("carewatch.notify.service")


def channels_from_settings(settings: Settings) -> dict[str, Channel]:
    """The channels this server can use: the dashboard always, the others when configured."""
    channels: dict[str, Channel] = {"dashboard": DashboardChannel()}
    if settings.notify_smtp_host:
        channels["email"] = EmailChannel(
            settings.notify_smtp_host, settings.notify_smtp_port, settings.notify_smtp_sender,
            settings.notify_smtp_username,
            settings.notify_smtp_password.get_secret_value() if settings.notify_smtp_password else None,
            settings.notify_smtp_starttls)
    if settings.notify_sms_api_key and settings.notify_sms_template_id:
        channels["sms"] = SmsChannel(settings.notify_sms_api_key.get_secret_value(), settings.notify_sms_template_id,
                                     settings.notify_sms_base_url)
    if settings.notify_webhook_secret:
        # signs what the receiver trusts: refused when short or published, like the JWT key
        channels["webhook"] = WebhookChannel(check_secret(settings.notify_webhook_secret.get_secret_value(),
                                                          "CAREWATCH_NOTIFY_WEBHOOK_SECRET"))
    return channels


def estate_contacts(settings: Settings) -> list[tuple[str, str]]:
    """``notify_estate_contacts`` as (channel, recipient) pairs, each checked like a policy contact."""
    out = []
    for item in (settings.notify_estate_contacts or "").split(","):
        if not item.strip():
            continue
        channel, _, recipient = item.strip().partition(":")
        contact = Contact(channel=ChannelName(channel.strip()), recipient=recipient.strip())
        out.append((contact.channel.value, contact.recipient))
    return out


def notify_round(conn: psycopg.Connection, channels: dict[str, Channel], now: datetime, *,
                 keeper: LeaseKeeper | None, subjects: SubjectMap, contacts: list[tuple[str, str]], claimant: str,
                 timeout: float) -> dict[int, str]:
    """One round of the loop: tell the estate's admins of stalled scoring, then send this replica's attempts: those
    of the sites of the buckets ``keeper`` holds (every site without a keeper), each claimed atomically."""
    sites = None if keeper is None else subjects.sites(conn, keeper.buckets)
    estate_pass(conn, contacts, now)
    return deliver_pending(conn, channels, now, timeout=timeout, site_ids=sites, claimant=claimant)


def notify_loop(dsn: str, settings: Settings, clock: Clock, stop: threading.Event, done: threading.Event,
                keeper: LeaseKeeper | None = None) -> None:
    """Deliver until stopped; a lost connection is re-opened with back-off. With ``keeper`` (a scorer replica),
    only the attempts of the sites whose buckets it holds, each claimed atomically (no duplicate sends between
    replicas, H-ESC-11); and the estate's own notices (scoring stalled, H-ESC-12) from any replica."""
    channels = channels_from_settings(settings)
    contacts = estate_contacts(settings)
    subjects = SubjectMap()
    claimant = keeper.replica_id if keeper is not None else f"notify-{threading.get_ident()}"
    log.info("notify_started", channels=sorted(channels), estate_contacts=len(contacts))
    backoff = 1.0
    while not (stop.is_set() or done.is_set()):
        try:
            with psycopg.connect(dsn, autocommit=True, application_name="carewatch-notify") as conn:
                backoff = 1.0
                while not (stop.is_set() or done.is_set()):
                    if done.wait(settings.notify_interval_s) or stop.is_set():
                        return
                    if not clock.ready:
                        continue
                    started = time.monotonic()
                    try:
                        sent = notify_round(conn, channels, clock.now(), keeper=keeper, subjects=subjects,
                                            contacts=contacts, claimant=claimant, timeout=settings.notify_timeout_s)
                    except psycopg.OperationalError:
                        raise
                    except Exception:
                        log.exception("notify_failed")
                        continue
                    if sent:
                        log.info("notifications_sent", results=sorted(sent.values()),
                                 ms=round((time.monotonic() - started) * 1000))
        except psycopg.OperationalError as exc:
            log.warning("notify_database_unavailable", error=str(exc), retry_in_s=backoff)
            done.wait(backoff)
            backoff = min(backoff * 2, 30.0)
