"""The publisher against a private Mosquitto with a TLS listener, per-gateway passwords and the gateway ACL.

The certificates are made here (a CA, a server certificate for 127.0.0.1 signed by it, and an unrelated CA), the
broker configuration comes from ``carewatch.embedded`` (``BrokerSecurity``, ``gateway_acl``): the same
generators a deployment uses.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from paho.mqtt.enums import CallbackAPIVersion
from waiting import wait_until

from carewatch.embedded import (
    BrokerSecurity,
    EmbeddedBroker,
    free_port,
    gateway_acl,
    mosquitto_password_line,
    port_open,
)
from carewatch.gateway.outbox import Outbox
from carewatch.gateway.pipeline import ReadingDraft
from carewatch.gateway.publisher import Publisher
from carewatch.mqtt import MqttTarget
from carewatch.wire import DeviceKind, Metric

AT = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


# ------------------------------------------------------------------------------------------------------------
# certificates
# ------------------------------------------------------------------------------------------------------------
def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write(path: Path, pem: bytes) -> Path:
    path.write_bytes(pem)
    path.chmod(0o600)
    return path


def make_ca(directory: Path, name: str) -> tuple[Path, x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name)).issuer_name(_name(name)).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return _write(directory / f"{name}.crt", cert.public_bytes(serialization.Encoding.PEM)), cert, key


def make_server_cert(directory: Path, ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("carewatch-test-broker")).issuer_name(ca.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(IPv4Address("127.0.0.1")),
                                                    x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    cert_path = _write(directory / "server.crt", cert.public_bytes(serialization.Encoding.PEM))
    key_path = _write(directory / "server.key", key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()))
    return cert_path, key_path


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    ca_path, ca, ca_key = make_ca(tmp_path, "carewatch-test-ca")
    other_ca_path, _, _ = make_ca(tmp_path, "someone-elses-ca")
    cert, key = make_server_cert(tmp_path, ca, ca_key)
    return {"ca": ca_path, "other_ca": other_ca_path, "cert": cert, "key": key}


@contextlib.contextmanager
def broker_with(scratch_dir: Path, uid: str, security: BrokerSecurity) -> Iterator[EmbeddedBroker]:
    broker = EmbeddedBroker(scratch_dir / f"mqtt-sec-{uid}", free_port(), security=security)
    if broker.kind != "mosquitto":  # pragma: no cover - the broker is a documented test dependency
        pytest.skip("broker security tests need the mosquitto binary (apt-get install mosquitto)")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


# ------------------------------------------------------------------------------------------------------------
def drafts(n: int) -> list[ReadingDraft]:
    return [ReadingDraft("ox-1", DeviceKind.PULSE_OXIMETER, Metric.SPO2, 96, "%", AT + timedelta(seconds=i),
                         AT + timedelta(seconds=i)) for i in range(n)]


def with_credentials(url: str, username: str, password: str) -> str:
    scheme, rest = url.split("://", 1)
    return f"{scheme}://{username}:{password}@{rest}"


def publisher_for(outbox: Outbox, url: str, **kw: Any) -> Publisher:
    kw.setdefault("batch_ms", 20)
    return Publisher(outbox, MqttTarget(url), site_id=outbox.site_id, gateway_id=outbox.gateway_id,
                     reconnect_max_s=1, **kw)


@contextlib.contextmanager
def running_publisher(outbox: Outbox, url: str, flush_timeout: float, **kw: Any) -> Iterator[Publisher]:
    """A started publisher for `outbox` on `url`, stopped (flushing for up to `flush_timeout` s) on the way out."""
    publisher = publisher_for(outbox, url, **kw)
    publisher.start()
    try:
        yield publisher
    finally:
        publisher.stop(flush_timeout=flush_timeout)


@contextlib.contextmanager
def mqtt_session(port: int, username: str, password: str, client_id: str,
                 prepare: Callable[[mqtt.Client], None] | None = None) -> Iterator[mqtt.Client]:
    """A paho MQTT 3.1.1 client logged in as `username` on 127.0.0.1:`port`, its network loop running; `prepare`
    (TLS, callbacks) is applied before connecting. Stopped and disconnected on the way out."""
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id,
                         protocol=mqtt.MQTTv311)
    client.username_pw_set(username, password)
    if prepare is not None:
        prepare(client)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        yield client
    finally:
        client.loop_stop()
        client.disconnect()


# ------------------------------------------------------------------------------------------------------------
# TLS
# ------------------------------------------------------------------------------------------------------------
def test_mqtts_with_the_right_ca_delivers_and_a_wrong_ca_is_refused_without_loss(
    scratch_dir: Path, uid: str, pki: dict[str, Path], collector_factory: Any
) -> None:
    site, gateway = f"site-{uid}", f"gw-{uid}"
    with broker_with(scratch_dir, uid, BrokerSecurity(tls=(pki["ca"], pki["cert"], pki["key"]))) as broker:
        assert broker.url.startswith("mqtts://")
        collector = collector_factory(broker.url, site, gateway, f"sub-{uid}", ca_file=pki["ca"])
        with Outbox(scratch_dir / f"tls-{uid}.sqlite", site_id=site, gateway_id=gateway) as outbox:
            outbox.append(drafts(500))

            # (b) a CA that did not sign the broker's certificate: refused, said plainly, nothing deleted
            with running_publisher(outbox, broker.url, ca_file=pki["other_ca"], flush_timeout=0.5) as wrong:
                wait_until(lambda: wrong.counters.connect_failures >= 2, 15, "the TLS refusal, retried")
                error = wrong.last_connect_error or ""
                assert "not trusted by the CA file" in error and str(pki["other_ca"]) in error, error
                assert "certificate" in error.split(": ", 2)[-1], error  # OpenSSL's reason is passed on
                assert not wrong.connected
                assert wrong.counters.readings_sent == 0
            assert outbox.depth() == 500 and collector.unique() == 0

            # a CA file that is not there is a clear error at start, not a silent plain-text fallback
            with pytest.raises(ValueError, match="cannot load CA certificates"):
                publisher_for(outbox, broker.url, ca_file=pki["ca"].with_name("missing.crt"))

            # (a) the right CA: everything arrives, exactly once, in order, and only then leaves the outbox
            with running_publisher(outbox, broker.url, ca_file=pki["ca"], batch_size=50, flush_timeout=2) as right:
                collector.wait_for(lambda: collector.unique() == 500, 20, "all readings over TLS")
                assert right.wait_drained(10)
                assert right.last_connect_error is None
            collector.assert_exactly_once_in_order(500)
            assert outbox.depth() == 0


def test_plain_mqtt_to_a_tls_listener_is_not_a_silent_success(
    scratch_dir: Path, uid: str, pki: dict[str, Path]
) -> None:
    security = BrokerSecurity(tls=(pki["ca"], pki["cert"], pki["key"]))
    with (broker_with(scratch_dir, uid, security) as broker,
          Outbox(scratch_dir / f"plain-{uid}.sqlite", site_id=f"site-{uid}", gateway_id=f"gw-{uid}") as outbox):
        outbox.append(drafts(5))
        with running_publisher(outbox, broker.url.replace("mqtts://", "mqtt://"), flush_timeout=0.5) as plain:
            # the first attempts may race the broker's start (nothing listening yet): wait for the explanation
            wait_until(lambda: "use mqtts://" in (plain.last_connect_error or ""), 15,
                       "the plain-text connection to be refused with an explanation")
            assert plain.counters.connect_failures >= 1
            assert not plain.connected and outbox.depth() == 5


# ------------------------------------------------------------------------------------------------------------
# per-gateway credentials and the ACL
# ------------------------------------------------------------------------------------------------------------
def test_each_gateway_publishes_only_under_its_own_site_and_gateway(
    scratch_dir: Path, uid: str, collector_factory: Any
) -> None:
    site_a, site_b, gw_a, gw_b = f"siteA-{uid}", f"siteB-{uid}", f"gwA-{uid}", f"gwB-{uid}"
    users = {gw_a: "secret-a", gw_b: "secret-b", f"ingest-{uid}": "secret-i"}
    security = BrokerSecurity(users=users, acl=gateway_acl([(site_a, gw_a), (site_b, gw_b)], [f"ingest-{uid}"]))
    with broker_with(scratch_dir, uid, security) as broker:
        ingest_url = with_credentials(broker.url, f"ingest-{uid}", "secret-i")
        everything = collector_factory(ingest_url, site_a, gw_a, f"ingest-{uid}", topic_filter="carewatch/v1/#")
        shared = collector_factory(ingest_url, site_a, gw_a, f"ingest-share-{uid}",
                                   topic_filter="$share/ingest/carewatch/v1/+/+/readings")  # as ingest subscribes

        # gateway A, configured correctly: delivered
        with Outbox(scratch_dir / f"acl-a-{uid}.sqlite", site_id=site_a, gateway_id=gw_a) as outbox:
            outbox.append(drafts(20))
            with running_publisher(outbox, with_credentials(broker.url, gw_a, "secret-a"), flush_timeout=2):
                everything.wait_for(lambda: everything.unique() == 20, 10, "gateway A's readings")
                shared.wait_for(lambda: shared.unique() == 20, 10, "gateway A's readings through $share")

        # gateway A's credentials, publishing under site B (gateway B's topic and its own id under site B)
        foreign = [f"carewatch/v1/{site_b}/{gw_b}/readings", f"carewatch/v1/{site_b}/{gw_a}/readings",
                   f"carewatch/v1/{site_b}/{gw_b}/status"]
        for topic in foreign:
            with mqtt_session(broker.port, gw_a, "secret-a", f"rogue-{uid}") as client:
                info = client.publish(topic, json.dumps({"forged": topic}), qos=1)
                info.wait_for_publish(timeout=5)  # mosquitto acknowledges a denied 3.1.1 publish, then drops it
        # a message published after the forged ones, on an allowed topic, proves the subscriber was listening
        with mqtt_session(broker.port, gw_a, "secret-a", f"marker-{uid}") as marker:
            marker.publish(f"carewatch/v1/{site_a}/{gw_a}/events", json.dumps({"marker": True}), qos=1)
            everything.wait_for(lambda: any(t.endswith("/events") for t in everything.topics), 10, "the marker")
        time.sleep(0.5)
        assert not [t for t in everything.topics if f"/{site_b}/" in t], everything.topics

        # wrong password and no credentials: refused at CONNECT, said plainly, nothing sent or deleted
        with Outbox(scratch_dir / f"acl-bad-{uid}.sqlite", site_id=site_a, gateway_id=gw_a) as outbox:
            outbox.append(drafts(3))
            for url in (with_credentials(broker.url, gw_a, "wrong"), broker.url):
                with running_publisher(outbox, url, flush_timeout=0.5) as refused:
                    wait_until(lambda p=refused: p.last_connect_error is not None, 10, "the refusal")
                    assert "refused the connection" in (refused.last_connect_error or "")
                    assert not refused.connected and refused.counters.readings_sent == 0
                assert outbox.depth() == 3


def publish_as(broker: EmbeddedBroker, username: str, password: str, topic: str, payload: bytes, uid: str) -> None:
    with mqtt_session(broker.port, username, password, f"{username}-once-{uid}") as client:
        info = client.publish(topic, payload, qos=1)
        info.wait_for_publish(timeout=5)  # a denied 3.1.1 publish is acknowledged too, then dropped


def test_resend_requests_come_only_from_ingest_and_reach_only_their_gateway(
    scratch_dir: Path, uid: str, collector_factory: Any
) -> None:
    from carewatch.wire import Channel, ResendRequest, topic

    site_a, site_b, gw_a, gw_b, ingest = f"siteA-{uid}", f"siteB-{uid}", f"gwA-{uid}", f"gwB-{uid}", f"ingest-{uid}"
    users = {gw_a: "secret-a", gw_b: "secret-b", ingest: "secret-i"}
    security = BrokerSecurity(users=users, acl=gateway_acl([(site_a, gw_a), (site_b, gw_b)], [ingest]))
    a_resend = topic(site_a, gw_a, Channel.RESEND)

    def request(ranges: list[list[int]]) -> bytes:
        return ResendRequest(site_id=site_a, gateway_id=gw_a, requested_at=AT, ranges=ranges).model_dump_json().encode()

    with broker_with(scratch_dir, uid, security) as broker:
        everything = collector_factory(with_credentials(broker.url, ingest, "secret-i"), site_a, gw_a,
                                       f"watch-{uid}", topic_filter="carewatch/v1/#")
        snoop = collector_factory(with_credentials(broker.url, gw_b, "secret-b"), site_a, gw_a, f"snoop-{uid}",
                                  topic_filter=a_resend)  # gateway B may not read gateway A's requests
        with Outbox(scratch_dir / f"resend-{uid}.sqlite", site_id=site_a, gateway_id=gw_a) as outbox:
            outbox.append(drafts(20))
            with running_publisher(outbox, with_credentials(broker.url, gw_a, "secret-a"), flush_timeout=2) as gateway:
                everything.wait_for(lambda: everything.unique() == 20, 10, "gateway A's readings")
                assert gateway.wait_drained(10)
                publish_as(broker, gw_b, "secret-b", a_resend, request([[1, 20]]), uid)  # B may not ask A
                publish_as(broker, ingest, "secret-i", a_resend, request([[3, 5]]), uid)  # ingest may
                wait_until(lambda: gateway.counters.readings_replayed == 3, 10, "the replay ingest asked for")
                assert gateway.wait_drained(10)
                time.sleep(0.5)
        assert gateway.counters.resend_requests == 1, "only ingest's request reached the gateway"
        assert everything.seqs() == [*range(1, 21), 3, 4, 5]
        assert len(everything.resends) == 1, "gateway B's request never reached the broker's subscribers"
        assert snoop.resends == [], "gateway B cannot read another gateway's resend topic"


def test_gateway_acl_refuses_ids_that_would_widen_the_grant() -> None:
    for bad in [("site/x", "gw"), ("site", "gw+"), ("site", "#"), ("", "gw"), ("site", "gw a")]:
        with pytest.raises(ValueError, match="not usable in a topic"):
            gateway_acl([bad])
    acl = gateway_acl([("home-a", "gw-1")], ["ingest"])
    assert "user gw-1\ntopic write carewatch/v1/home-a/gw-1/#\ntopic read carewatch/v1/home-a/gw-1/resend\n" in acl
    assert "user ingest\ntopic read carewatch/v1/#\ntopic write carewatch/v1/+/+/resend\n" in acl


# ------------------------------------------------------------------------------------------------------------
# The deployed configuration itself (deploy/mosquitto/mosquitto.conf), on a real Mosquitto
# ------------------------------------------------------------------------------------------------------------
DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "mosquitto"


def connack(port: int, username: str, password: str, ca_file: Path | None = None) -> int:
    """The broker's CONNACK reason for these credentials (0 = accepted)."""
    result: list[int] = []

    def prepare(client: mqtt.Client) -> None:
        if ca_file is not None:
            client.tls_set(ca_certs=str(ca_file))
        client.on_connect = lambda _c, _u, _f, reason, _p: result.append(reason.value)

    with mqtt_session(port, username, password, f"probe-{username}-{port}", prepare=prepare):
        wait_until(lambda: bool(result), 10, f"CONNACK for {username}")
    return result[0]


def test_deployed_config_keeps_service_accounts_off_the_public_tls_listener(
    tmp_path: Path, uid: str, pki: dict[str, Path]
) -> None:
    """Finding 12: the healthcheck account (whose password was in the README) and ingest exist only on the internal
    listener; the TLS listener that is published accepts gateway accounts only."""
    import pwd
    import shutil
    import subprocess

    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(mosquitto).exists():  # pragma: no cover - a documented test dependency
        pytest.skip("needs the mosquitto binary")
    internal, public = free_port(), free_port()
    config, certs, data = tmp_path / "config", tmp_path / "certs", tmp_path / "data"
    for d in (config, certs, data):
        d.mkdir()
    for name, source in (("ca.crt", pki["ca"]), ("server.crt", pki["cert"]), ("server.key", pki["key"])):
        shutil.copy(source, certs / name)
    users = {"ingest": "ingest pw", "healthcheck": "healthcheck", "gw-sim-1": "gateway pw"}
    (config / "passwd").write_text("".join(mosquitto_password_line(u, p) + "\n" for u, p in users.items()))
    (config / "passwd.gateways").write_text(mosquitto_password_line("gw-sim-1", "gateway pw") + "\n")
    shutil.copy(DEPLOY / "acl", config / "acl")
    conf = (DEPLOY / "mosquitto.conf").read_text()
    conf = conf.replace("listener 1883", f"listener {internal} 127.0.0.1")
    conf = conf.replace("listener 8883", f"listener {public} 127.0.0.1")
    conf = conf.replace("/mosquitto/config/", f"{config}/").replace("/mosquitto/certs/", f"{certs}/")
    conf = conf.replace("/mosquitto/data/", f"{data}/")
    conf += f"\nuser {pwd.getpwuid(os.geteuid()).pw_name}\n"
    (tmp_path / "mosquitto.conf").write_text(conf)
    with open(tmp_path / "out.log", "wb") as log:
        proc = subprocess.Popen([mosquitto, "-c", str(tmp_path / "mosquitto.conf")], stdout=log,
                                stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: port_open("127.0.0.1", public) or proc.poll() is not None, 15, "mosquitto")
        assert proc.poll() is None, (tmp_path / "out.log").read_text()
        assert connack(internal, "healthcheck", "healthcheck") == 0  # the healthcheck works where it must
        assert connack(internal, "ingest", "ingest pw") == 0
        assert connack(public, "gw-sim-1", "gateway pw", pki["ca"]) == 0  # gateways work over TLS
        assert connack(public, "healthcheck", "healthcheck", pki["ca"]) != 0  # the published password: refused
        assert connack(public, "ingest", "ingest pw", pki["ca"]) != 0
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_no_known_mqtt_password_is_published() -> None:
    readme = (DEPLOY.parents[1] / "README.md").read_text()
    assert "healthcheck healthcheck" not in readme
    compose = (DEPLOY.parents[1] / "docker-compose.yml").read_text()
    assert "-P healthcheck" not in compose and "MQTT_HEALTHCHECK_PASSWORD" in compose
