"""docker-compose.yml cannot run here (no Docker engine): check its shape and that every command exists."""

from __future__ import annotations

from pathlib import Path

import typer.main
import yaml

from carewatch.cli import app

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
