"""The ``carewatch`` command. Each subcommand is a thin shell over one stage; imports are lazy so that
``carewatch decode`` on a gateway box does not load FastAPI or Streamlit."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, ClassVar, Literal

import typer
from pydantic import SecretStr
from typer.core import TyperGroup

if TYPE_CHECKING:  # typer vendors its own click (typer._click): TyperGroup's methods take its classes, not click's
    from typer._click import Command, Context

from carewatch.settings import WeakSecretError, check_secret, get_settings


class _LazyGroup(TyperGroup):
    """The root command group; sub-apps in ``LAZY`` are imported only when asked for (or listed in --help).

    ``users`` needs psycopg and argon2 (~10 MB): importing it eagerly put them into every process started by this
    command, the gateway included (measured by bench/bench_gateway_rss.py)."""

    LAZY: ClassVar[dict[str, tuple[str, str, str]]] = {"users": ("carewatch.api.users_cli", "users_app",
                      "Manage users and roles (admin): add, list, passwd, disable.")}

    def list_commands(self, ctx: Context) -> list[str]:
        names = super().list_commands(ctx)
        return names + [name for name in self.LAZY if name not in names]

    def get_command(self, ctx: Context, cmd_name: str) -> Command | None:
        if cmd_name in self.LAZY and cmd_name not in self.commands:
            module, attr, help_text = self.LAZY[cmd_name]
            try:
                sub_app = getattr(importlib.import_module(module), attr)
            except ImportError:  # pragma: no cover - only while that package is incomplete
                sub_app = typer.Typer(help=f"{help_text} (not installed)")
            sub_app._add_completion = False  # as a sub-command it has no completion options of its own
            command = typer.main.get_command(sub_app)
            command.name, command.help = cmd_name, help_text
            self.add_command(command, cmd_name)
        return super().get_command(ctx, cmd_name)


app = typer.Typer(
    cls=_LazyGroup,
    name="carewatch",
    help="Carewatch: remote monitoring for care homes and people receiving care at home.\n\n"
    "Start with `carewatch demo` to run the whole platform on this machine with simulated residents. "
    "Configuration comes from CAREWATCH_* environment variables or a .env file (see README).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
app.add_typer(db_app, name="db")



def _configure_logging() -> None:
    from carewatch.logs import configure_logging

    configure_logging(get_settings())


# ------------------------------------------------------------------------------------------------------------
@app.command()
def demo(
    accelerate: Annotated[float, typer.Option(help="Simulated seconds per real second.")] = 60.0,
    headless: Annotated[bool, typer.Option(help="Run without the dashboard.")] = False,
    duration: Annotated[float | None, typer.Option(help="Stop after this many seconds (default: Ctrl-C).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print a JSON summary as the last line.")] = False,
    fresh: Annotated[bool, typer.Option(help="Wipe the demo's data first.")] = False,
    seed: Annotated[int, typer.Option(help="Simulator seed.")] = 1,
    radio: Annotated[str, typer.Option(
        help="bytes: the simulator hands each gateway its devices' bytes; virtual: its devices are Bluetooth LE "
             "peripherals (Bumble) on a virtual link and each gateway reads them through its own controller, "
             "with the Bumble backend (needs the bumble extra).")] = "bytes",
) -> None:
    """Run the whole platform here: its own PostgreSQL and MQTT broker, 2 care homes, 3 households, the simulator,
    gateways, ingest, scorer, API (/docs) and dashboard. Prints the URLs and demo logins. Ctrl-C stops it all."""
    from carewatch.demo import run_demo

    _configure_logging()
    if radio not in ("bytes", "virtual"):
        raise typer.BadParameter("--radio is bytes or virtual")
    code = run_demo(get_settings(), accelerate=accelerate, headless=headless, duration=duration,
                    json_out=json_out, fresh=fresh, seed=seed, radio=radio)
    raise typer.Exit(code)


gateway_app = typer.Typer(help="The edge gateway: run it, or pair and unpair its devices.")
app.add_typer(gateway_app, name="gateway")


@gateway_app.callback(invoke_without_command=True)
def gateway(
    ctx: typer.Context,
    simulate: Annotated[bool, typer.Option(help="Use the device simulator instead of Bluetooth.")] = False,
    registry_url: Annotated[str | None, typer.Option(
        help="Fetch the device registry from this API at start and every CAREWATCH_REGISTRY_FETCH_S, signing in "
             "as CAREWATCH_REGISTRY_USERNAME/PASSWORD (default CAREWATCH_REGISTRY_URL).")] = None,
) -> None:
    """Run the edge gateway: read BLE devices in the registry, store every reading in the local outbox, and
    forward batches over MQTT (CAREWATCH_MQTT_URL, CAREWATCH_SITE_ID, CAREWATCH_GATEWAY_ID,
    CAREWATCH_DEVICE_REGISTRY). `carewatch gateway pair --help` adds a device."""
    if ctx.invoked_subcommand is not None:
        return
    _configure_logging()
    settings = get_settings()
    if registry_url:
        settings = settings.model_copy(update={"registry_url": registry_url})
    if simulate:
        from carewatch.firmware_sim.cli import run_simulated_gateway

        run_simulated_gateway(settings)
        return
    from carewatch.gateway.service import main as gateway_main

    gateway_main(settings)


@gateway_app.command("fetch-registry")
def gateway_fetch_registry(
    registry_url: Annotated[str | None, typer.Option(help="The API (default CAREWATCH_REGISTRY_URL).")] = None,
    registry: Annotated[Path | None, typer.Option(help="Registry file (default CAREWATCH_DEVICE_REGISTRY).")] = None,
) -> None:
    """Fetch this gateway's registry from the API once and save it; on failure the file is kept as it was."""
    from carewatch.gateway.registry import RegistrySource, refresh_registry_file
    from carewatch.registry import RegistryError

    settings = get_settings().model_copy(update={k: v for k, v in (("registry_url", registry_url),
                                                                 ("device_registry", registry)) if v})
    try:
        source = RegistrySource.from_settings(settings)
        if source is None:
            raise RegistryError("give --registry-url or set CAREWATCH_REGISTRY_URL")
        path = settings.registry_file
        assert path is not None  # registry_url is set, so there is always a file
        fetched, changed = refresh_registry_file(source, path)
    except (RegistryError, OSError) as exc:  # one clear line, non-zero exit
        typer.echo(f"error: registry not fetched ({exc}); the registry file is unchanged", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"{'saved' if changed else 'unchanged'}: {len(fetched)} devices in {path}")


def _registry_path(registry: Path | None) -> Path:
    path = registry or get_settings().device_registry
    if path is None:
        raise typer.BadParameter("give --registry or set CAREWATCH_DEVICE_REGISTRY", param_hint="--registry")
    return path


@gateway_app.command("pair")
def gateway_pair(
    mac: Annotated[str, typer.Argument(help="The device's Bluetooth address, e.g. A4:C1:38:12:34:56.")],
    kind: Annotated[str, typer.Option(help="pulse_oximeter, thermometer, bp_cuff, motion_sensor, door_sensor, ...")],
    device_id: Annotated[str, typer.Option(help="The id the platform knows this device by.")],
    resident: Annotated[str | None, typer.Option(help="Bind to this resident (bedside devices).")] = None,
    room: Annotated[str | None, typer.Option(help="Or to this room (home sensors).")] = None,
    role: Annotated[str | None, typer.Option(help="What it watches: bathroom, fridge_door, kettle, ...")] = None,
    bind_key: Annotated[str | None, typer.Option(help="BTHome encryption key, 32 hex digits.")] = None,
    source: Annotated[str, typer.Option(help="Frame format when not the kind's default (e.g. berrymed).")] = "",
    registry: Annotated[Path | None, typer.Option(help="Registry file (default CAREWATCH_DEVICE_REGISTRY).")] = None,
) -> None:
    """Add (or replace) a device in this gateway's registry file; a running gateway picks it up within seconds."""
    from carewatch.gateway.registry import pair
    from carewatch.registry import RegistryError

    try:
        pair(_registry_path(registry), mac, kind, device_id, source=source, resident_id=resident, room=room,
             role=role, bind_key=bind_key)
    except (RegistryError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"paired {device_id} ({kind}) at {mac}")


@gateway_app.command("unpair")
def gateway_unpair(
    mac: Annotated[str, typer.Argument(help="The device's Bluetooth address.")],
    registry: Annotated[Path | None, typer.Option(help="Registry file (default CAREWATCH_DEVICE_REGISTRY).")] = None,
) -> None:
    """Remove a device from this gateway's registry file."""
    from carewatch.gateway.registry import unpair

    if not unpair(_registry_path(registry), mac):
        typer.echo(f"error: no device {mac} in the registry", err=True)
        raise typer.Exit(1)
    typer.echo(f"unpaired {mac}")


@app.command()
def ingest(
    worker_id: Annotated[
        str | None, typer.Option(help="Stable id of this worker's MQTT session (default: the host name).")
    ] = None,
) -> None:
    """Run an ingest worker: MQTT readings -> PostgreSQL. Run several to share the load (Mosquitto $share)."""
    import socket

    from carewatch.ingest.service import run_ingest

    _configure_logging()
    run_ingest(get_settings(), worker_id=worker_id or socket.gethostname())


@app.command()
def score(
    replica_id: Annotated[str | None, typer.Option(
        help="stable name of this replica (default: host-pid-random); run several to share the sites")] = None,
) -> None:
    """Run the scorer: NEWS2, personal baselines, home-sensor behaviour, observation schedule and alerts. Run N
    replicas against one database: they divide the sites and take over a dead replica's (scoring/replicas.py)."""
    from carewatch.scoring.service import main as scorer_main

    _configure_logging()
    scorer_main(get_settings(), replica_id=replica_id)


@app.command()
def api() -> None:
    """Serve the HTTP API (OpenAPI docs at /docs) on CAREWATCH_API_HOST:CAREWATCH_API_PORT."""
    import uvicorn

    from carewatch.api import metrics
    from carewatch.api.app import create_app, server_config
    from carewatch.settings import WeakSecretError

    settings = get_settings()
    _configure_logging()
    try:
        app_ = create_app(settings, freeze_gc=True)
    except WeakSecretError as exc:
        typer.echo(f"refusing to start: {exc}", err=True)
        raise typer.Exit(2) from None
    metrics.serve(settings.metrics_port)  # where heavy reports read (carewatch_api_report_*)
    uvicorn.Server(server_config(app_, settings.api_host, settings.api_port)).run()


@app.command()
def dashboard() -> None:
    """Serve the Streamlit dashboard on CAREWATCH_DASHBOARD_PORT; it talks to the API at CAREWATCH_API_URL."""
    from carewatch.dashboard.serve import serve_dashboard

    raise typer.Exit(serve_dashboard(get_settings()))


@app.command()
def sim(
    residents: Annotated[int, typer.Option(help="Care-home residents in all, spread over homes of --per-home.")] = 24,
    per_home: Annotated[int, typer.Option(help="Residents per care home (the last home takes the rest).")] = 12,
    households: Annotated[int, typer.Option(help="Households with home sensors.")] = 3,
    scenario: Annotated[list[str] | None, typer.Option(
        help="Scenario YAML file, or a built-in name (demo, month); repeatable.")] = None,
    mode: Annotated[str, typer.Option(help="realtime | accelerated | backfill")] = "accelerated",
    accelerate: Annotated[float, typer.Option(help="Speed-up for accelerated mode.")] = 60.0,
    days: Annotated[float, typer.Option(help="Simulated days (backfill) or run length (others).")] = 1.0,
    seed: Annotated[int, typer.Option(help="Seed: same seed and --start, same output.")] = 7,
    start: Annotated[str | None, typer.Option(
        help="Simulated start, ISO 8601 (UTC unless it has an offset); default now (backfill: --days ago).")] = None,
    output: Annotated[str, typer.Option(
        help="ble (bytes through the gateway code) | mqtt (wire messages) | jsonl (wire messages to --out)")] = "ble",
    out: Annotated[Path | None, typer.Option(help="File for --output jsonl: one readings message per line.")] = None,
    ground_truth: Annotated[Path | None, typer.Option(help="Write ground truth JSON lines here.")] = None,
    kits: Annotated[bool, typer.Option(
        "--kits/--bound-devices",
        help="--output ble: care homes measure with a shared kit driven through the API (default), or each "
             "resident has their own devices.")] = True,
) -> None:
    """Simulate residents, households and their devices, with scripted scenarios and ground truth."""
    from carewatch.firmware_sim.cli import run_sim

    _configure_logging()
    raise typer.Exit(run_sim(get_settings(), residents=residents, per_home=per_home, households=households,
                             scenarios=list(scenario or []), mode=mode, accelerate=accelerate, days=days, seed=seed,
                             start=start, output=output, out=out, ground_truth=ground_truth, kits=kits))


@app.command()
def news2(
    strict: bool = typer.Option(False, "--strict", help="Exit 1 when any line was an error (they are always "
                                "reported in place)."),
) -> None:
    """Score NEWS2 for JSON lines on stdin, one JSON line out per line in. Keys: respiration_rate, spo2,
    spo2_scale (1|2), on_oxygen, systolic_bp, pulse, consciousness (A/C/V/P/U), temperature (°C); other keys are
    ignored and listed in "ignored"."""
    from carewatch.scoring.news2_cli import run_news2

    raise typer.Exit(run_news2(sys.stdin, sys.stdout, strict=strict))


@app.command()
def decode(
    char: Annotated[str, typer.Argument(help="2a5e 2a5f 2a1c 2a35 2a36 2a37 2a9d, a proprietary oximeter, or bthome")],
    hex_payload: Annotated[str, typer.Argument(metavar="HEX", help="The frame as hex.")],
    mac: Annotated[str | None, typer.Option(help="Device MAC (bthome).")] = None,
    key: Annotated[str | None, typer.Option(help="BTHome bind key as hex (encrypted devices).")] = None,
) -> None:
    """Decode one device frame and print it as JSON (for field engineers and tests)."""
    from carewatch.gateway.decode_cli import run_decode

    raise typer.Exit(run_decode(char, hex_payload, mac=mac, key=key, out=sys.stdout, err=sys.stderr))


@db_app.command("migrate")
def db_migrate(
    app_login: Annotated[str | None, typer.Option(
        help="Also create/update this login in role carewatch_app (password: CAREWATCH_APP_DB_PASSWORD).")] = None,
    report_login: Annotated[str | None, typer.Option(
        help="Also create/update this login in role carewatch_report (password: CAREWATCH_REPORT_DB_PASSWORD).")
    ] = None,
) -> None:
    """Apply pending schema migrations to CAREWATCH_DATABASE_URL (idempotent), as the owner role."""
    import psycopg

    from carewatch.db.migrate import migrate
    from carewatch.db.roles import ensure_login

    settings = get_settings()
    wanted: tuple[tuple[str | None, Literal["app", "report"], SecretStr | None], ...] = (
        (app_login, "app", settings.app_db_password), (report_login, "report", settings.report_db_password))
    logins: list[tuple[str, Literal["app", "report"], str]] = []
    for name, group, password in wanted:
        if name:  # checked before anything changes: a published password never reaches a role
            variable = f"CAREWATCH_{group.upper()}_DB_PASSWORD"
            if password is None:
                raise typer.BadParameter(f"set {variable} for login {name}")
            try:
                logins.append((name, group, check_secret(password.get_secret_value(), variable)))
            except WeakSecretError as exc:
                raise typer.BadParameter(str(exc)) from exc
    applied = migrate(settings.dsn)
    typer.echo("applied: " + ", ".join(applied) if applied else "database is up to date")
    with psycopg.connect(settings.dsn, autocommit=True) as conn:
        for name, group, secret in logins:
            ensure_login(conn, name, group, secret)
            typer.echo(f"login {name}: member of carewatch_{group}")


def main() -> None:  # pragma: no cover
    app()
