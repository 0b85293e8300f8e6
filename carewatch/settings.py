"""All configuration, in one place.

Every setting comes from an environment variable with the ``CAREWATCH_`` prefix (or a ``.env`` file in the
working directory). Nothing else in Carewatch reads ``os.environ``; it asks :func:`get_settings`.

When ``database_url`` or ``mqtt_url`` is unset, ``carewatch demo`` starts embedded servers and fills them in.
"""

from __future__ import annotations

import os
import secrets
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from carewatch.mqtt import MqttTarget


def default_state_dir() -> Path:
    """Where Carewatch keeps its own data when nothing else is configured.

    A normal user gets ``$XDG_STATE_HOME/carewatch`` (``~/.local/state/carewatch``). Root gets
    ``/var/lib/carewatch``: the embedded PostgreSQL must run as an unprivileged account, which cannot enter
    root's home directory.
    """
    if os.geteuid() == 0:
        return Path("/var/lib/carewatch")
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "carewatch"


class Settings(BaseSettings):
    """Carewatch settings. Each field is read from ``CAREWATCH_<FIELD NAME>``."""

    model_config = SettingsConfigDict(env_prefix="CAREWATCH_", env_file=".env", extra="ignore")

    # --- where things are -------------------------------------------------------------------------------
    state_dir: Path = Field(default_factory=default_state_dir, description="Local data (demo servers, outbox).")
    database_url: str | None = Field(
        default=None, description="PostgreSQL DSN, e.g. postgresql://carewatch:pw@db:5432/carewatch."
    )
    report_database_url: str | None = Field(
        default=None, description="The API's heavy read-only reports (exports, history, audit search): a "
        "carewatch_report login, standby first, e.g. postgresql://carewatch_reader@node2:5432,node1:5432/carewatch"
        "?target_session_attrs=prefer-standby (unset: they read the primary, read-only). docs/operations.md.",
    )
    report_pool_size: int = Field(default=2, ge=1, le=32, description="Connections of the API's report pool.")
    report_max_lag_s: float = Field(
        default=5.0, gt=0, description="A standby further behind than this is not read: the report reads the primary."
    )
    mqtt_url: str | None = Field(default=None, description="mqtt://user:pass@host:1883 or mqtts://...:8883.")
    mqtt_ca_file: Path | None = Field(default=None, description="CA certificate for mqtts:// brokers.")

    # --- identity of this gateway ------------------------------------------------------------------------
    site_id: str = Field(default="home-a", description="Site (care home or household) this gateway serves.")
    gateway_id: str = Field(default="gw-home-a", description="This gateway's id; unique across the estate.")
    device_registry: Path | None = Field(default=None, description="YAML/JSON device registry for a gateway.")
    registry_url: str | None = Field(
        default=None, description="API the gateway fetches its device registry from (unset: the file only)."
    )
    registry_username: str | None = Field(default=None, description="The gateway's own API account (care_staff).")
    registry_password: SecretStr | None = Field(default=None, description="Password of registry_username.")
    registry_fetch_s: float = Field(default=300.0, ge=1, description="Seconds between registry fetches.")

    # --- gateway radio ------------------------------------------------------------------------------------
    ble_backend: Literal["bleak", "bumble"] = Field(
        default="bleak", description="Bluetooth stack: bleak on BlueZ, or Bumble driving a controller over HCI."
    )
    bumble_transport: str = Field(
        default="usb:0",
        description="Bumble HCI transport: usb:0 (first USB dongle), usb:VID:PID, serial:/dev/ttyACM0, tcp-client:h:p.",
    )
    bumble_keystore: Path | None = Field(
        default=None, description="JSON file the Bumble backend keeps bonds in (default under state_dir)."
    )

    # --- gateway store-and-forward -----------------------------------------------------------------------
    outbox_path: Path | None = Field(default=None, description="SQLite outbox file (default under state_dir).")
    outbox_max_mb: int = Field(default=512, ge=1, description="Disk budget for unsent readings.")
    publish_batch_size: int = Field(default=200, ge=1, le=1000, description="Readings per MQTT message.")
    publish_batch_ms: int = Field(default=250, ge=1, description="Longest a reading waits to be batched.")
    publish_inflight: int = Field(default=32, ge=1, description="Unacknowledged QoS1 messages allowed at once.")
    replay_retention_s: float = Field(
        default=24 * 3600.0, ge=0,
        description="Seconds a reading stays in the outbox after its PUBACK, so ingest can ask for it again.",
    )

    # --- ingest ------------------------------------------------------------------------------------------
    ingest_batch_size: int = Field(default=5000, ge=1, description="Readings per database commit.")
    ingest_batch_ms: int = Field(default=200, ge=1, description="Longest an ingest batch stays open.")
    ingest_shared: bool | None = Field(
        default=None, description="Use a $share subscription; None = decide from the broker (Mosquitto yes)."
    )
    ingest_resend_after_s: float = Field(
        default=10.0, gt=0, description="How often ingest looks for sequence gaps to ask gateways to fill."
    )
    ingest_resend_grace_s: float = Field(
        default=30.0, ge=0, description="A gap younger than this is left to fill by itself (late delivery)."
    )
    ingest_resend_interval_s: float = Field(
        default=60.0, gt=0, description="Least time between two resend requests to one gateway."
    )
    retention_days: int = Field(default=400, ge=1, description="How long raw readings are kept.")

    # --- scorer ------------------------------------------------------------------------------------------
    clock: Literal["wall", "data"] = Field(
        default="wall", description="'data' = time is the newest reading's received_at (simulated-time demos)."
    )
    scorer_lease_s: float = Field(default=2.0, gt=0, description="Seconds between a scorer replica's lease rounds.")
    scorer_stall_after_s: float = Field(
        default=120.0, gt=0, description="A site unscored this long raises scoring_stalled (and shows in /healthz)."
    )
    scorer_watchdog_s: float = Field(default=15.0, gt=0, description="Seconds between scoring watchdog passes.")
    scorer_set_memory_residents: int = Field(
        default=100_000, ge=0, description="Residents whose older observation sets a scorer replica keeps in memory "
        "(scoring/memory.py; least recently evaluated dropped first; ~6 kB each, so 100,000 is ~600 MB; 0 = off)."
    )
    scorer_input_memory: bool = Field(
        default=False, description="Also keep each resident's last 26 h of readings, recent sets and round plans "
        "(scoring/memory.py: load_inputs). Off by default: it halves a re-evaluation with nothing new, but costs "
        "more than it saves when readings are arriving, and the morning round's stored-to-alert p99 missed 1 s with "
        "it on (bench_alert_latency, 2026-12-07)."
    )

    # --- notifications (escalation) ---------------------------------------------------------------------
    notify_smtp_host: str | None = Field(default=None, description="SMTP server for email notifications (unset: off).")
    notify_smtp_port: int = Field(default=25, description="SMTP port.")
    notify_smtp_sender: str = Field(default="carewatch@localhost", description="From address of notifications.")
    notify_smtp_username: str | None = Field(default=None, description="SMTP login (unset: none).")
    notify_smtp_password: SecretStr | None = Field(default=None, description="SMTP password.")
    notify_smtp_starttls: bool = Field(default=False, description="STARTTLS before sending.")
    notify_sms_api_key: SecretStr | None = Field(default=None, description="GOV.UK Notify API key (unset: SMS off).")
    notify_sms_template_id: str | None = Field(default=None, description="Notify SMS template with ((message)).")
    notify_sms_base_url: str = Field(default="https://api.notifications.service.gov.uk",
                                     description="GOV.UK Notify API (a local server in the demo).")
    notify_webhook_secret: SecretStr | None = Field(default=None,
                                                    description="HMAC key of signed webhooks (unset: off).")
    notify_timeout_s: float = Field(default=5.0, gt=0, le=60, description="Longest one notification attempt may take.")
    notify_interval_s: float = Field(default=1.0, gt=0, description="Seconds between escalation passes.")
    notify_estate_contacts: str | None = Field(
        default=None, description="The estate's admins, told when scoring stalls at a site: comma-separated "
                                  "channel:recipient, e.g. 'email:oncall@estate.example,sms:07700900123'.")

    # --- services ----------------------------------------------------------------------------------------
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    api_url: str | None = Field(default=None, description="Where the dashboard finds the API.")
    dashboard_port: int = 8501
    metrics_port: int = Field(default=0, description="Prometheus /metrics port of ingest, the scorer and the API "
                                                    "(its reports); 0 = off.")
    jwt_secret: SecretStr | None = Field(default=None, description="Signing key; generated under state_dir.")
    jwt_previous_secret: SecretStr | None = Field(
        default=None, description="While rotating: the old key, still accepted for verifying (never for signing).")
    trusted_proxies: str = Field(
        default="", description="Comma-separated addresses/networks of reverse proxies whose X-Forwarded-For "
        "is believed (empty: none; the peer address is the client).")
    login_max_failures_per_account: int = Field(default=5, ge=1, description="Failed sign-ins per account...")
    login_max_failures_per_client: int = Field(default=20, ge=1, description="...and per client address...")
    login_failure_window_s: int = Field(default=900, ge=1, description="...within this many seconds -> 429.")
    login_hash_concurrency: int = Field(
        default=2, ge=1, description="Password checks (argon2, 64 MiB each) running at once per API process; "
        "sign-ins beyond it get 429.")
    app_db_password: SecretStr | None = Field(default=None, description="`db migrate --app-login`'s password.")
    report_db_password: SecretStr | None = Field(
        default=None, description="`db migrate --report-login`'s password; also the API's report login's, when "
        "report_database_url names none.")
    access_token_minutes: int = 15
    refresh_token_hours: int = 12
    log_level: str = "INFO"
    log_json: bool = False

    # --- embedded demo servers ---------------------------------------------------------------------------
    demo_pg_port: int = 55432
    demo_mqtt_port: int = 18830
    demo_broker: Literal["mosquitto", "amqtt"] = Field(
        default="mosquitto", description="Embedded broker: mosquitto when installed (else amqtt), or force amqtt."
    )

    # --- tests -------------------------------------------------------------------------------------------
    test_dsn: str | None = Field(default=None, description="PostgreSQL DSN for the test suite's server.")
    test_mqtt: str | None = Field(default=None, description="mqtt:// URL of the test suite's broker.")

    @field_validator("mqtt_url", "test_mqtt")
    @classmethod
    def _check_mqtt_url(cls, value: str | None) -> str | None:
        if value is not None:
            MqttTarget(value)
        return value

    # --- derived -----------------------------------------------------------------------------------------
    @property
    def mqtt(self) -> MqttTarget:
        if not self.mqtt_url:
            raise RuntimeError("CAREWATCH_MQTT_URL is not set (carewatch demo sets it for its own broker)")
        return MqttTarget(self.mqtt_url)

    @property
    def dsn(self) -> str:
        if not self.database_url:
            raise RuntimeError("CAREWATCH_DATABASE_URL is not set (carewatch demo sets it for its own server)")
        return self.database_url

    @property
    def outbox_file(self) -> Path:
        return self.outbox_path or self.state_dir / "gateway" / f"{self.gateway_id}.outbox.sqlite"

    @property
    def bumble_keystore_file(self) -> Path:
        return self.bumble_keystore or self.state_dir / "gateway" / f"{self.gateway_id}.bonds.json"

    @property
    def registry_file(self) -> Path | None:
        """The gateway's registry file; with ``registry_url`` set there always is one (the API's copy is kept)."""
        if self.device_registry is None and self.registry_url:
            return self.state_dir / "gateway" / f"{self.gateway_id}.registry.json"
        return self.device_registry

    @property
    def api_base_url(self) -> str:
        return self.api_url or f"http://{self.api_host}:{self.api_port}"

    def signing_key(self) -> str:
        """The JWT signing key: configured (refused when weak, see :func:`check_secret`), or generated once and
        kept in the state dir (the demo)."""
        if self.jwt_secret is not None:
            return check_secret(self.jwt_secret.get_secret_value(), "CAREWATCH_JWT_SECRET")
        path = self.state_dir / "jwt.key"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(secrets.token_urlsafe(48))
            path.chmod(0o600)
        return path.read_text().strip()

    def verification_keys(self) -> list[str]:
        """Keys a token may be signed with: the signing key, then (while rotating) the previous one."""
        keys = [self.signing_key()]
        if self.jwt_previous_secret is not None:
            keys.append(check_secret(self.jwt_previous_secret.get_secret_value(), "CAREWATCH_JWT_PREVIOUS_SECRET"))
        return keys

    def child_env(self, **overrides: str) -> dict[str, str]:
        """Environment for a child process: ours plus these settings, so the child sees the same config."""
        env = process_env()
        env.update({f"CAREWATCH_{name.upper()}": value for name, value in overrides.items()})
        return env


#: Secrets that appear in this repository's examples (.env.example, README, docs, compose): anyone can read them,
#: so they are refused whatever their length. tests/core/test_secrets.py checks every example is listed here.
EXAMPLE_SECRETS = frozenset({
    "change-me", "change-me-to-a-long-random-string", "changeme", "secret", "carewatch", "healthcheck",
    "carewatch-demo", "<shared HMAC key for signed webhooks>",
})
MIN_SECRET_BYTES = 32


class WeakSecretError(ValueError):
    """A configured secret is too short or published; the service refuses to start with it."""


def check_secret(value: str, name: str) -> str:
    """``value`` when it is fit to sign tokens; WeakSecretError otherwise (shorter than 32 bytes, or an example
    from this repository, which an attacker can read as easily as we can)."""
    if value.strip().lower() in EXAMPLE_SECRETS or value in EXAMPLE_SECRETS:
        raise WeakSecretError(f"{name} is an example value published in the Carewatch repository: generate one, "
                              "e.g. python -c 'import secrets; print(secrets.token_urlsafe(48))'")
    if len(value.encode()) < MIN_SECRET_BYTES:
        raise WeakSecretError(f"{name} must be at least {MIN_SECRET_BYTES} bytes (it is {len(value.encode())}): "
                              "python -c 'import secrets; print(secrets.token_urlsafe(48))'")
    return value


def process_env(*, drop_prefixes: tuple[str, ...] = (), **overrides: str) -> dict[str, str]:
    """This process's environment for a child process, without variables starting with ``drop_prefixes``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop_prefixes)} if drop_prefixes else dict(
        os.environ)
    env.update(overrides)
    return env


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


def reload_settings() -> Settings:
    """Forget the cached settings (tests and the demo change the environment)."""
    get_settings.cache_clear()
    return get_settings()
