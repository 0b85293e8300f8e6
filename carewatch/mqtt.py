"""The one MQTT client factory: every Carewatch paho client (the gateway publisher, the ingest workers and their
shared-subscription probe, the simulator's direct publisher) is made here.

* **URL**: ``mqtt://user:pass@host:1883`` or ``mqtts://...:8883`` (``MqttTarget``; percent-escapes in the
  credentials are decoded, the port defaults by scheme).
* **TLS**: ``mqtts://`` verifies the broker against ``ca_file`` (or the system store); an unreadable or non-PEM
  CA file is a ``ValueError`` naming the file, raised before any connection attempt. A CA file with ``mqtt://``
  is logged as unused.
* **Credentials** from the URL, **MQTT 3.1.1**, and a persistent or clean session as the caller says.
* **Last will**: a fixed one here (``will=``), or a fresh one per attempt set by the caller in ``on_pre_connect``
  (the gateway's carries the time the connection opened).
* **Reconnect back-off**: paho's exponential back-off between ``reconnect`` (min, max) seconds.
* **Logging**: paho's own log goes to the standard ``logging`` logger ``carewatch.mqtt``; ``describe_connect_error``
  turns a failed TCP/TLS attempt into a sentence saying what to check.
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

import paho.mqtt.client as mqtt
import structlog
from paho.mqtt.enums import CallbackAPIVersion

__all__ = ["MqttTarget", "Will", "describe_connect_error", "make_client"]

log = structlog.get_logger("carewatch.mqtt")


class MqttTarget:
    """A parsed ``mqtt://`` / ``mqtts://`` URL: host, port, credentials and TLS."""

    def __init__(self, url: str) -> None:
        parsed = urlparse(url)
        if parsed.scheme not in ("mqtt", "mqtts"):
            raise ValueError(f"MQTT URL must start with mqtt:// or mqtts://, got {url!r}")
        self.url = url
        self.tls = parsed.scheme == "mqtts"
        self.host = parsed.hostname or "localhost"
        self.port = parsed.port or (8883 if self.tls else 1883)
        self.username = unquote(parsed.username) if parsed.username else None
        self.password = unquote(parsed.password) if parsed.password else None

    def __repr__(self) -> str:
        user = f"{self.username}@" if self.username else ""
        return f"MqttTarget({'mqtts' if self.tls else 'mqtt'}://{user}{self.host}:{self.port})"


@dataclass(frozen=True)
class Will:
    """A last will the broker publishes if the client vanishes without a DISCONNECT."""

    topic: str
    payload: bytes | str
    qos: int = 1
    retain: bool = True


def make_client(
    target: MqttTarget | str,
    *,
    client_id: str,
    ca_file: Path | str | None = None,
    clean_session: bool = True,
    manual_ack: bool = False,
    will: Will | None = None,
    reconnect: tuple[float, float] = (1, 120),
    max_inflight: int | None = None,
) -> mqtt.Client:
    """A paho client for ``target``, configured but not connected (``connect``/``connect_async`` is the caller's,
    as are the callbacks). Raises ``ValueError`` when the CA file cannot be loaded."""
    if isinstance(target, str):
        target = MqttTarget(target)
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id,
        clean_session=clean_session,
        protocol=mqtt.MQTTv311,
        manual_ack=manual_ack,
    )
    client.enable_logger(logging.getLogger("carewatch.mqtt"))
    if target.username:
        client.username_pw_set(target.username, target.password)
    if target.tls:
        try:
            client.tls_set(ca_certs=str(ca_file) if ca_file else None, tls_version=ssl.PROTOCOL_TLS_CLIENT)
        except (OSError, ValueError) as exc:  # missing/unreadable file, not PEM certificates
            raise ValueError(
                f"CAREWATCH_MQTT_CA_FILE {ca_file}: cannot load CA certificates for {target!r}: {exc}"
            ) from None
    elif ca_file is not None:
        log.warning("mqtt_ca_file_unused", ca_file=str(ca_file), reason="the MQTT URL is mqtt://, not mqtts://")
    if will is not None:
        client.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
    # paho annotates the delays as int but computes with floats (ingest retries after 0.25 s)
    client.reconnect_delay_set(min_delay=reconnect[0], max_delay=reconnect[1])  # type: ignore[arg-type]
    if max_inflight is not None:
        client.max_inflight_messages_set(max_inflight)
    return client


def describe_connect_error(target: MqttTarget, exc: BaseException, ca_file: Path | str | None = None) -> str:
    """Why a TCP/TLS connection attempt to ``target`` failed, saying what to check."""
    where = f"{target.host}:{target.port}"
    if isinstance(exc, ssl.SSLCertVerificationError):
        trust = f"the CA file {ca_file}" if ca_file else "the system CA store (no CAREWATCH_MQTT_CA_FILE)"
        return (f"TLS: the certificate of {where} is not trusted by {trust}: {exc.verify_message} "
                "(wrong CA file, or a certificate not issued for this host name)")
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake with {where} failed: {exc.reason or exc} (is it a TLS listener? mqtts:// port?)"
    if isinstance(exc, ConnectionRefusedError):
        return f"nothing accepts connections at {where} (broker down, or wrong port)"
    return f"cannot connect to {where}: {type(exc).__name__}: {exc}"
