"""Settings come from CAREWATCH_* variables; MQTT URLs are parsed with credentials and TLS."""

from __future__ import annotations

import pytest

from carewatch.mqtt import MqttTarget
from carewatch.settings import Settings


def test_env_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAREWATCH_SITE_ID", "oakview")
    monkeypatch.setenv("CAREWATCH_MQTT_URL", "mqtts://gw%2D1:s3cret@broker.example:8884")
    settings = Settings()
    assert settings.site_id == "oakview"
    target = settings.mqtt
    assert (target.tls, target.host, target.port, target.username, target.password) == (
        True, "broker.example", 8884, "gw-1", "s3cret")


def test_bad_mqtt_url_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAREWATCH_MQTT_URL", "http://broker")
    with pytest.raises(ValueError, match="mqtt://"):
        Settings()


def test_default_ports() -> None:
    assert MqttTarget("mqtt://h").port == 1883
    assert MqttTarget("mqtts://h").port == 8883


def test_signing_key_is_generated_once(tmp_path) -> None:
    settings = Settings(state_dir=tmp_path)
    assert settings.signing_key() == settings.signing_key()
    assert len(settings.signing_key()) > 40


def test_a_report_url_that_needs_libpq_14_is_refused_with_an_older_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """prefer-standby is libpq 14's: with an older libpq the API says so at start, not at each connection."""
    import psycopg

    from carewatch.db import report_conninfo

    url = "postgresql://carewatch_reader@node1,node2/carewatch?target_session_attrs=prefer-standby"
    assert report_conninfo(url, None) == url
    monkeypatch.setattr(psycopg.pq, "version", lambda: 130014)
    with pytest.raises(ValueError, match="libpq 14"):
        report_conninfo(url, None)
    assert report_conninfo(url.replace("prefer-standby", "any"), None)  # nothing newer asked for
