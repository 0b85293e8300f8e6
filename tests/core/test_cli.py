"""The `carewatch` command: every subcommand has help a new user can follow, and the pure ones work end to end."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from carewatch.cli import app

runner = CliRunner()

COMMANDS = [["demo"], ["gateway"], ["gateway", "pair"], ["gateway", "unpair"], ["ingest"], ["score"], ["api"],
            ["dashboard"], ["sim"], ["db", "migrate"],
            ["users"], ["users", "add"], ["news2"], ["decode"]]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_has_help(command: list[str]) -> None:
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output and len(result.output) > 200


def test_news2_scores_lines_in_order_and_reports_bad_ones() -> None:
    lines = [{"respiration_rate": 26, "spo2": 90, "systolic_bp": 88, "pulse": 135, "consciousness": "V",
              "temperature": 39.5}, {"spo2": 150}, {"spo2": 97}]
    result = runner.invoke(app, ["news2"], input="\n".join(json.dumps(x) for x in lines) + "\n")
    out = [json.loads(line) for line in result.output.strip().splitlines()]
    assert len(out) == 3
    assert out[0]["score"] == 17 and out[0]["risk"] == "high" and out[0]["complete"] is True
    assert "spo2" in out[1]["error"]
    assert out[2]["complete"] is False and out[2]["subscores"]["pulse"] is None


def test_decode_prints_json_and_fails_clearly_on_a_truncated_frame() -> None:
    ok = runner.invoke(app, ["decode", "2a5e", "0062003d00"])
    assert ok.exit_code == 0
    assert json.loads(ok.stdout)["spo2"] == 98
    bad = runner.invoke(app, ["decode", "2a5e", "06"])
    assert bad.exit_code != 0
    assert "0x2A5E" in bad.stderr


def test_gateway_pair_and_unpair_edit_the_registry_file(tmp_path) -> None:
    from carewatch.gateway.registry import load_registry

    registry = tmp_path / "registry.yaml"
    paired = runner.invoke(app, ["gateway", "pair", "a4:c1:38:12:34:56", "--kind", "door_sensor", "--device-id",
                                 "hh-front-door", "--room", "hall", "--role", "front_door", "--bind-key", "00" * 16,
                                 "--registry", str(registry)])
    assert paired.exit_code == 0, paired.output
    device = load_registry(registry).get("A4:C1:38:12:34:56")
    assert device is not None and device.role == "front_door" and device.bind_key_bytes == bytes(16)
    bad = runner.invoke(app, ["gateway", "pair", "not-a-mac", "--kind", "door_sensor", "--device-id", "x",
                              "--registry", str(registry)])
    assert bad.exit_code == 1 and "not a MAC address" in bad.output
    assert runner.invoke(app, ["gateway", "unpair", "A4:C1:38:12:34:56", "--registry", str(registry)]).exit_code == 0
    assert load_registry(registry).get("A4:C1:38:12:34:56") is None
    assert runner.invoke(app, ["gateway", "unpair", "A4:C1:38:12:34:56", "--registry", str(registry)]).exit_code == 1
