"""docker-compose.yml cannot run here (no Docker engine): check its shape, that every command exists, and that
the broker's ACL, TLS files and listeners agree with the code and the docs."""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

import typer.main
import yaml

from carewatch.cli import app
from carewatch.embedded import gateway_acl
from carewatch.mqtt import MqttTarget

REPO_ROOT = Path(__file__).resolve().parents[1]

COMPOSE = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
CLI = typer.main.get_command(app)


def resolve(argv: list[str]) -> object:
    assert argv[0] == "carewatch"
    command = CLI
    ctx = CLI.make_context("carewatch", ["--help"], resilient_parsing=True)
    args = argv[1:]
    while hasattr(command, "get_command") and args and not args[0].startswith("-"):
        sub = command.get_command(ctx, args[0])
        assert sub is not None, f"no such command: {' '.join(argv)}"
        command, args = sub, args[1:]
    options = {opt for param in command.params for opt in getattr(param, "opts", [])}
    for arg in args:
        if arg.startswith("--"):
            assert arg.split("=")[0] in options, f"{' '.join(argv)}: unknown option {arg}"
    return command


def test_every_carewatch_service_command_exists() -> None:
    commands = [s["command"] for s in COMPOSE["services"].values() if "command" in s]
    assert len(commands) >= 6
    for argv in commands:
        resolve(argv)


def test_production_shape() -> None:
    services = COMPOSE["services"]
    assert {"db", "mqtt", "ingest", "scorer", "api", "dashboard", "gateway-sim", "migrate"} <= set(services)
    assert "timescaledb" in services["db"]["image"] and "pg16" in services["db"]["image"]
    assert services["ingest"]["deploy"]["replicas"] == 2
    for name in ("db", "mqtt", "api", "dashboard"):
        assert "healthcheck" in services[name], name
    assert {"pgdata", "mqttdata", "gatewaydata"} <= set(COMPOSE["volumes"])


def test_broker_requires_passwords_and_acls() -> None:
    conf = (REPO_ROOT / "deploy" / "mosquitto" / "mosquitto.conf").read_text()
    assert "allow_anonymous false" in conf and "acl_file" in conf and "password_file" in conf
    acl = (REPO_ROOT / "deploy" / "mosquitto" / "acl").read_text()
    assert "topic write carewatch/v1/sim-home/gw-sim-1/#" in acl


DEPLOY = REPO_ROOT / "deploy"


def acl_grants(text: str) -> dict[str, set[tuple[str, str]]]:
    """A mosquitto acl_file as user -> {(access, topic)} (comments and blank lines ignored)."""
    grants: dict[str, set[tuple[str, str]]] = defaultdict(set)
    user = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        if word == "user":
            user = rest.strip()
        elif word == "topic":
            assert user is not None, f"grant outside a user block: {line}"
            access, _, name = rest.strip().partition(" ")
            assert access in ("read", "write", "readwrite") and name, line
            grants[user].add((access, name.strip()))
        else:
            raise AssertionError(f"unexpected ACL line: {line}")
    return dict(grants)


def _env(service: str) -> dict[str, str]:
    return COMPOSE["services"][service]["environment"]


def _mqtt(service: str) -> MqttTarget:
    """The service's CAREWATCH_MQTT_URL, with compose's ${VAR:?...} secrets filled in."""
    return MqttTarget(re.sub(r"\$\{[^}]*\}", "secret", _env(service)["CAREWATCH_MQTT_URL"]))


def test_deploy_acl_grants_exactly_what_gateway_acl_generates() -> None:
    """The deploy ACL and carewatch.embedded.gateway_acl (used by the tests' brokers) cannot drift apart."""
    gateway = _env("gateway-sim")
    site_id, gateway_id = gateway["CAREWATCH_SITE_ID"], gateway["CAREWATCH_GATEWAY_ID"]
    reader = _mqtt("ingest").username
    assert reader and _mqtt("gateway-sim").username == gateway_id  # username = gateway id
    deployed = acl_grants((DEPLOY / "mosquitto" / "acl").read_text())
    generated = acl_grants(gateway_acl([(site_id, gateway_id)], readers=[reader]))
    assert set(generated) == {gateway_id, reader}
    for user, grants in generated.items():
        assert deployed.get(user) == grants, user
    # the gateway reads its own resend topic; ingest may write every gateway's (docs/gateway.md)
    assert ("read", f"carewatch/v1/{site_id}/{gateway_id}/resend") in deployed[gateway_id]
    assert ("write", "carewatch/v1/+/+/resend") in deployed[reader]
    assert set(deployed) - set(generated) == {"healthcheck"}  # nobody else has any grant
    assert deployed["healthcheck"] == {("read", "$SYS/#")}


def test_broker_tls_files_and_listeners_are_consistent() -> None:
    mqtt = COMPOSE["services"]["mqtt"]
    mounts = dict(v.rsplit(":", 1)[0].split(":", 1) for v in mqtt["volumes"] if v.startswith("./"))
    certs = next(target for source, target in mounts.items() if source == "./deploy/tls")
    assert (DEPLOY / "tls" / "README.md").exists(), "how to make the certificates the broker mounts"
    conf = (DEPLOY / "mosquitto" / "mosquitto.conf").read_text()
    files = dict(re.findall(r"^(cafile|certfile|keyfile) (\S+)$", conf, flags=re.M))
    assert set(files) == {"cafile", "certfile", "keyfile"}
    readme = (DEPLOY / "tls" / "README.md").read_text()
    for path in files.values():
        assert path.startswith(certs + "/"), path
        assert f"`{Path(path).name}`" in readme, f"{path} is not explained in deploy/tls/README.md"
    listeners = re.findall(r"^listener (\d+)", conf, flags=re.M)
    assert listeners == ["1883", "8883"]
    # only the TLS listener is published; plain 1883 stays inside the compose network
    assert mqtt["ports"] == ["8883:8883"]
    for service in ("ingest", "gateway-sim"):
        target = _mqtt(service)
        assert (target.host, target.port, target.tls) == ("mqtt", 1883, False), service
    ignored = (DEPLOY / ".gitignore").read_text()
    assert "tls/*" in ignored and "mosquitto/passwd" in ignored  # keys and passwords never committed


class _ComposeLoader(yaml.SafeLoader):
    """Compose's ``!reset`` tag (an override clears a field of the base file)."""


_ComposeLoader.add_constructor("!reset", lambda loader, node: None if isinstance(node, yaml.ScalarNode) else (
    loader.construct_mapping(node) if isinstance(node, yaml.MappingNode) else loader.construct_sequence(node)))


def test_database_ha_shape_gives_every_service_the_multi_host_read_write_dsn() -> None:
    """deploy/ha/docker-compose.ha.yml (docs/operations.md): monitor + two pg_auto_failover nodes, the single db
    switched off, and every Carewatch service on both nodes with target_session_attrs=read-write."""
    ha = yaml.load((REPO_ROOT / "deploy" / "ha" / "docker-compose.ha.yml").read_text(), Loader=_ComposeLoader)
    services = ha["services"]
    assert {"monitor", "node1", "node2"} <= set(services)
    assert services["db"]["profiles"] and "db" not in str(services["scorer"].get("depends_on"))
    assert "monitor" in services["monitor"]["command"] and "--run" in services["monitor"]["command"]
    for node in ("node1", "node2"):
        command = services[node]["command"]
        assert command[:3] == ["pg_autoctl", "create", "postgres"] and "--monitor" in command
    for name in ("migrate", "ingest", "scorer", "api"):
        assert name in COMPOSE["services"], name
        dsn = services[name]["environment"]["CAREWATCH_DATABASE_URL"]
        assert "@node1:5432,node2:5432/" in dsn and "target_session_attrs=read-write" in dsn, name
        assert "db" not in (services[name].get("depends_on") or {}), name
    # the API's heavy read-only reports: the standby first, as the read-only login (docs/operations.md)
    reports = services["api"]["environment"]["CAREWATCH_REPORT_DATABASE_URL"]
    assert reports.startswith("postgresql://carewatch_reader@") and "@node1:5432,node2:5432/" in reports
    assert "target_session_attrs=prefer-standby" in reports


# ------------------------------------------------------------------------------------------------------------
# Issue 13: TLS in front of HTTP (finding 7) and least-privilege database accounts (finding 3)
# ------------------------------------------------------------------------------------------------------------
def test_only_the_tls_proxy_and_the_gateways_tls_listener_are_published() -> None:
    services = COMPOSE["services"]
    published = {name: s["ports"] for name, s in services.items() if "ports" in s}
    assert published == {"proxy": ["443:443", "80:80"], "mqtt": ["8883:8883"]}
    assert services["proxy"]["image"].startswith("caddy:")
    mounts = [v.split(":")[:2] for v in services["proxy"]["volumes"]]
    assert ["./deploy/caddy/Caddyfile", "/etc/caddy/Caddyfile"] in mounts
    assert {"api", "dashboard"} <= set(services["proxy"]["depends_on"])
    assert services["api"]["environment"]["CAREWATCH_TRUSTED_PROXIES"]  # the proxy's X-Forwarded-For is believed


def test_caddy_terminates_tls_with_hsts_nosniff_and_no_store() -> None:
    caddyfile = (DEPLOY / "caddy" / "Caddyfile").read_text()
    site = re.search(r"^\{\$CAREWATCH_PUBLIC_HOST\} \{$", caddyfile, flags=re.M)
    assert site, "one site block, for the public host name (Caddy gets its certificate and redirects http)"
    assert re.search(r'Strict-Transport-Security "max-age=\d{7,}', caddyfile)
    assert 'X-Content-Type-Options "nosniff"' in caddyfile
    assert caddyfile.count('Cache-Control "no-store"') == 2  # the API and the dashboard
    assert "reverse_proxy api:8000" in caddyfile and "reverse_proxy dashboard:8501" in caddyfile
    assert "trusted_proxies" not in caddyfile  # the edge believes no client's X-Forwarded-For
    assert "CAREWATCH_PUBLIC_HOST" in (REPO_ROOT / ".env.example").read_text()


def _db_user(url: str) -> str:
    return re.match(r"postgresql://([^:@]+)", url).group(1)  # type: ignore[union-attr]


def test_services_use_the_application_role_and_only_migrate_uses_the_owner() -> None:
    services = COMPOSE["services"]
    assert services["db"]["environment"]["POSTGRES_USER"] == "carewatch_owner"
    migrate = services["migrate"]
    assert _db_user(migrate["environment"]["CAREWATCH_DATABASE_URL"]) == "carewatch_owner"
    assert migrate["command"][migrate["command"].index("--app-login") + 1] == "carewatch_api"
    assert migrate["command"][migrate["command"].index("--report-login") + 1] == "carewatch_reader"
    users = {name: _db_user(s["environment"]["CAREWATCH_DATABASE_URL"]) for name, s in services.items()
             if "CAREWATCH_DATABASE_URL" in s.get("environment", {})}
    assert users.pop("migrate") == "carewatch_owner"
    assert set(users.values()) == {"carewatch_api"} and {"ingest", "scorer", "api"} <= set(users)
    # the API's heavy reports read as the read-only login, with the password migrate gave it
    api = services["api"]["environment"]
    assert _db_user(api["CAREWATCH_REPORT_DATABASE_URL"]) == "carewatch_reader"
    assert api["CAREWATCH_REPORT_DB_PASSWORD"] == migrate["environment"]["CAREWATCH_REPORT_DB_PASSWORD"]
