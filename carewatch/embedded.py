"""Private PostgreSQL and MQTT servers for ``carewatch demo`` and the test suite.

PostgreSQL: the system binaries (``/usr/lib/postgresql/*/bin``) when present, else the binaries bundled by the
pip package ``pgserver`` (``pip install 'carewatch[embedded-pg]'``). initdb and postgres refuse to run as root, so
when we are root the cluster runs as the unprivileged ``postgres`` (or ``nobody``) account, and its data directory
is owned by that account.

MQTT: the ``mosquitto`` binary when installed, else the pure-Python amqtt broker in a child process. amqtt speaks
MQTT 3.1.1 only and has no shared subscriptions; callers ask :attr:`EmbeddedBroker.supports_shared`.

The broker's security (a TLS listener, per-gateway passwords, and the ACL that keeps each gateway under its own
``carewatch/v1/<site>/<gateway>/`` topics) is written here and only here: :func:`gateway_acl`,
:func:`mosquitto_password_line` and :class:`BrokerSecurity`. Production brokers use the same two generators.
"""

from __future__ import annotations

import base64
import contextlib
import glob
import hashlib
import os
import pwd
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from carewatch.settings import process_env
from carewatch.wire import TOPIC_ROOT, Channel, topic


class EmbeddedError(RuntimeError):
    """An embedded server could not be started; the message says what to install or check."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def postgres_answers(dsn: str) -> bool:
    """Whether a PostgreSQL server at ``dsn`` accepts us and answers a query (within a few seconds)."""
    try:
        with psycopg.connect(dsn, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.Error:
        return False


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise EmbeddedError(f"timed out after {timeout:.0f}s waiting for {what}")


# ------------------------------------------------------------------------------------------------------------
# PostgreSQL
# ------------------------------------------------------------------------------------------------------------
def find_postgres_bin() -> Path:
    """Directory holding initdb, pg_ctl and postgres."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name))
    for path in reversed(candidates):
        if (Path(path) / "initdb").exists():
            return Path(path)
    for name in ("pg_config",):
        exe = shutil.which(name)
        if exe:
            out = subprocess.run([exe, "--bindir"], capture_output=True, text=True, check=False).stdout.strip()
            if out and (Path(out) / "initdb").exists():
                return Path(out)
    try:
        import pgserver

        bundled = Path(pgserver.__file__).parent / "pginstall" / "bin"
        if (bundled / "initdb").exists():
            return bundled
    except ImportError:
        pass
    raise EmbeddedError(
        "no PostgreSQL server binaries found: install Debian's 'postgresql' package "
        "or `pip install 'carewatch[embedded-pg]'`, or set CAREWATCH_DATABASE_URL to an existing server"
    )


def _unprivileged_account() -> pwd.struct_passwd | None:
    """The account to run postgres as when we are root; None when we are not root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise EmbeddedError("running as root and neither a 'postgres' nor a 'nobody' account exists")


class EmbeddedPostgres:
    """A private PostgreSQL cluster in ``data_dir`` listening on 127.0.0.1:``port`` with trust auth."""

    def __init__(self, data_dir: Path, port: int, database: str = "carewatch", user: str = "carewatch") -> None:
        self.data_dir = Path(data_dir)
        self.port = port
        self.database = database
        self.user = user
        self.bin = find_postgres_bin()
        self.account = _unprivileged_account()

    @property
    def admin_dsn(self) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/postgres"

    @property
    def dsn(self) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{self.database}"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        preexec = None
        if self.account is not None:
            uid, gid = self.account.pw_uid, self.account.pw_gid

            def preexec() -> None:
                os.setgroups([])
                os.setgid(gid)
                os.setuid(uid)

        env = process_env(drop_prefixes=("PG",))
        env["LC_ALL"] = "C.UTF-8" if Path("/usr/lib/locale/C.utf8").exists() else "C"
        proc = subprocess.run(
            [str(self.bin / args[0]), *args[1:]],
            capture_output=True, text=True, preexec_fn=preexec, env=env, cwd="/", check=False,
        )
        if check and proc.returncode != 0:
            raise EmbeddedError(f"{args[0]} failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")
        return proc

    def _prepare_dir(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.account is not None:
            os.chown(self.data_dir, self.account.pw_uid, self.account.pw_gid)
            # every parent must be traversable by the postgres account
            for parent in self.data_dir.parents:
                if parent == Path("/"):
                    break
                mode = parent.stat().st_mode
                if not mode & 0o001:
                    raise EmbeddedError(
                        f"{parent} is not searchable by the '{self.account.pw_name}' account that postgres runs "
                        "as when started by root; choose another CAREWATCH_STATE_DIR"
                    )
        self.data_dir.chmod(0o700)

    def initialised(self) -> bool:
        return (self.data_dir / "PG_VERSION").exists()

    def running(self) -> bool:
        return port_open("127.0.0.1", self.port) and self._run("pg_ctl", "status", "-D", str(self.data_dir),
                                                                 check=False).returncode == 0

    def start(self, timeout: float = 60) -> str:
        """Initialise (first time), start, and create the database. Returns its DSN."""
        self._prepare_dir()
        if not self.initialised():
            self._run("initdb", "-D", str(self.data_dir), "-U", self.user, "-A", "trust", "-E", "UTF8",
                      "--no-sync")
        if not self.running():
            if port_open("127.0.0.1", self.port):
                raise EmbeddedError(f"port {self.port} is taken by another program; set CAREWATCH_DEMO_PG_PORT")
            opts = (f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' "
                    "-c max_connections=200 -c shared_buffers=128MB -c fsync=on -c synchronous_commit=on")
            self._run("pg_ctl", "start", "-w", "-t", str(int(timeout)), "-D", str(self.data_dir),
                      "-l", str(self.data_dir / "server.log"), "-o", opts)
        wait_for(lambda: port_open("127.0.0.1", self.port), timeout, f"PostgreSQL on port {self.port}")
        self.create_database(self.database)
        return self.dsn

    def create_database(self, name: str) -> None:
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None:
                conn.execute(f'CREATE DATABASE "{name}"')

    def stop(self, mode: str = "fast") -> None:
        if self.initialised():
            self._run("pg_ctl", "stop", "-w", "-m", mode, "-D", str(self.data_dir), check=False)

    def restart(self) -> None:
        self.stop()
        self.start()


# ------------------------------------------------------------------------------------------------------------
# MQTT
# ------------------------------------------------------------------------------------------------------------
MOSQUITTO_CONF = """\
# Written by carewatch: a private broker for the demo/tests.
listener {port} 127.0.0.1
allow_anonymous {anonymous}
persistence true
persistence_location {data_dir}/
autosave_interval 5
# A persistent ingest session must be able to hold a long backlog: never drop queued QoS 1 messages.
max_queued_messages 0
max_inflight_messages 100
log_dest file {data_dir}/mosquitto.log
log_type error
log_type warning
log_type notice
{user_line}
{security}
"""
MOSQUITTO_PBKDF2_ITERATIONS = 101  # what mosquitto_passwd 2.0 writes


def mosquitto_password_line(username: str, password: str, *, salt: bytes | None = None) -> str:
    """One ``password_file`` line in mosquitto 2's PBKDF2-SHA512 format (``$7$``), as ``mosquitto_passwd`` writes."""
    if ":" in username or not username:
        raise ValueError(f"an MQTT username cannot be empty or contain ':' ({username!r})")
    salt = salt or os.urandom(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, MOSQUITTO_PBKDF2_ITERATIONS)
    return (f"{username}:$7${MOSQUITTO_PBKDF2_ITERATIONS}${base64.b64encode(salt).decode()}"
            f"${base64.b64encode(digest).decode()}")


def gateway_acl(gateways: Iterable[tuple[str, str]], readers: Iterable[str] = ()) -> str:
    """A mosquitto ``acl_file``: gateway G of site S (MQTT username = gateway id) may publish only under
    ``carewatch/v1/S/G/#`` (readings, events, status and its last will) and read only its own resend topic
    ``carewatch/v1/S/G/resend`` (ingest asking for a gap to be filled); each reader (ingest) may read every
    gateway's topics, also through a ``$share`` group (mosquitto checks the topic without the prefix), and write
    every gateway's resend topic. Anything not granted is denied; with MQTT 3.1.1 mosquitto drops a denied
    publish silently (it still sends the PUBACK, then closes the connection): see docs/gateway.md on what that
    means for a misconfigured gateway."""
    lines = ["# Written by carewatch (carewatch.embedded.gateway_acl): one block per gateway, then the readers."]
    for site_id, gateway_id in gateways:
        for part in (site_id, gateway_id):
            if not part or any(c in part for c in "/+#\n "):
                raise ValueError(f"not usable in a topic: {part!r}")
        lines += ["", f"user {gateway_id}", f"topic write {TOPIC_ROOT}/{site_id}/{gateway_id}/#",
                  f"topic read {topic(site_id, gateway_id, Channel.RESEND)}"]
    for reader in readers:
        lines += ["", f"user {reader}", f"topic read {TOPIC_ROOT}/#", f"topic write {topic('+', '+', Channel.RESEND)}"]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class BrokerSecurity:
    """TLS and/or authentication for an :class:`EmbeddedBroker` (mosquitto only).

    ``tls``: (cafile, certfile, keyfile) for the listener, which then speaks only TLS. ``users``: username ->
    password (written hashed to a password_file; anonymous clients are refused). ``acl``: an acl_file's text
    (see :func:`gateway_acl`).
    """

    tls: tuple[Path, Path, Path] | None = None
    users: Mapping[str, str] = field(default_factory=dict)
    acl: str | None = None

    def config(self, data_dir: Path) -> str:
        """The mosquitto.conf lines (after the ``listener`` line), writing the password and ACL files."""
        lines: list[str] = []
        if self.tls is not None:
            cafile, certfile, keyfile = self.tls
            lines += [f"cafile {cafile}", f"certfile {certfile}", f"keyfile {keyfile}", "tls_version tlsv1.2"]
        if self.users:
            passwords = data_dir / "passwords"
            passwords.write_text("".join(mosquitto_password_line(u, p) + "\n" for u, p in self.users.items()))
            passwords.chmod(0o600)
            lines += [f"password_file {passwords}"]
        if self.acl is not None:
            acl = data_dir / "acl"
            acl.write_text(self.acl)
            acl.chmod(0o600)
            lines += [f"acl_file {acl}"]
        return "\n".join(lines)

    @property
    def anonymous(self) -> bool:
        return not self.users


class EmbeddedBroker:
    """Mosquitto (preferred) or amqtt, as a child process on 127.0.0.1:``port``."""

    def __init__(self, data_dir: Path, port: int, prefer: str = "mosquitto",
                 security: BrokerSecurity | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.port = port
        self.security = security
        self.mosquitto = shutil.which("mosquitto") or next(
            (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if Path(p).exists()), None
        )
        self.kind = "mosquitto" if (self.mosquitto and prefer == "mosquitto") else "amqtt"
        if security is not None and self.kind != "mosquitto":
            raise EmbeddedError("TLS, passwords and ACLs need the mosquitto broker (apt-get install mosquitto)")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The broker's URL without credentials (``mqtts://`` when its listener speaks TLS)."""
        scheme = "mqtts" if self.security is not None and self.security.tls is not None else "mqtt"
        return f"{scheme}://127.0.0.1:{self.port}"

    @property
    def supports_shared(self) -> bool:
        return self.kind == "mosquitto"

    def start(self, timeout: float = 20) -> str:
        if self.proc is not None and self.proc.poll() is None:
            return self.url
        if port_open("127.0.0.1", self.port):
            raise EmbeddedError(f"port {self.port} is taken by another program; set CAREWATCH_DEMO_MQTT_PORT")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.data_dir / "broker.out", "ab")  # noqa: SIM115 - lives as long as the child
        if self.kind == "mosquitto":
            user = pwd.getpwuid(os.geteuid()).pw_name
            conf = self.data_dir / "mosquitto.conf"
            security = self.security or BrokerSecurity()
            conf.write_text(MOSQUITTO_CONF.format(
                port=self.port, data_dir=self.data_dir, user_line=f"user {user}",
                anonymous="true" if security.anonymous else "false", security=security.config(self.data_dir)))
            cmd = [str(self.mosquitto), "-c", str(conf)]
        else:
            cmd = [sys.executable, "-m", "carewatch.amqtt_broker", "--port", str(self.port)]
        self.proc = proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_for(lambda: port_open("127.0.0.1", self.port) or proc.poll() is not None, timeout,
                     f"{self.kind} on port {self.port}")
        finally:
            log.close()
        if self.proc.poll() is not None:
            tail = (self.data_dir / "broker.out").read_text(errors="replace")[-2000:]
            raise EmbeddedError(f"{self.kind} exited at start ({self.proc.returncode}): {tail}")
        return self.url

    def stop(self, kill: bool = False) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            if kill:
                self.proc.kill()
            else:
                self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        wait_for(lambda: not port_open("127.0.0.1", self.port), 10, "the old broker to release its port")
        self.start()
